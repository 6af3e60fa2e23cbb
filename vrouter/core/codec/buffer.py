"""The type of the byte buffers the parsers read in place (a type alias only, nothing runs here)."""
from typing import TypeAlias

# What struct.unpack_from and slicing accept: a datagram as read, a receive buffer, or a view into one.
Buffer: TypeAlias = bytes | bytearray | memoryview
