"""control-spec's CString, the C-style quoted string of tor's torrc values and of the LOG and STATUS lines of
pluggable transports (tor lib/encoding/cstring.c unescape_string). The bottom layer: imports nothing of oppy's.
"""

from __future__ import annotations

__all__ = ["CStringError", "unescape_cstring"]

# cstring.c unescape_string: the one-character escapes it accepts.
_SIMPLE_ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", '"': b'"', "\\": b"\\", "'": b"'"}
_HEX_DIGITS = "0123456789abcdefABCDEF"
_OCTAL_DIGITS = "01234567"


class CStringError(ValueError):
    """A quoted string that tor would refuse: a bad escape, a NUL or newline inside, no closing quote."""


def unescape_cstring(text: str, start: int) -> tuple[bytes, int]:
    """The bytes of the quoted string whose opening quote is ``text[start]``, and the index past its closing
    quote. Escapes: ``\\n \\r \\t \\" \\\\ \\'``, ``\\xHH``, one to three octal digits (at most 255); raw
    characters are encoded as UTF-8 with surrogateescape (the bytes a reader decoded that way had)."""
    if start >= len(text) or text[start] != '"':
        raise CStringError("expected a quoted string")
    out = bytearray()
    position = start + 1
    run_start = position
    while True:
        if position >= len(text):
            raise CStringError("unterminated quoted string")
        char = text[position]
        if char == '"':
            out += text[run_start:position].encode("utf-8", "surrogateescape")
            return bytes(out), position + 1
        if char in "\n\0":
            raise CStringError("newline or NUL inside a quoted string")
        if char != "\\":
            position += 1
            continue
        out += text[run_start:position].encode("utf-8", "surrogateescape")
        escape = text[position + 1:position + 2]
        if escape in ("x", "X"):
            digits = text[position + 2:position + 4]
            if len(digits) != 2 or digits[0] not in _HEX_DIGITS or digits[1] not in _HEX_DIGITS:
                raise CStringError(f"bad \\x escape in a quoted string: {text[position:position + 4]!r}")
            out.append(int(digits, 16))
            position += 4
        elif escape and escape in _OCTAL_DIGITS:
            end = position + 2
            while end < position + 4 and end < len(text) and text[end] in _OCTAL_DIGITS:
                end += 1
            number = int(text[position + 1:end], 8)
            if number > 0xFF:
                raise CStringError(f"octal escape above \\377 in a quoted string: {text[position:end]!r}")
            out.append(number)
            position = end
        elif escape in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[escape]
            position += 2
        else:
            raise CStringError(f"bad escape in a quoted string: {text[position:position + 2]!r}")
        run_start = position
