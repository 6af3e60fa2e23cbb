"""Start the controller: `python -m controllers.launcher --ofp-port N --fabric FILE.json`.

os-ken 4.x has no osken-manager; we configure oslo.config and run the AppManager ourselves.
With the native-thread hub, AppManager's own shutdown path fails (HubThread has no kill()),
so SIGTERM/SIGINT close the apps here and exit directly.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from os_ken import cfg
from os_ken.base.app_manager import AppManager
from os_ken.lib import hub

from controllers import vnc


def parse(argv):
    p = argparse.ArgumentParser(prog="controllers.launcher", description=__doc__.splitlines()[0])
    p.add_argument("--ofp-port", type=int, default=6653, help="OpenFlow TCP port (default 6653)")
    p.add_argument("--ofp-host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--fabric", required=True, help="fabric description written by the testbed (fabric.json)")
    p.add_argument("--vnc-socket", help="unix socket of the VNC control channel (needs --topology)")
    p.add_argument("--topology", help="topology YAML used by the VNC control channel")
    p.add_argument("--prefix", default="vt", help="testbed name prefix (names the VMs' TAP devices)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--app", action="append", default=[], help="extra os-ken app module to load")
    args = p.parse_args(argv)
    if bool(args.vnc_socket) != bool(args.topology):
        p.error("--vnc-socket and --topology go together")
    if not os.path.isfile(args.fabric):
        p.error(f"fabric description {args.fabric} does not exist")
    return args


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    vnc.SETTINGS.update(fabric=args.fabric, vnc_socket=args.vnc_socket, topology=args.topology,
                        prefix=args.prefix)
    cfg.CONF(args=["--ofp-tcp-listen-port", str(args.ofp_port), "--ofp-listen-host", args.ofp_host],
             project="os_ken")
    manager = AppManager.get_instance()

    def stop(signum, _frame):
        logging.getLogger("launcher").info("signal %d: stopping", signum)
        try:
            manager.close()
        finally:
            logging.shutdown()
            os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    manager.load_apps(["controllers.vnc"] + args.app)
    contexts = manager.create_contexts()
    services = manager.instantiate_apps(**contexts)
    logging.getLogger("launcher").info("controller listening on %s:%d", args.ofp_host, args.ofp_port)
    hub.joinall(services)
    return 0


if __name__ == "__main__":
    sys.exit(main())
