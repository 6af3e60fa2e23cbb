"""``python -m vrouter replay --config FILE.yaml CAPTURE.pcap``: offline replay of a capture."""
import argparse
import sys

from vrouter.tools.replay import ReplayError, run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vrouter", description="vrouter core tools (no root needed)")
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("replay", help="run the pipeline over a pcap and print every decision")
    rp.add_argument("--config", required=True, help="vrouter configuration (YAML, docs/vrouter-core-api.md)")
    rp.add_argument("--mode", choices=["proactive", "reactive"], help="override flow.mode of the config")
    rp.add_argument("--json", action="store_true", help="also print one JSON object of the results last")
    rp.add_argument("capture", help="pcap file (Ethernet)")
    args = parser.parse_args(argv)
    try:
        return run(args.config, args.capture, mode=args.mode, as_json=args.json)
    except ReplayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
