"""Hypothesis strategies shared by the fuzz targets: mutations of well-formed seeds and random chunkings.

Random bytes alone rarely get past a parser's first length or version check; a well-formed input with a
few bytes changed, a piece cut out or repeated, or a hostile token spliced in reaches the deep branches.
"""

from __future__ import annotations

from hypothesis import strategies as st

def _encoded(*tokens: str | bytes) -> tuple[bytes, ...]:
    return tuple(token if isinstance(token, bytes) else token.encode("utf-8") for token in tokens)


# Text that once broke parsers written with Python's conveniences: int() of thousands of digits, Unicode
# digits and spaces that isdigit()/split()/strip() accept, case mappings onto ASCII (dotless i, KELVIN
# SIGN, long s), numbers one past a C type's bound, quoting and escapes, NUL and non-UTF-8 bytes.
HOSTILE_NUMBERS = _encoded(
    "1" * 5000, "0" * 5000 + "1", "9" * 400 + ".5", "1e400", "-1", "+0", "-0", "255", "256", "65535", "65536",
    "2147483647", "2147483648", "4294967296", "9223372036854775808", "18446744073709551616", "0x10",
    "１２３", "²", "٣",
)
HOSTILE_TEXT = _encoded(
    "\u00a0", "\u3000", "\u2028", "\u0131", "\u212a", "\u017f", "İ", '"', '\\', '\\x', '\\777', "=", "$", "~",
    ",", ":", "[", "]", "::1", "auto", b"\x00", b"\xff", b"\xc3", b"\r", b"\t", b"\x0b", b"\x0c", b"", b" ",
)
HOSTILE_TOKENS = HOSTILE_NUMBERS + HOSTILE_TEXT
hostile_tokens = st.one_of(st.sampled_from(HOSTILE_NUMBERS), st.sampled_from(HOSTILE_TEXT))


# What separates the words of a command line, a torrc value or a SOCKS hostname.
_DELIMITERS = frozenset(b' \t=,:"$~.\n\x00')


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes] | tuple[bytes, ...]) -> bytes:
    """One of ``seeds`` with one to four mutations."""
    buffer = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        position = draw(st.integers(min_value=0, max_value=len(buffer)))
        operation = draw(st.sampled_from(("word", "word", "flip", "insert", "delete", "repeat", "token", "truncate")))
        if operation == "flip" and position < len(buffer):
            buffer[position] = draw(st.integers(min_value=0, max_value=255))
        elif operation == "insert":
            buffer[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif operation == "delete":
            del buffer[position:position + draw(st.integers(min_value=1, max_value=16))]
        elif operation == "repeat":
            piece = bytes(buffer[position:position + draw(st.integers(min_value=1, max_value=16))])
            buffer[position:position] = piece * draw(st.integers(min_value=1, max_value=40))
        elif operation == "word":  # a whole word (a number, a name, a value) becomes a hostile token
            starts = [0] + [index + 1 for index, byte in enumerate(buffer) if byte in _DELIMITERS]
            start = draw(st.sampled_from(starts))
            end = start
            while end < len(buffer) and buffer[end] not in _DELIMITERS:
                end += 1
            buffer[start:end] = draw(hostile_tokens)
        elif operation == "token":
            end = position + draw(st.integers(min_value=0, max_value=6))
            buffer[position:end] = draw(hostile_tokens)
        elif operation == "truncate":
            del buffer[position:]
    return bytes(buffer)


def seeds_mutated_or_random(seeds: list[bytes] | tuple[bytes, ...], max_random: int = 300) -> st.SearchStrategy[bytes]:
    """A seed as it is, a mutated seed, or random bytes."""
    return st.one_of(st.sampled_from(seeds), mutated(seeds), st.binary(max_size=max_random))


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the positions ``cuts`` (taken modulo its length plus one, sorted)."""
    positions = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces, start = [], 0
    for position in positions:
        pieces.append(data[start:position])
        start = position
    pieces.append(data[start:])
    return pieces


cuts = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=8)
