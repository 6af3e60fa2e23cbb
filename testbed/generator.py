"""Leaf-spine topology generator: parameters in, a topology document (dict / YAML) out.

Leaf i gets the underlay block 10.0.i.0/24 of 10.0.0.0/16 and its servers the hosts .1, .2, ...,
so an address says which leaf a server hangs off (handy when reading captures).
"""
from __future__ import annotations

import yaml

MAX_LEAVES = 255
MAX_SERVERS_PER_LEAF = 254
MAX_SPINES = 64


class GeneratorError(ValueError):
    pass


def leaf_spine(spines: int, leaves: int, servers_per_leaf: int, name: str | None = None) -> dict:
    """Topology document for a full-mesh leaf-spine fabric (every leaf links to every spine)."""
    for label, value, lo, hi in (("spines", spines, 1, MAX_SPINES), ("leaves", leaves, 1, MAX_LEAVES),
                                 ("servers per leaf", servers_per_leaf, 1, MAX_SERVERS_PER_LEAF)):
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise GeneratorError(f"{label} must be an integer in {lo}..{hi}, got {value!r}")
    doc = {
        "name": name or f"ls{spines}x{leaves}x{servers_per_leaf}",
        "underlay": "10.0.0.0/16",
        "switches": [{"name": f"spine{s}", "role": "spine"} for s in range(1, spines + 1)]
        + [{"name": f"leaf{leaf}", "role": "leaf"} for leaf in range(1, leaves + 1)],
        "servers": [],
        "links": [],
    }
    for leaf in range(1, leaves + 1):
        for s in range(1, spines + 1):
            doc["links"].append([f"leaf{leaf}", f"spine{s}"])
    n = 0
    for leaf in range(1, leaves + 1):
        for k in range(1, servers_per_leaf + 1):
            n += 1
            doc["servers"].append({"name": f"srv{n}", "address": f"10.0.{leaf}.{k}"})
            doc["links"].append([f"srv{n}", f"leaf{leaf}"])
    return doc


class _FlowListDumper(yaml.SafeDumper):
    """Block style for the document, flow style for small leaves ({name:..}, [a, b]): one line each."""


def _represent_dict(dumper, data):
    flow = all(not isinstance(v, (dict, list)) for v in data.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


def _represent_list(dumper, data):
    flow = all(not isinstance(v, (dict, list)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_FlowListDumper.add_representer(dict, _represent_dict)
_FlowListDumper.add_representer(list, _represent_list)


def to_yaml(doc: dict) -> str:
    return yaml.dump(doc, Dumper=_FlowListDumper, sort_keys=False, width=120)
