"""`testbed` command line: builds argparse from the command registry (testbed/commands.py).

Errors are one line on stderr: 1 for misuse/environment (not root, OVS not running...),
2 for invalid input (topology problems, bad arguments).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import testbed
from testbed.checks import PreconditionError, require_testbed_host
from testbed.commands import COMMAND_MODULES, COMMANDS, GROUP_HELP, CommandError
from testbed.topology import TopologyError


def load_command_modules() -> None:
    names = [f"testbed.{m.name}" for m in pkgutil.iter_modules(testbed.__path__) if m.name.startswith("cmd_")]
    for mod in sorted(names) + list(COMMAND_MODULES):
        importlib.import_module(mod)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    load_command_modules()
    parser = _Parser(prog="testbed", description="Mininet testbed for overlay virtual networks "
                                                 "(leaf-spine OVS fabric, os-ken controller, vrouters).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    groups = {}
    for name in sorted(COMMANDS):
        cmd = COMMANDS[name]
        words = name.split()
        if len(words) == 1:
            p = sub.add_parser(name, help=cmd.help, description=cmd.help, add_help=not cmd.passthrough)
        else:
            head = words[0]
            if head not in groups:
                gp = sub.add_parser(head, help=GROUP_HELP.get(head, f"{head} commands"))
                groups[head] = gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)
                groups[head].required = True
            p = groups[head].add_parser(words[1], help=cmd.help, description=cmd.help, add_help=not cmd.passthrough)
        if cmd.arguments:
            cmd.arguments(p)
        p.set_defaults(_command=cmd)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    cmd = getattr(args, "_command", None)
    if cmd is None:
        parser.print_help()
        return 2
    if extra and not cmd.passthrough:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.passthrough = extra
    try:
        if cmd.root:
            require_testbed_host()
        return int(cmd.run(args) or 0)
    except PreconditionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except TopologyError as exc:
        print(f"error: invalid topology ({len(exc.problems)} problem{'s' * (len(exc.problems) != 1)}):",
              file=sys.stderr)
        for p in exc.problems:
            print(f"{exc.source}: {p}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
