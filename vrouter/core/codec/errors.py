"""The single exception type the codecs raise for undecodable input."""


class Malformed(ValueError):
    """Input bytes are truncated or violate the header format."""
