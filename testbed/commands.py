"""Registry of `testbed` subcommands: modules add theirs with @command, the CLI builds the parser.

    @command("bench throughput", help="...", root=True,
             arguments=lambda p: p.add_argument("--seconds", type=int, default=5))
    def bench_throughput(args): ...          # returns the exit code

A two-word name makes a group (`testbed bench fabric`, `testbed bench throughput`).
`root=True` checks for root and a running Open vSwitch before the command runs.
`passthrough=True` hands every argument after the command's name, unparsed, to the command in
`args.passthrough` (even -h: `testbed demo --help` shows the experiment's own help).
Modules named testbed/cmd_*.py and those in COMMAND_MODULES are imported by testbed.cli.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from testbed.fabric import FabricError, check_prefix

# The other modules imported by testbed.cli: those that register commands, and testbed.overlay
# (its testbed hooks and the `vr` command of Mininet's CLI).
COMMAND_MODULES = ("testbed.vr", "testbed.overlay", "testbed.capture", "testbed.net_cmd", "testbed.bench_fabric",
                   "testbed.bench_throughput", "testbed.bench_flowsetup")


@dataclass
class Command:
    name: str
    run: Callable
    help: str
    root: bool = False
    arguments: Callable | None = None
    passthrough: bool = False


COMMANDS: dict[str, Command] = {}
GROUP_HELP: dict[str, str] = {}


def command(name: str, help: str, root: bool = False, arguments: Callable | None = None,
            passthrough: bool = False) -> Callable[[Callable], Callable]:
    def deco(fn: Callable) -> Callable:
        if name in COMMANDS and COMMANDS[name].run is not fn:
            raise ValueError(f"testbed command {name!r} registered twice")
        COMMANDS[name] = Command(name, fn, help, root, arguments, passthrough)
        return fn
    return deco


def prefix_arg(text: str) -> str:
    """argparse type of every --prefix: a bad one is a usage error, not a traceback from the fabric."""
    try:
        return check_prefix(text)
    except FabricError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_arguments(p) -> None:
    """--prefix and --run-root: which running testbed a command talks to."""
    p.add_argument("--prefix", default="vt", type=prefix_arg,
                   help="name prefix of this testbed's bridges, links and run dir (default vt); "
                        "testbeds with different prefixes run side by side")
    p.add_argument("--run-root", default=None,
                   help="where run directories live (default $VNET_TESTBED_RUN_ROOT or /run/vnet-testbed)")


def group(name: str, help: str) -> None:
    GROUP_HELP.setdefault(name, help)


class CommandError(Exception):
    """A one-line error for the user; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code
