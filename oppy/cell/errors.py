"""The one exception every cell parser in :mod:`oppy.cell` raises on bad input."""


class CellParseError(ValueError):
    """Bytes from the network do not form a well-formed cell or cell body.

    Parsers raise this and nothing else on truncated, oversized or corrupted input, so a
    caller can catch one class and treat it as a protocol violation by the peer.
    """
