"""Header codecs for the vrouter core: parse and build on struct/memoryview, no scapy, no I/O.

Every parser takes ``(buf, off)`` and raises :class:`Malformed` for bad or truncated input, so the
pipeline can turn any decoding problem into a counted drop instead of a traceback.
"""
from .errors import Malformed

__all__ = ["Malformed"]
