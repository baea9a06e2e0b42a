"""The value helpers every part of the configuration shares: its error types, tor's white space, strict
ASCII numbers and names, and how much of a bad value an error message repeats.

References: C tor ``lib/string/util_string.h`` (TOR_ISSPACE), ``lib/string/parse_int.c`` (tor_parse_long)
and ``lib/string/compat_ctype.h`` (ASCII-only case folding).
"""

from __future__ import annotations

import re

__all__ = [
    "ConfigError",
    "UnknownOptionError",
    "MAX_SHOWN",
    "MAX_PATH_SHOWN",
    "shortened",
    "TOR_SPACE",
    "MAX_DECIMAL_DIGITS",
    "parse_decimal",
    "ascii_lower",
    "split_words",
]

# How much of a value from outside an error message repeats, so that it stays one readable line (the
# whole value stays on ConfigError.value).
MAX_SHOWN = 60
MAX_PATH_SHOWN = 1024


def shortened(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` for an error message: control characters escaped (a NUL or LF in a quoted torrc value
    must not break the line), cut after ``limit`` characters."""
    shown = text if text.isprintable() else "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(text)} characters)"


class ConfigError(ValueError):
    """The configuration is malformed or invalid. The message is one line a user can act on."""

    def __init__(self, message: str, option: str | None = None, value: str | None = None) -> None:
        super().__init__(message)
        self.option = option
        self.value = value


class UnknownOptionError(ConfigError):
    """An option name oppy does not know (tor: ``Unknown option 'Foo'.  Failing.``)."""

    def __init__(self, option: str) -> None:
        super().__init__(f"Unknown option '{shortened(option)}'.  Failing.", option=option)


# C tor TOR_ISSPACE: the characters the torrc parser skips as white space.
TOR_SPACE = " \t\n\r\v\f"


# parse_int.c: tor reads every number in a torrc or a control command with strtol/strtoull, so none
# exceeds 64 bits: at most 20 digits once leading zeros are gone. Python's int() would take any count
# (and raise past 4300) and any Unicode digit ("１２３", "²" for isdigit()); tor takes ASCII only.
MAX_DECIMAL_DIGITS = 20


def parse_decimal(text: str, minimum: int, maximum: int) -> int | None:
    """tor_parse_long(text, 10, minimum, maximum, &ok, NULL): an optional sign and ASCII digits, nothing
    else; the value, or None when malformed or outside [minimum, maximum]. Any length is read in linear
    time without converting more than :data:`MAX_DECIMAL_DIGITS` digits. This is the one number parser
    for text from outside (torrc values, the command line, control-port arguments)."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not (digits.isascii() and digits.isdigit()):
        return None
    significant = digits.lstrip("0") or "0"
    if len(significant) > MAX_DECIMAL_DIGITS:
        return None
    value = -int(significant) if text[:1] == "-" else int(significant)
    return value if minimum <= value <= maximum else None


def ascii_lower(text: str) -> str:
    """``text`` lower-cased for comparing with ASCII names the way tor's strcasecmp does: text that is not
    pure ASCII is returned as it is, so that e.g. the KELVIN SIGN (which str.lower() turns into "k")
    never matches an option name or a flag."""
    return text.lower() if text.isascii() else text


_SPACE_RUN = re.compile(r"[ \t\n\r\v\f]+")  # runs of TOR_SPACE


def split_words(text: str, maxsplit: int = 0) -> list[str]:
    """``text`` split on runs of tor's white space (TOR_ISSPACE: ASCII only, not U+00A0 or U+3000 as
    str.split() would)."""
    stripped = text.strip(TOR_SPACE)
    return _SPACE_RUN.split(stripped, maxsplit) if stripped else []
