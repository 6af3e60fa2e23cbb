"""The process behind `testbed up`: holds the Mininet network and answers on `<rundir>/control.sock`.

`testbed up` starts `python -m testbed.daemon ...` in its own session and returns once state.json
says "up". Requests are one JSON line each: {"op": "status" | "stop" | "controller-restart" |
"restart" (name: a supervised process, for `testbed fault ... restart`) | "server-restart" (server) |
"cli"}; "cli" turns the connection into a relay of Mininet's CLI. `testbed exec` needs no request:
it enters the host's namespace itself (testbed/cmd_fabric.py).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

from testbed import overlay
from testbed.commands import CommandError
from testbed.rundir import RunDir
from testbed.runner import Testbed
from testbed.topology import load


class Daemon:
    def __init__(self, tb: Testbed):
        self.tb = tb
        self.rundir = tb.rundir
        self.done = threading.Event()
        self.mn_lock = threading.Lock()  # Mininet objects are not thread-safe
        self.sock = None
        # Restarts run on this long-lived thread, not on a request's: a vrouter process dies with
        # the thread that started it (PR_SET_PDEATHSIG), and request threads end with the request.
        self.spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="restart")

    def serve(self) -> None:
        path = str(self.rundir.control_socket)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o600)
        self.sock.listen(8)
        threading.Thread(target=self._accept, name="control", daemon=True).start()

    def _accept(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        f = conn.makefile("rw", buffering=1, encoding="utf-8", newline="\n")
        try:
            line = f.readline()
            try:
                req = json.loads(line)
                op = req["op"]
            except (ValueError, KeyError, TypeError):
                f.write(json.dumps({"ok": False, "error": "bad request"}) + "\n")
                return
            if op == "cli":
                # Mininet's CLI polls its input's fileno(), which socket.makefile() objects lack.
                fin = os.fdopen(os.dup(conn.fileno()), "r", encoding="utf-8", errors="replace")
                fout = os.fdopen(os.dup(conn.fileno()), "w", buffering=1, encoding="utf-8")
                try:
                    self._cli(fin, fout)
                finally:
                    for x in (fin, fout):
                        try:
                            x.close()
                        except OSError:
                            pass
                return
            try:
                reply = self._op(op, req)
            except Exception as exc:
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            f.write(json.dumps(reply) + "\n")
            f.flush()
            if op == "stop":
                self.done.set()
        except (OSError, ValueError):
            pass
        finally:
            try:
                f.close()
                conn.close()
            except OSError:
                pass

    def _op(self, op: str, req: dict) -> dict:
        if op == "status":
            return {"ok": True, "state": self.rundir.read_state(),
                    "processes": self.tb.supervisor.status() if self.tb.supervisor else {}}
        if op == "stop":
            return {"ok": True}
        if op == "controller-restart":
            with self.mn_lock:
                pid = self.tb.restart_controller()
            return {"ok": True, "pid": pid}
        if op == "restart":
            try:
                with self.mn_lock:
                    pid = self.spawner.submit(overlay.restart_process, self.tb, req["name"]).result()
            except overlay.OverlayError as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True, "pid": pid}
        if op == "server-restart":
            names = [s["name"] for s in self.tb.desc["servers"]]
            if req.get("server") not in names:
                return {"ok": False, "code": 2,
                        "error": f"unknown server {req.get('server')!r} (known: {', '.join(names)})"}
            try:
                with self.mn_lock:  # on the spawner thread: the new vrouter processes outlive this request
                    self.spawner.submit(overlay.restart_server, self.tb, req["server"]).result()
            except overlay.OverlayError as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def _cli(self, fin, fout) -> None:
        from mininet.cli import CLI
        from mininet.log import lg

        class RelayCLI(CLI):
            use_rawinput = False  # read the socket, not the daemon's stdin

        with self.mn_lock:
            old = [(h, h.stream) for h in lg.handlers if hasattr(h, "stream")]
            for h, _ in old:
                h.stream = fout
            try:
                fout.write(f"*** testbed {self.tb.prefix}: switches are named {self.tb.prefix}-s<N> (spines) "
                        f"and {self.tb.prefix}-l<N> (leaves); servers by their topology names\n")
                RelayCLI(self.tb.net, stdin=fin, stdout=fout)
            except (OSError, ValueError):  # client went away
                traceback.print_exc()
            finally:
                for h, stream in old:
                    h.stream = stream

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.done.set())
        signal.signal(signal.SIGINT, lambda *_: self.done.set())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.serve()
        while not self.done.wait(0.5):
            pass
        self.rundir.write_state(progress="stopping")
        try:
            self.sock.close()
            os.unlink(str(self.rundir.control_socket))
        except OSError:
            pass
        with self.mn_lock:
            self.tb.stop()
        return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="testbed.daemon")
    p.add_argument("--topology", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--run-root")
    p.add_argument("--ofp-port", type=int)
    args = p.parse_args(argv)
    rundir = RunDir(args.run_root, args.prefix)
    rundir.create()
    rundir.record_pid("daemon", os.getpid(), role="daemon")

    def progress(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)
        rundir.write_state(progress=msg)

    try:
        topo = load(args.topology)
        tb = Testbed(topo, prefix=args.prefix, run_root=args.run_root, ofp_port=args.ofp_port,
                     progress=progress, mode="daemon")
        tb.start()
    except Exception as exc:  # includes TopologyError: reported in state.json for `testbed up`
        traceback.print_exc()
        rundir.write_state(state="failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        rundir.forget_pid("daemon")
        return 1
    progress(f"up in {tb.timings['total']:.1f} s")
    rc = Daemon(tb).run()
    rundir.forget_pid("daemon")
    progress("stopped")
    return rc


# --- client side ------------------------------------------------------------------------------

REQUEST_TIMEOUT = 60.0  # s for one answer; the slowest op, controller-restart, waits at most 30 s


def _connect(rundir: RunDir, timeout: float | None) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(rundir.control_socket))
    except OSError as exc:
        s.close()
        raise CommandError(f"the daemon of testbed {rundir.prefix!r} is not answering on "
                           f"{rundir.control_socket}: {exc.strerror or exc} (log: {rundir.log('daemon')})") from None
    return s


def request(rundir: RunDir, op: str, timeout: float = REQUEST_TIMEOUT, **fields) -> dict:
    """One request to the daemon and its answer; a CommandError (one line) if there is none."""
    with _connect(rundir, timeout) as s:
        data = b""
        try:
            s.sendall((json.dumps({"op": op, **fields}) + "\n").encode())
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            raise CommandError(f"no answer to {op!r} from the daemon of testbed {rundir.prefix!r} within "
                               f"{timeout:g} s (log: {rundir.log('daemon')})") from None
        except OSError as exc:
            raise CommandError(f"lost the daemon of testbed {rundir.prefix!r} during {op!r}: "
                               f"{exc.strerror or exc}") from None
    try:
        return json.loads(data)
    except ValueError:
        raise CommandError(f"the daemon of testbed {rundir.prefix!r} ended the connection without "
                           f"answering {op!r} (log: {rundir.log('daemon')})") from None


def relay_cli(rundir: RunDir) -> None:
    """Connect this terminal to the daemon's Mininet CLI until EOF (Ctrl-D) or `exit`."""
    s = _connect(rundir, None)
    s.sendall(b'{"op": "cli"}\n')

    # Mininet forwards input typed while a command runs to that command as keystrokes, so a
    # line is only sent once the prompt is back (matters when commands are piped in).
    prompt = threading.Event()

    def pump():
        tail = ""
        while True:
            data = s.recv(4096)
            if not data:
                break
            text = data.decode(errors="replace")
            sys.stdout.write(text)
            sys.stdout.flush()
            tail = (tail + text)[-16:]
            if tail.endswith("mininet> "):
                prompt.set()
        prompt.set()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        for line in sys.stdin:
            prompt.wait()
            if not t.is_alive():
                break
            prompt.clear()
            s.sendall(line.encode())
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    t.join(10)
    s.close()


if __name__ == "__main__":
    sys.exit(main())
