"""The VNC's flow-records switch (pure): `testbed net records on|off` at run time.

Continues controllers/vnc_model.py (at its size limit). The setting is the vrouters' own
``flow.records`` (vrouter/core/flowrecords.py): the topology's ``flow:`` section gives it, this
changes it through the model's commit (every config's ``flow`` section differs, so every vrouter gets
its new config within a second and its pipeline turns its recorder on or off), and the controller's
state keeps it, so a restarted VNC pushes what was last set rather than the topology's value.
"""
from __future__ import annotations

from typing import Any

from vrouter.io.control import VncError

KEY = "records"         # in the model's flow settings and the vrouter config's flow section
STATE_KEY = "flow_records"


def check(on: Any) -> bool:
    if not isinstance(on, bool):
        raise VncError(f"flow.records: expected true or false, got {on!r}")
    return on


def set_records(model: Any, on: Any) -> Any:
    """Every vrouter's flow records on or off (the model's ``Change``)."""
    value = check(on)
    return model._commit(lambda: model._flow.__setitem__(KEY, value))


def enabled(flow: dict[str, Any]) -> bool:
    return bool(flow.get(KEY, False))


def restore(flow: dict[str, Any], state: dict[str, Any]) -> None:
    """Take the saved switch into the model's flow settings (a state saved before it existed: the
    topology's stays); the key is only added when it changes something, so configs stay identical."""
    if STATE_KEY in state and check(state[STATE_KEY]) != enabled(flow):
        flow[KEY] = state[STATE_KEY]
