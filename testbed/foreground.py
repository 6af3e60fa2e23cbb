"""Run a child in the foreground the way a shell runs a command: `testbed exec` is one.

The child inherits stdin/stdout/stderr (its output streams as it comes, nothing is collected) and
its exit status becomes ours (128 + N if signal N ended it, as shells report it). Signals reach it
exactly once, whatever started us:
- on a terminal, with us in the foreground, the child shares our process group: Ctrl-C, Ctrl-\\
  and hangups reach it from the terminal itself, Ctrl-Z stops us both and `fg` resumes us both,
  and a program that reads the terminal (a REPL, `cat`) may;
- otherwise (a pipe, a script, a test, a service manager) the child leads a process group of its
  own, so a signal aimed at us is not lost on the child and what it runs in its own foreground
  (the `sleep` of `sh -c 'sleep 600; echo'`) gets it too.
We block the forwarded signals and take them with sigtimedwait: each one says who sent it, so a
signal the terminal sent (si_code SI_KERNEL) to a group the child is in anyway is not sent twice,
while one sent to us with kill(2) is passed on: to the child's group, or with a shared group to
the child and those of its descendants still in it.
"""
from __future__ import annotations

import os
import signal
import subprocess

import psutil

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
SI_KERNEL = 0x80  # si_code of a signal the kernel sent (the terminal's, too): asm-generic/siginfo.h
WAKE = 1.0  # s: sigtimedwait's bound, in case SIGCHLD went to nobody (a child reaped elsewhere)


def exit_status(returncode: int) -> int:
    """A Popen return code as a shell reports it: -N (ended by signal N) -> 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def should_forward(si_code: int, shared_group: bool) -> bool:
    """A signal the terminal sent to our process group reached a child in that group already."""
    return not (shared_group and si_code == SI_KERNEL)


def in_terminal_foreground() -> bool:
    """Is our process group the foreground group of our controlling terminal?"""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:  # no controlling terminal
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


def _forward(child: subprocess.Popen, signo: int, shared_group: bool) -> None:
    if not shared_group:
        try:
            os.killpg(child.pid, signo)
        except ProcessLookupError:
            pass
        return
    # Our group is the caller's too (its shell's job, maybe a pipeline): only the child's part of it.
    ours = os.getpgrp()
    try:
        procs = [psutil.Process(child.pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return
    for proc in procs:
        try:
            if os.getpgid(proc.pid) == ours:
                proc.send_signal(signo)
        except (OSError, psutil.Error):
            pass


def run(argv: list[str], shared_group: bool | None = None) -> int:
    """Run argv in the foreground (see above) and return its exit status. `shared_group`: None
    decides by the terminal (in_terminal_foreground()). OSError if argv cannot be started."""
    if shared_group is None:
        shared_group = in_terminal_foreground()
    waited = {*FORWARDED, signal.SIGCHLD}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    try:
        # Blocked before the child exists, so none is missed; the child starts with the old mask.
        child = subprocess.Popen(argv, process_group=None if shared_group else 0,
                                 preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_SETMASK, old_mask))
        while child.poll() is None:
            info = signal.sigtimedwait(waited, WAKE)
            if info is None or info.si_signo == signal.SIGCHLD:
                continue
            if should_forward(info.si_code, shared_group):
                _forward(child, info.si_signo, shared_group)
    finally:
        # Signals that came after the child ended were meant for it: drop them, not die of them.
        while signal.sigtimedwait(waited, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return exit_status(child.returncode)
