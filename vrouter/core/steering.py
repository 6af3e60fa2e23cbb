"""Receive packet steering: which worker process handles a packet, decided on the NIC's designated core.

Design (docs/vrouter-core.md, "Receive packet steering"): the flow table is sharded, not shared.
Every worker owns the flows whose symmetric inner hash (routing instance + 5-tuple) falls into its
buckets. A flow and its reverse hash alike, so the agent's proactive reverse entry, installed on the
worker that punted the forward packet, is where the first reply lands, whichever NIC (TAP or tunnel
socket, any encapsulation) it arrives on.

Steering is a pure function of the packet's flow (and for extended RPS of the outer header, constant
per flow direction because the entropy port is derived from the inner flow), so a flow's packets
always take one path; with FIFO queues between processes they stay in order.

- :class:`Local`: steering off, the receiving core's own worker handles everything.
- :class:`Rps`: one stage, the designated core parses the inner header and picks the worker.
- :class:`ExtendedRps`: stage 1 on the designated core reads only the outer header (no
  decapsulation) and picks a second core; stage 2 on that core parses the inner header and picks
  the worker. All second cores use the same inner table: the worker must not depend on the second
  core, or a flow's two directions would part (one comes from a TAP, which has no outer header).
"""
from collections.abc import Collection, Iterable

from .buckets import BucketTable
from .codec.buffer import Buffer
from .codec.ipv4 import ip_to_int
from .config import ConfigError
from .fairness import LoadCounter, jain_index
from .flowkey import FlowKey
from .schema import Problems, no_unknown
from .steerhash import FIELDS, NIC_KINDS, NO_FLOW, InnerHash, outer_hash, validate_fields

__all__ = ["BucketTable", "ExtendedRps", "FIELDS", "InnerHash", "LoadCounter", "Local", "MODES", "NIC_KINDS",
           "NO_FLOW", "Rps", "SteeringConfig", "jain_index", "outer_hash"]

MODES = ("off", "rps", "extended")
_ADDR_CACHE_LIMIT = 4096


class Local:
    """Steering off: every packet stays with ``worker``."""
    mode = "off"

    def __init__(self, worker: int) -> None:
        self.worker = worker

    def steer(self, kind: str, buf: Buffer, vrf: int | None = None, off: int = 0) -> int:
        return self.worker


class Rps:
    """One stage: symmetric inner hash over ``fields`` -> bucket table -> worker."""
    mode = "rps"

    def __init__(self, fields: Iterable[str], table: BucketTable, symmetric: bool = True) -> None:
        self.hasher = InnerHash(fields, symmetric)
        self.table = table
        self._buckets = table.buckets        # updated in place by BucketTable.update
        self._size = table.size
        self._by_kind = {k: self.hasher.for_kind(k) for k in NIC_KINDS}

    def hash(self, kind: str, buf: Buffer, vrf: int | None = None, off: int = 0) -> int:
        return self.hasher.for_kind(kind)(buf, vrf, off)

    def steer(self, kind: str, buf: Buffer, vrf: int | None = None, off: int = 0) -> int:
        """Worker for a packet as read from a NIC of ``kind`` (``vrf``: the VIF's network id, TAP only)."""
        try:
            fn = self._by_kind[kind]
        except KeyError:
            raise ValueError(f"nic kind {kind!r} is not one of {', '.join(NIC_KINDS)}") from None
        return self._buckets[fn(buf, vrf, off) % self._size]

    def owner(self, key: FlowKey) -> int:
        """Worker that owns a pipeline flow key ``(vrf, proto, src, dst, sport, dport)`` (and its reverse)."""
        return self._buckets[self.hasher.key(*key) % self._size]


class ExtendedRps:
    """Two stages: outer hash -> second core; inner hash on that core -> worker.

    What it buys: the designated core of a tunnel socket only hashes the outer addresses and the
    entropy port it already has from ``recvfrom`` (no decapsulation, no inner parse), and the inner
    parse is spread over the second cores. With MPLSoGRE there is no port in the outer header, so
    stage 1 sends all of one peer's packets to one second core; the inner hash of stage 2 still
    spreads them over the workers, which is why it cannot be dropped.
    """
    mode = "extended"

    def __init__(self, outer_table: BucketTable, inner_tables: BucketTable | dict[int, BucketTable],
                 fields: Iterable[str] = FIELDS) -> None:
        if isinstance(inner_tables, BucketTable):
            inner = inner_tables
        else:
            if not isinstance(inner_tables, dict) or not inner_tables:
                raise ValueError("inner_tables: expected a BucketTable or a mapping of second core -> BucketTable")
            missing = sorted(set(outer_table.workers) - set(inner_tables))
            if missing:
                raise ValueError(f"inner_tables: second core {missing[0]} has no inner table")
            tables = list(inner_tables.values())
            inner = tables[0]
            if any(t != inner for t in tables[1:]):
                raise ValueError("inner_tables: second cores disagree on bucket -> worker, so a flow's two "
                                 "directions would reach different workers (the flow table is sharded)")
        self.outer_table = outer_table
        self.inner = Rps(fields, inner)
        self._outer = outer_table.buckets
        self._outer_size = outer_table.size
        self._addrs: dict[str, int] = {}

    def _addr(self, a: int | str) -> int:
        if isinstance(a, int):
            return a
        v = self._addrs.get(a)
        if v is None:
            try:
                v = ip_to_int(a)
            except (ValueError, AttributeError):
                v = 0
            if len(self._addrs) >= _ADDR_CACHE_LIMIT:
                self._addrs.clear()
            self._addrs[a] = v
        return v

    def stage1(self, src: int | str, dst: int | str, sport: int = 0) -> int:
        """Second core for a tunnel packet from its outer header (addresses as ints or dotted strings)."""
        return self._outer[outer_hash(self._addr(src), self._addr(dst), sport) % self._outer_size]

    def stage2(self, kind: str, buf: Buffer, vrf: int | None = None, off: int = 0) -> int:
        """Worker, on the second core: the same inner steering as :class:`Rps`."""
        return self.inner.steer(kind, buf, vrf, off)

    # The final worker does not depend on stage 1 (a TAP packet has no outer header anyway).
    steer = stage2

    def path(self, kind: str, buf: Buffer, outer: tuple[int | str, int | str, int] | None = None,
             vrf: int | None = None, off: int = 0) -> tuple[int | None, int]:
        """(second core or None for a TAP, worker): the whole route of one packet, for simulations."""
        second = None if kind == "tap" or outer is None else self.stage1(*outer)
        return second, self.inner.steer(kind, buf, vrf, off)

    def owner(self, key: FlowKey) -> int:
        return self.inner.owner(key)


def _worker_id(value: object, where: str) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: {value!r} is not a worker id (the CPU it is pinned to, an int >= 0)")
    return value


def _weights(value: object, where: str) -> dict[int, float]:
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}: expected at least one worker")
        return {_worker_id(w, where): 1 for w in value}
    if isinstance(value, dict) and value:
        return {_worker_id(w, where): wt for w, wt in value.items()}
    raise ConfigError(f"{where}: expected a list of worker ids or a mapping of worker id -> weight")


def _table(weights: dict[int, float], size: int, cpus: Iterable[int] | None, where: str) -> BucketTable:
    try:
        return BucketTable(weights, size, cpus)
    except ValueError as exc:
        field, _, msg = str(exc).partition(": ")
        field = {"weights": where, "buckets": "steering.buckets"}.get(field, where)
        raise ConfigError(f"{field}: {msg}") from None


def _interfaces(raw: object, mode: str, local: int, workers: Collection[int]) -> dict[str, tuple[str, int]]:
    """``steering.interfaces``: {name: (mode, worker)}, a mode name or {mode, worker} per NIC."""
    if not isinstance(raw, dict):
        raise ConfigError("steering.interfaces: expected a mapping of interface name -> mode")
    interfaces: dict[str, tuple[str, int]] = {}
    for name, spec in raw.items():
        where = f"steering.interfaces.{name}"
        if not isinstance(name, str) or not name:
            raise ConfigError(f"steering.interfaces: {name!r} is not an interface name")
        worker = local
        if isinstance(spec, dict):
            no_unknown(Problems(ConfigError), where, spec, ("mode", "worker"))
            if "worker" in spec:
                worker = _worker_id(spec["worker"], f"{where}.worker")
                if worker not in workers:
                    raise ConfigError(f"{where}.worker: {worker} is not one of the workers")
            spec = spec.get("mode", mode)
        if spec not in MODES:
            raise ConfigError(f"{where}: {spec!r} is not one of {', '.join(MODES)}")
        interfaces[name] = (spec, worker)
    return interfaces


class SteeringConfig:
    """Per-interface steering from a plain dict; ``ConfigError`` (one line) for anything wrong.

    ``{"mode": "rps", "fields": [...], "buckets": 128, "workers": {0: 1, 1: 2} | [0, 1], "cpus": [0, 1],
    "local_worker": 0, "second_cores": {0: 1, 1: 1} | [0, 1],
    "interfaces": {"tr-red1": "off", "mplsogre": "extended", "vxlan": {"mode": "off", "worker": 1}}}``

    ``mode`` applies to interfaces not listed. Interface names are the shell's (VIF names for TAPs,
    the encapsulation name for tunnel sockets). Every steered interface shares one inner table and one
    field set, so a flow's directions meet on one worker across interfaces; an interface with steering
    off sends its flows to its local worker, which splits them from their steered reverse (each side
    then punts once and TCP teardown is seen by neither half alone): keep off for single-worker setups.
    """

    _KEYS = ("mode", "fields", "buckets", "workers", "cpus", "local_worker", "second_cores", "interfaces")

    def __init__(self, mode: str, fields: tuple[str, ...], table: BucketTable, second_table: BucketTable | None,
                 local_worker: int, interfaces: dict[str, tuple[str, int]]) -> None:
        self.mode, self.fields, self.table, self.second_table = mode, fields, table, second_table
        self.local_worker, self.interfaces = local_worker, interfaces
        self.rps = Rps(fields, table)
        self.extended = ExtendedRps(second_table, table, fields) if second_table is not None else None

    @classmethod
    def from_dict(cls, d: object) -> "SteeringConfig":
        if d is None:
            d = {"mode": "off"}
        if not isinstance(d, dict):
            raise ConfigError("steering: expected a mapping")
        no_unknown(Problems(ConfigError), "steering", d, cls._KEYS)
        mode = d.get("mode", "rps")
        if mode not in MODES:
            raise ConfigError(f"steering.mode: {mode!r} is not one of {', '.join(MODES)}")
        try:
            fields = validate_fields(d.get("fields", FIELDS))
        except ValueError as exc:
            raise ConfigError(f"steering.{exc}") from None
        cpus = d.get("cpus")
        if cpus is not None:
            if not isinstance(cpus, list) or not cpus:
                raise ConfigError("steering.cpus: expected a non-empty list of CPU numbers")
            cpus = {_worker_id(c, "steering.cpus") for c in cpus}
        size = d.get("buckets", 128)
        workers = _weights(d.get("workers", [0]), "steering.workers")
        table = _table(workers, size, cpus, "steering.workers")
        local = _worker_id(d.get("local_worker", min(table.workers)), "steering.local_worker")
        if local not in workers:
            raise ConfigError(f"steering.local_worker: {local} is not one of the workers")
        interfaces = _interfaces(d.get("interfaces", {}), mode, local, workers)
        uses_extended = mode == "extended" or any(m == "extended" for m, _ in interfaces.values())
        second = None
        if uses_extended or "second_cores" in d:
            second = _table(_weights(d.get("second_cores", d.get("workers", [0])), "steering.second_cores"),
                            size, cpus, "steering.second_cores")
        return cls(mode, fields, table, second, local, interfaces)

    def for_interface(self, name: str) -> Local | Rps | ExtendedRps:
        """The steering object (``Local``, ``Rps`` or ``ExtendedRps``) for one NIC."""
        mode, worker = self.interfaces.get(name, (self.mode, self.local_worker))
        if mode == "off":
            return Local(worker)
        if mode == "extended":
            # Not None: from_dict builds the second-core table whenever the mode or an interface is extended.
            return self.extended  # type: ignore[return-value]
        return self.rps

    @property
    def workers(self) -> list[int]:
        return self.table.workers
