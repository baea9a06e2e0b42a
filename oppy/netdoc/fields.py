"""Strict readers for the numbers, times and encodings that directory sources send.

Every directory source is untrusted until a document's signatures check out, and the
consensus header, HTTP answers and microdescriptors are read before (or without) any
signature. Python's own readers accept far more than the ASCII of dir-spec and HTTP:
``int()`` and ``str.isdigit()`` take non-ASCII digits (``"٢٠٠"``, ``"２"``; ``"²"`` passes
``isdigit()`` and then fails ``int()``), underscores, signs and surrounding blanks; ``int()``
of more than 4300 digits raises a ValueError of its own; ``calendar.timegm`` fails on year 0.
Every field from outside goes through these instead. They raise only the error type the
caller names, so each parser answers every malformed input with its own error.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import re
import time

from oppy.netdoc.errors import DocumentParseError

__all__ = [
    "MAX_DECIMAL_DIGITS",
    "EARLIEST_YEAR",
    "parse_decimal",
    "parse_fixed_point",
    "parse_hex_digest",
    "parse_time",
    "format_time",
    "decode_base64",
    "read_object",
]

#: Longest decimal integer accepted: any 64-bit value fits (tor reads directory numbers with
#: ``tor_parse_long``/``tor_parse_uint64``), and ``int()`` never meets its 4300-digit limit.
MAX_DECIMAL_DIGITS = 20
#: tor ``parse_iso_time_`` rejects any year before 1970 (POSIX time starts there); the format
#: has four digits for the year, so the last one is 9999.
EARLIEST_YEAR = 1970

#: ASCII only: a character range in a ``str`` pattern is a range of code points, unlike ``\\d``.
_DECIMAL_RE = re.compile(rf"(-?)([0-9]{{1,{MAX_DECIMAL_DIGITS}}})\Z")
_FIXED_POINT_RE = re.compile(rf"[0-9]{{1,{MAX_DECIMAL_DIGITS}}}(?:\.[0-9]{{1,{MAX_DECIMAL_DIGITS}}})?\Z")
#: A hex-encoded SHA-1 digest (tor HEX_DIGEST_LEN).
_HEX_DIGEST_RE = re.compile(r"[0-9A-Fa-f]{40}\Z")
#: dir-spec netdoc-format: ``YYYY-MM-DD HH:MM:SS`` (UTC).
_TIME_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2})\Z")
_BASE64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}\Z")
#: dir-spec netdoc-format: an Object starts with ``-----BEGIN <keyword>-----``.
_OBJECT_BEGIN_RE = re.compile(r"-----BEGIN ([A-Za-z0-9 ]{1,64})-----\Z")


def parse_decimal(text: str, error: type[Exception], what: str, low: int | None = None,
                  high: int | None = None) -> int:
    """An ASCII decimal integer of at most :data:`MAX_DECIMAL_DIGITS` digits within ``[low, high]``.

    A minus sign is accepted only where the range allows negative values.
    """
    match = _DECIMAL_RE.match(text)
    if match is None or (match.group(1) and (low is None or low >= 0)):
        raise error(f"bad {what}: {text[:40]!r} is not a decimal integer")
    value = int(text)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (f"in [{low}, {high}]" if low is not None and high is not None
                  else f"at least {low}" if low is not None else f"at most {high}")
        raise error(f"bad {what}: {value} is not {bounds}")
    return value


def parse_fixed_point(text: str, error: type[Exception], what: str) -> float:
    """A non-negative ASCII number with an optional fractional part (``3``, ``0.25``), as a float."""
    if _FIXED_POINT_RE.match(text) is None:
        raise error(f"bad {what}: {text[:40]!r} is not a decimal number")
    return float(text)


def parse_hex_digest(text: str, error: type[Exception], what: str) -> str:
    """Forty ASCII hex digits (a SHA-1 digest), upper case."""
    if _HEX_DIGEST_RE.match(text) is None:
        raise error(f"bad {what}: {text[:60]!r} is not 40 hex digits")
    return text.upper()


def parse_time(text: str, error: type[Exception] = DocumentParseError) -> int:
    """``YYYY-MM-DD HH:MM:SS`` (UTC) as POSIX seconds; a real calendar date from 1970 on."""
    match = _TIME_RE.match(text)
    if match is None:
        raise error(f"bad time {text[:40]!r}: expected YYYY-MM-DD HH:MM:SS")
    year, month, day, hour, minute, second = (int(part) for part in match.groups())
    if year < EARLIEST_YEAR or not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1] \
            or hour > 23 or minute > 59 or second > 60:
        raise error(f"bad time {text!r}: not a date and time from {EARLIEST_YEAR} on")
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))


def format_time(posix_seconds: float) -> str:
    """POSIX seconds as dir-spec's ``YYYY-MM-DD HH:MM:SS``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(posix_seconds))


def decode_base64(text: str, error: type[Exception], what: str) -> bytes:
    """Base64 that may lack its ``=`` padding (dir-spec netdoc-format, "base64")."""
    if _BASE64_RE.match(text) is None:
        raise error(f"bad base64 in {what}: {text[:60]!r}")
    stripped = text.rstrip("=")
    if len(stripped) % 4 == 1:
        raise error(f"bad base64 length in {what}: {text[:60]!r}")
    try:
        return base64.b64decode(stripped + "=" * (-len(stripped) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise error(f"bad base64 in {what}: {text[:60]!r}") from None


def read_object(lines: list[str], index: int, error: type[Exception], what: str) -> tuple[str, bytes, int]:
    """The Object (dir-spec netdoc-format) whose ``-----BEGIN <type>-----`` line is ``lines[index]``:
    (its type, its base64 body decoded, the index after its ``-----END <type>-----`` line)."""
    match = _OBJECT_BEGIN_RE.match(lines[index]) if index < len(lines) else None
    if match is None:
        got = lines[index][:60] if index < len(lines) else ""
        raise error(f"{what}: expected an object, got {got!r}")
    kind = match.group(1)
    end_line = f"-----END {kind}-----"
    chunks = []
    index += 1
    while index < len(lines) and lines[index] != end_line:
        chunks.append(lines[index])
        index += 1
    if index >= len(lines):
        raise error(f"{what}: unterminated {kind} object")
    return kind, decode_base64("".join(chunks), error, what), index + 1
