"""The pcap sink of mirror sessions: one standard pcap file per session and server.

Why a module: the core decides what is copied (vrouter/core/mirror.py) and hands the shell
``ToPcap`` actions; writing files is I/O, so it lives here. A session's copies go to
``<rundir>/mirror/<session>-<server>.pcap`` (libpcap format, microsecond timestamps, Ethernet link
type), opened on its first copy (appended to when it exists, so a session removed and added again
keeps one file), flushed after every batch so a reader sees what was copied, closed when the
session goes. The pipeline's clock is monotonic: its stamps are moved to wall-clock time by one
offset taken when the sink is made, so the copies keep their exact spacing.
"""
from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Callable
from typing import BinaryIO

log = logging.getLogger("mirror")
MIRROR_DIR = "mirror"       # under the run directory; a new run sets the last one's aside (testbed/rundir.py)

PCAP_MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144            # a whole TSO/GRO super-frame fits
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


def pcap_header() -> bytes:
    return _GLOBAL.pack(PCAP_MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET)


def pcap_record(frame: bytes, wall: float) -> bytes:
    sec = int(wall)
    usec = min(999999, int(round((wall - sec) * 1e6)))
    n = min(len(frame), SNAPLEN)
    return _RECORD.pack(sec, usec, n, len(frame)) + frame[:n]


def pcap_path(rundir: str, session: str, server: str) -> str:
    return os.path.join(rundir, MIRROR_DIR, f"{session}-{server}.pcap")


class PcapFiles:
    def __init__(self, rundir: str, server: str, clock: Callable[[], float] = time.monotonic):
        self.rundir, self.server = rundir, server
        self.offset = time.time() - clock()     # the pipeline's clock -> wall-clock time, taken once
        self.files: dict[str, BinaryIO] = {}
        self.errors = 0

    def _file(self, session: str) -> BinaryIO | None:
        f = self.files.get(session)
        if f is None:
            path = pcap_path(self.rundir, session, self.server)
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                f = open(path, "ab")        # noqa: SIM115  # kept open for the session's life
                if f.tell() == 0:
                    f.write(pcap_header())
            except OSError as exc:
                self.errors += 1
                log.error("mirror %s: cannot write %s: %s", session, path, exc)
                return None
            self.files[session] = f
        return f

    def write(self, session: str, frame: bytes, at: float) -> None:
        """A copy stamped ``at`` on the pipeline's clock."""
        f = self._file(session)
        if f is not None:
            f.write(pcap_record(frame, at + self.offset))

    def flush(self) -> None:
        for name, f in list(self.files.items()):
            try:
                f.flush()
            except OSError as exc:
                self.errors += 1
                log.error("mirror %s: %s", name, exc)

    def close(self, session: str) -> None:
        f = self.files.pop(session, None)
        if f is not None:
            f.close()

    def close_all(self) -> None:
        for name in list(self.files):
            self.close(name)
