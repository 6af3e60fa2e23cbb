"""The vrouter loops' readiness wait: `selectors`' interface on a bare epoll, for the per-packet path.

Measured here (issue 13): `selectors.DefaultSelector().select(0)` with a forwarder's 13 fds and one
ready costs 6.7 us in a warm loop, `select.epoll.poll(0)` 0.9 us; on this VM a forwarder that has
slept 20 ms runs its first microseconds of Python 10-20x slower than warm, so every line between the
wake-up and the read is paid again per ping. This keeps `register / modify / unregister / select`
with keys that have `fileobj` and `data`, as the shells use them, and does no per-event work but a
dict lookup and the event mask.
"""
from __future__ import annotations

import select
from selectors import EVENT_READ, EVENT_WRITE, SelectorKey

_READABLE = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP | select.EPOLLRDHUP
_WRITABLE = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP


def _fd(fileobj) -> int:
    return fileobj if isinstance(fileobj, int) else fileobj.fileno()


def _mask(events: int) -> int:
    return (select.EPOLLIN if events & EVENT_READ else 0) | (select.EPOLLOUT if events & EVENT_WRITE else 0)


class Poller:
    def __init__(self) -> None:
        self._ep = select.epoll()
        self._keys: dict[int, SelectorKey] = {}

    def register(self, fileobj, events: int, data=None) -> SelectorKey:
        fd = _fd(fileobj)
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} (fd {fd}) is already registered")
        self._ep.register(fd, _mask(events))
        key = self._keys[fd] = SelectorKey(fileobj, fd, events, data)
        return key

    def modify(self, fileobj, events: int, data=None) -> SelectorKey:
        fd = _fd(fileobj)
        if fd not in self._keys:
            raise KeyError(f"{fileobj!r} is not registered")
        self._ep.modify(fd, _mask(events))
        key = self._keys[fd] = SelectorKey(fileobj, fd, events, data)
        return key

    def unregister(self, fileobj) -> SelectorKey:
        fd = _fd(fileobj)
        key = self._keys.pop(fd)        # KeyError if not registered, as selectors raises
        try:
            self._ep.unregister(fd)
        except (OSError, ValueError):
            pass                        # closed already: epoll forgot it with the file
        return key

    def select(self, timeout: float | None = None) -> list[tuple[SelectorKey, int]]:
        """[(key, EVENT_READ | EVENT_WRITE)] of the ready fds; waits up to `timeout` s (None: forever)."""
        keys = self._keys
        out = []
        for fd, ev in self._ep.poll(-1 if timeout is None else timeout):
            key = keys.get(fd)
            if key is not None:
                out.append((key, key.events & ((EVENT_READ if ev & _READABLE else 0) |
                                               (EVENT_WRITE if ev & _WRITABLE else 0))))
        return out

    def get_map(self) -> dict[int, SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._ep.close()
        self._keys.clear()
