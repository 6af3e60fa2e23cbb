"""Start vrouter processes by forking a Python that has already imported them.

Every vrouter process costs CPython's start-up and the imports of the vrouter (about 0.15 s of CPU
here); a testbed of 128 servers starts 256 of them on 2 cores, and those starts were what its
bring-up waited for most. The supervisor (testbed/supervisor.py) hands such starts to one fork
server per testbed instead: `python -m testbed.forkserver` imports PRELOAD once, and forks a child
per request that enters the server's network namespace, its own session, its log and argv, and runs
the module as `__main__`, as `python -m` would. The children are the fork server's: it reaps them
and reports each exit status back, so the supervisor's handle (`Forked`) answers `poll()` and
`wait()` like a `subprocess.Popen`. The fork server ends when the testbed's side of its socket
closes (the daemon died or stopped it); its children end with it (the vrouter's PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import array
import ctypes
import json
import os
import runpy
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

PRELOAD = ("vrouter.processes.forwarder", "vrouter.processes.agent")
CLONE_NEWNET = 0x40000000
PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1
MAX_MSG = 1 << 16
READY = b"ready"
START_TIMEOUT = 30.0  # s for the fork server's imports (a loaded machine)


# --- the fork server (its own process) ---------------------------------------------------------

def _child(req: dict, log_fd: int) -> None:
    """In the forked child: become what `nsenter --net=... python -m MODULE ARGS` would have run."""
    code = 1
    try:
        os.setsid()
        libc = ctypes.CDLL(None, use_errno=True)
        # ps/top show the supervisor's name (vr-srv1-fwd), not the fork server's command line
        libc.prctl(PR_SET_NAME, req["name"].encode()[:15], 0, 0, 0)
        # Ends with the fork server from the start, not only once the module says so itself.
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != req["parent"]:
            return  # the fork server died before that was set
        if req.get("netns_pid"):
            ns = os.open(f"/proc/{req['netns_pid']}/ns/net", os.O_RDONLY)
            if libc.setns(ns, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into the network namespace of {req['netns_pid']}")
            os.close(ns)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(null)
        os.close(log_fd)
        if req.get("cwd"):
            os.chdir(req["cwd"])
        os.environ.update(req.get("env") or {})
        sys.argv = [req["module"], *req["args"]]
        sys.modules.pop(req["module"], None)  # run afresh as __main__, as `python -m` does
        runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _fork(req: dict, log_fd: int, sock: socket.socket, wake: tuple[int, int]) -> int:
    req["parent"] = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        os.close(log_fd)
        raise
    if pid == 0:
        sock.close()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in wake:
            os.close(fd)
        _child(req, log_fd)
    os.close(log_fd)
    return pid


def _recv(sock: socket.socket) -> tuple[dict, int] | None:
    fds = array.array("i")
    try:
        msg, anc, _, _ = sock.recvmsg(MAX_MSG, socket.CMSG_SPACE(fds.itemsize))
    except ConnectionError:
        return None
    if not msg:
        return None
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    return json.loads(msg), fds[0]


def serve(sock: socket.socket) -> None:
    for module in PRELOAD:
        __import__(module)
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd turns it into a readable pipe
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(rfd, selectors.EVENT_READ)
    sock.send(READY)
    while True:
        for key, _ in sel.select():
            if key.fileobj is sock:
                got = _recv(sock)
                if got is None:
                    return  # the testbed closed its end: our children go with us (PDEATHSIG)
                req, log_fd = got
                try:
                    sock.send(json.dumps({"pid": _fork(req, log_fd, sock, (rfd, wfd))}).encode())
                except OSError as exc:
                    sock.send(json.dumps({"error": str(exc)}).encode())
            else:
                os.read(rfd, 4096)
        while True:  # reap every child that ended; the testbed learns its status
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            sock.send(json.dumps({"exited": pid, "rc": os.waitstatus_to_exitcode(status)}).encode())


# --- the testbed's side ------------------------------------------------------------------------

class ForkServerError(Exception):
    pass


class Forked:
    """A forked child as the supervisor sees it: the subset of subprocess.Popen it uses."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self._done = threading.Event()

    def _exited(self, rc: int) -> None:
        self.returncode = rc
        self._done.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
        assert self.returncode is not None
        return self.returncode


def eligible(argv: list) -> str | None:
    """The preloaded module `argv` runs (`python -m MODULE ...` with this Python), or None."""
    if len(argv) >= 3 and argv[0] == sys.executable and argv[1] == "-m" and argv[2] in PRELOAD:
        return str(argv[2])
    return None


class ForkServer:
    """The testbed's handle of its fork server: `start(...)` returns a `Forked`."""

    def __init__(self, log_fh, cwd: str | None = None):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen([sys.executable, "-m", "testbed.forkserver", str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=log_fh,
                                     stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)
        theirs.close()
        self.sock = ours
        self.sock.settimeout(START_TIMEOUT)
        try:
            if self.sock.recv(MAX_MSG) != READY:
                raise ForkServerError("the fork server did not start (see its log)")
        except (OSError, ForkServerError):
            self.close()
            raise ForkServerError("the fork server did not start (see its log)") from None
        self.sock.settimeout(None)
        self.children: dict[int, Forked] = {}
        self._replies: list[Forked | dict] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="forkserver", daemon=True)
        self._reader.start()

    def alive(self) -> bool:
        return self.proc.poll() is None and self._reader.is_alive()

    def _read(self) -> None:
        while True:
            try:
                msg = self.sock.recv(MAX_MSG)
            except OSError:
                msg = b""
            if not msg:
                break
            m = json.loads(msg)
            with self._cond:
                if "exited" in m:
                    child = self.children.pop(m["exited"], None)
                    if child is not None:
                        child._exited(m["rc"])
                    continue
                if "pid" in m:  # known before its exit can be reported, which comes after this
                    child = Forked(m["pid"])
                    self.children[child.pid] = m = child
                self._replies.append(m)
                self._cond.notify_all()
        with self._cond:  # the fork server is gone, and with it every child (PDEATHSIG)
            gone, self.children = list(self.children.values()), {}
            self._cond.notify_all()
        for child in gone:
            child._exited(-signal.SIGTERM)

    def start(self, name: str, module: str, args: list, log_fh, netns_pid: int | None = None,
              cwd: str | None = None, env: dict | None = None) -> Forked:
        """Fork `python -m module args` named `name` (its comm), logging to `log_fh`, in the network
        namespace of `netns_pid` (None: the fork server's)."""
        req = {"name": name, "module": module, "args": [str(a) for a in args], "netns_pid": netns_pid,
               "cwd": cwd, "env": env}
        with self._cond:  # one request at a time: replies come in the order of the requests
            self.sock.sendmsg([json.dumps(req).encode()],
                              [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [log_fh.fileno()]))])
            deadline = time.monotonic() + START_TIMEOUT
            while not self._replies:
                if not self._reader.is_alive() or not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    raise ForkServerError(f"the fork server did not start {module}")
            reply = self._replies.pop(0)
            if isinstance(reply, dict):
                raise ForkServerError(f"the fork server could not start {module}: {reply.get('error')}")
            return reply

    def close(self, timeout: float = 5.0) -> None:
        """Close our end: the fork server exits (and any child it still has ends with it)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # close() alone would not wake our reader's recv
        except OSError:
            pass
        self.sock.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
