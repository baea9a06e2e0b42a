"""tor's torrc syntax: lines, quoting, continuations, comments, ``+``/``/`` prefixes and ``%include``.

References: tor(1) "THE CONFIGURATION FILE FORMAT"; C tor ``lib/encoding/confline.c`` (line syntax),
``lib/encoding/cstring.c`` (quoted values) and ``lib/confmgt/confmgt.c`` (``+``/``/`` prefixes).

The lexer is sans-IO: :func:`parse_torrc_text` takes text. Only :func:`read_torrc_file` and ``%include``
touch the file system.
"""

from __future__ import annotations

import enum
import glob
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from oppy.config.values import MAX_PATH_SHOWN, TOR_SPACE, ConfigError, shortened
from oppy.cstring import CStringError, unescape_cstring

__all__ = [
    "MAX_INCLUDE_RECURSION_LEVEL",
    "INCLUDE_KEYWORD",
    "LineCommand",
    "ConfigLine",
    "IncludeHandler",
    "parse_torrc_text",
    "read_torrc_file",
    "quote_value",
]

# confline.c MAX_INCLUDE_RECURSION_LEVEL: how deep %include may nest.
MAX_INCLUDE_RECURSION_LEVEL = 31
INCLUDE_KEYWORD = "%include"


class LineCommand(enum.Enum):
    """What a configuration line does to an option that already has values (confline.h)."""

    NORMAL = "normal"  # set; a list option's first line in a new source replaces the older list
    APPEND = "append"  # "+Option value": add to the list from earlier sources
    CLEAR = "clear"  # "/Option": drop every earlier value (back to the default)


@dataclass(frozen=True)
class ConfigLine:
    """One ``Keyword value`` line as written (keyword not yet checked or put in canonical case)."""

    key: str
    value: str
    command: LineCommand = LineCommand.NORMAL


def _decode_quoted(text: str, start: int) -> tuple[str, int]:
    """Decode the C-style quoted string that opens at ``text[start]`` (cstring.c unescape_string, oppy.cstring).
    Returns the value and the index just past the closing quote."""
    try:
        value, end = unescape_cstring(text, start)
    except CStringError:
        raise ConfigError("Error while parsing configuration: Invalid escape sequence in quoted string") from None
    return value.decode("utf-8", "surrogateescape"), end


def _strip_continuations(raw: str) -> str:
    """Inside a continued value, drop ``\\`` + newline pairs and comments (with their newline)."""
    out: list[str] = []
    i = 0
    n = len(raw)
    while i < n:
        if raw[i] == "#":
            end = raw.find("\n", i)
            i = n if end < 0 else end + 1
        elif raw.startswith("\\\n", i):
            i += 2
        else:
            out.append(raw[i])
            i += 1
    return "".join(out)


def _split_lines(text: str) -> list[tuple[str, str]]:
    """Split torrc text into (keyword, value) pairs exactly as C tor's
    ``parse_config_line_from_str_verbose`` does, comments and continuations included."""
    pairs: list[tuple[str, str]] = []
    n = len(text)
    pos = 0
    while True:
        # Skip white space and whole-line comments up to the next keyword.
        while True:
            while pos < n and text[pos] in TOR_SPACE:
                pos += 1
            if pos < n and text[pos] == "#":
                end = text.find("\n", pos)
                pos = n if end < 0 else end
            else:
                break
        if pos >= n:
            return pairs
        key_start = pos
        while pos < n and text[pos] not in TOR_SPACE and text[pos] != "#" and not text.startswith("\\\n", pos):
            pos += 1
        key = text[key_start:pos]
        while pos < n and text[pos] in " \t":
            pos += 1
        value_start = pos
        if pos < n and text[pos] == '"':
            value, pos = _decode_quoted(text, pos)
            while pos < n and text[pos] in " \t":
                pos += 1
            if pos < n and text[pos] == "\r":
                pos += 1
                if pos < n and text[pos] == "\n":
                    pos += 1
            if pos < n and text[pos] not in "#\n":
                raise ConfigError("Error while parsing configuration: Excess data after quoted string")
        else:
            continuation = False
            while pos < n and text[pos] != "\n" and (text[pos] != "#" or continuation):
                if text.startswith("\\\n", pos):
                    continuation = True
                    pos += 2
                elif text[pos] == "#":
                    end = text.find("\n", pos)
                    pos = n if end < 0 else end + 1
                else:
                    pos += 1
            end = pos
            if pos < n and text[pos] == "\n":
                pos += 1
            while end > value_start and text[end - 1] in TOR_SPACE:
                end -= 1
            value = text[value_start:end]
            if continuation:
                value = _strip_continuations(value)
        if pos < n and text[pos] == "#":
            end = text.find("\n", pos)
            pos = n if end < 0 else end
        pairs.append((key, value))


IncludeHandler = Callable[[str, int], list[ConfigLine]]


def parse_torrc_text(text: str, *, include_handler: IncludeHandler | None = None,
                     recursion_level: int = 1) -> list[ConfigLine]:
    """The lines of a torrc, in order, with ``+Option`` / ``/Option`` prefixes decoded.

    ``%include PATH`` lines go to ``include_handler(path, recursion_level)``; without one they are
    an error (``config_from_torrc_text`` has no file system to read from).
    """
    if recursion_level > MAX_INCLUDE_RECURSION_LEVEL:
        raise ConfigError(f"Error while parsing configuration: more than {MAX_INCLUDE_RECURSION_LEVEL} "
                          "nested %includes.")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines: list[ConfigLine] = []
    for key, value in _split_lines(text):
        if key == INCLUDE_KEYWORD:
            if include_handler is None:
                raise ConfigError(f"%include is only supported in a torrc file read with -f (here: "
                                  f"'%include {shortened(value, MAX_PATH_SHOWN)}')",
                                  option=INCLUDE_KEYWORD, value=value)
            lines.extend(include_handler(value, recursion_level + 1))
            continue
        command = LineCommand.NORMAL
        if key.startswith("+"):
            key, command = key[1:], LineCommand.APPEND
        elif key.startswith("/"):
            key, value, command = key[1:], "", LineCommand.CLEAR
        lines.append(ConfigLine(key, value, command))
    return lines


def _read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except (OSError, ValueError) as exc:  # ValueError: a NUL in a quoted %include path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        shown = shortened(path, MAX_PATH_SHOWN)
        raise ConfigError(f'Unable to open configuration file "{shown}": {reason}') from None
    # files.c read_file_to_str: tor drops every CR from a text file before parsing it.
    return data.decode("utf-8", "surrogateescape").replace("\r", "")


def _include_paths(pattern: str) -> list[str]:
    """tor(1) %include: expand wildcards, sort; a folder contributes its own files (not dot files,
    not sub-folders), in lexical order."""
    pattern = os.path.expanduser(pattern)
    matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    if not matches:
        raise ConfigError("Error reading included configuration file or directory: "
                          f'"{shortened(pattern, MAX_PATH_SHOWN)}".')
    files: list[str] = []
    for match in matches:
        if os.path.isdir(match):
            for name in sorted(os.listdir(match)):
                full = os.path.join(match, name)
                if not name.startswith(".") and os.path.isfile(full):
                    files.append(full)
        else:
            files.append(match)
    return files


def read_torrc_file(path: str, *, recursion_level: int = 1) -> list[ConfigLine]:
    """The lines of the torrc at ``path`` (``-`` is standard input), ``%include`` expanded."""

    def include(pattern: str, level: int) -> list[ConfigLine]:
        lines: list[ConfigLine] = []
        for included in _include_paths(pattern):
            lines.extend(read_torrc_file(included, recursion_level=level))
        return lines

    return parse_torrc_text(_read_text(path), include_handler=include, recursion_level=recursion_level)


def quote_value(value: str) -> str:
    """``value`` as it must be written in a torrc: bare when the parser gives it back unchanged, else
    quoted with C escapes (confmgt.c config_value_needs_escape, plus the cases our parser would strip)."""
    needs_quotes = (
        value == ""
        or value[0] in TOR_SPACE + '"'
        or value[-1] in TOR_SPACE + "\\"
        or any(not (" " <= char <= "~") or char == "#" for char in value)
    )
    if not needs_quotes:
        return value
    out = ['"']
    for byte in value.encode("utf-8", "surrogateescape"):
        char = chr(byte)
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif " " <= char <= "~":
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    out.append('"')
    return "".join(out)
