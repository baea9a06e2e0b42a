"""Sans-IO framing of Tor's control protocol: commands in, replies and events out.

The reference is torspec control-spec ("Message format": commands, replies, CmdData,
QuotedString/CString) and what C tor actually does (control.c, control_cmd.c,
control_proto.c, kvline.c, cstring.c, qstring.c, escape.c), since stem and nyx were written
against tor, not against the prose.

Text handling: the protocol is 8-bit; bytes become ``str`` with UTF-8 and
``surrogateescape``, so every input byte survives a round trip (``.encode("utf-8",
"surrogateescape")`` gives the bytes tor would have seen, e.g. for a password).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

from oppy.cstring import CStringError, unescape_cstring as decode_cstring_bytes

__all__ = [
    "MAX_COMMAND_LENGTH",
    "ControlCodecError",
    "ControlSyntaxError",
    "ReplyFormatError",
    "ControlCommand",
    "FramingFailure",
    "COMMAND_TOO_LONG",
    "ControlLineReader",
    "KeywordArgument",
    "ControlArguments",
    "ascii_upper",
    "split_positional",
    "unescape_cstring",
    "decode_qstring",
    "parse_kvline",
    "parse_arguments",
    "quote",
    "line_safe",
    "DataBlock",
    "encode_data",
    "reply",
    "bad_arguments_reply",
    "encode_event",
    "looks_like_http_request",
]

# control.c MAX_COMMAND_LINE_LENGTH: tor refuses a command (its first line and any CmdData
# together) longer than 1 MiB with "500 Line too long." and closes the connection.
MAX_COMMAND_LENGTH = 1024 * 1024

# control-spec "Replies from Tor to the controller": the code of an asynchronous event.
EVENT_CODE = 650
# control-spec: "500 Syntax error: protocol" family; tor uses 500 for an overlong command.
CODE_PROTOCOL_SYNTAX_ERROR = 500
# control-spec "Replies": 512 syntax error in command argument.
CODE_BAD_ARGUMENT_SYNTAX = 512

# compat_ctype.h TOR_ISSPACE: the characters C tor strips around commands and arguments.
_TOR_SPACE = " \t\n\v\f\r"
_TOR_SPACE_BYTES = _TOR_SPACE.encode()
# kvline.c: the separators between K=V items (no form feed, unlike TOR_ISSPACE).
_KVLINE_SPACE = " \t\r\v\n"
# escape.c esc_for_log: simple characters that get a backslash escape.
_SIMPLE_ESCAPES = {"\\": "\\\\", '"': '\\"', "'": "\\'", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
# proto_http.c peek_buf_has_http_command: what tor treats as a browser on the control port.
_HTTP_METHOD_PREFIXES = (b"CONNECT ", b"DELETE ", b"GET ", b"POST ", b"PUT ")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _build_escape_table() -> tuple[str, ...]:
    table = []
    for byte in range(256):
        char = chr(byte)
        if char in _SIMPLE_ESCAPES:
            table.append(_SIMPLE_ESCAPES[char])
        elif 0x20 <= byte < 0x7F:
            table.append(char)
        else:
            table.append(f"\\{byte:03o}")
    return tuple(table)


_ESCAPE_TABLE = _build_escape_table()


# --------------------------------------------------------------------------- errors


class ControlCodecError(ValueError):
    """Base class of the control codec's errors."""


class ControlSyntaxError(ControlCodecError):
    """A command's arguments do not parse; tor answers ``code`` (512 or 513) and ``message``."""

    def __init__(self, message: str, code: int = CODE_BAD_ARGUMENT_SYNTAX) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ReplyFormatError(ControlCodecError):
    """A reply or event could not be encoded (e.g. a line holding CR or LF would break framing)."""


# --------------------------------------------------------------------------- reading


class ControlCommand(NamedTuple):
    """One command from the controller.

    ``keyword`` is upper-cased (ASCII only, as tor's strcasecmp) and without the ``+`` of a
    multi-line command; ``args`` is the rest of the first line with surrounding whitespace
    removed; ``data`` is None for a one-line command and the dot-unstuffed CmdData (LF line
    ends, each line ending in LF) for a ``+KEYWORD`` command. An empty line gives keyword "",
    which tor answers like any unknown command.
    """

    keyword: str
    args: str = ""
    data: bytes | None = None

    @property
    def is_multiline(self) -> bool:
        return self.data is not None


@dataclass(frozen=True, slots=True)
class FramingFailure:
    """Input the reader cannot turn into a command. Yielded (not raised): the connection
    should send :attr:`reply` and close, as tor does; the reader ignores all later input."""

    code: int
    message: str

    @property
    def reply(self) -> bytes:
        return reply(self.code, [self.message])


COMMAND_TOO_LONG = FramingFailure(CODE_PROTOCOL_SYNTAX_ERROR, "Line too long.")

_DOT_END_LINES = (b".\r\n", b".\n")


class ControlLineReader:
    """Turns control-port bytes, fragmented any way, into :class:`ControlCommand` objects.

    Lines end in CRLF or a bare LF (tor accepts both). A first line starting with ``+`` opens a
    multi-line command whose CmdData ends with a line holding only ``.``. Between calls at
    most ``max_command_length`` bytes of an unfinished command stay buffered: a command
    growing past that makes the reader yield :data:`COMMAND_TOO_LONG` and stop.
    """

    __slots__ = ("_max", "_buffer", "_scan_from", "_first_line", "_data_lines", "_command_len", "_failed")

    def __init__(self, max_command_length: int = MAX_COMMAND_LENGTH) -> None:
        if max_command_length < 3:
            raise ValueError("max_command_length must allow at least a one-character line")
        self._max = max_command_length
        self._buffer = bytearray()
        self._scan_from = 0  # bytes of _buffer already known to hold no LF
        self._first_line: bytes | None = None  # first line of a multi-line command in progress
        self._data_lines: list[bytes] = []
        self._command_len = 0  # bytes of the multi-line command in progress
        self._failed = False

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for commands not yet complete (never more than the limit)."""
        return len(self._buffer) + self._command_len

    @property
    def failed(self) -> bool:
        """True once a :class:`FramingFailure` has been yielded; later input is dropped."""
        return self._failed

    def feed(self, data: bytes) -> list[ControlCommand | FramingFailure]:
        """Add received bytes; return the commands they complete, in order."""
        if self._failed or not data:
            return []
        buffer = self._buffer
        buffer += data
        results: list[ControlCommand | FramingFailure] = []
        consumed = 0
        scan = self._scan_from
        while True:
            newline = buffer.find(b"\n", scan)
            if newline < 0:
                break
            line = bytes(buffer[consumed : newline + 1])
            consumed = scan = newline + 1
            if self._command_len + len(line) > self._max:
                results.append(self._fail())
                return results
            if self._first_line is None:
                if line[:1] != b"+":
                    results.append(_parse_first_line(line, None))
                    continue
                self._first_line = line
                self._command_len = len(line)
            elif line in _DOT_END_LINES:
                results.append(_parse_first_line(self._first_line, self._data_lines))
                self._first_line = None
                self._data_lines = []
                self._command_len = 0
            else:
                self._data_lines.append(line)
                self._command_len += len(line)
        del buffer[:consumed]
        self._scan_from = len(buffer)
        if self._command_len + len(buffer) > self._max:
            results.append(self._fail())
        return results

    def _fail(self) -> FramingFailure:
        self._failed = True
        self._buffer = bytearray()
        self._scan_from = 0
        self._first_line = None
        self._data_lines = []
        self._command_len = 0
        return COMMAND_TOO_LONG


def _parse_first_line(line: bytes, data_lines: list[bytes] | None) -> ControlCommand:
    """Split a command line as control.c control_split_incoming_command does."""
    body = line[1:] if data_lines is not None else line
    end = len(body)
    index = 0
    while index < end and body[index] not in _TOR_SPACE_BYTES:
        index += 1
    keyword = _decode(body[:index].upper())  # bytes.upper() only touches ASCII letters
    args = _decode(body[index:].strip(_TOR_SPACE_BYTES))
    if data_lines is None:
        return ControlCommand(keyword, args, None)
    return ControlCommand(keyword, args, _unstuff(data_lines))


def _unstuff(lines: list[bytes]) -> bytes:
    """control_proto.c read_escaped_data: drop one leading dot per line, CRLF becomes LF."""
    out = []
    for line in lines:
        start = 1 if line[:1] == b"." else 0
        stop = len(line) - 1  # the LF
        if stop > start and line[stop - 1] == 0x0D:
            stop -= 1
        out.append(line[start:stop])
        out.append(b"\n")
    return b"".join(out)


def looks_like_http_request(first_bytes: bytes) -> bool:
    """True if a connection opens like an HTTP request (tor then answers with an HTTP 501)."""
    return first_bytes.startswith(_HTTP_METHOD_PREFIXES)


# --------------------------------------------------------------------------- arguments


class KeywordArgument(NamedTuple):
    """One item of a K=V argument list: ``key`` None for a bare value, ``value`` None for a
    bare key (a flag); ``quoted`` tells whether the value was a quoted string."""

    key: str | None
    value: str | None
    quoted: bool = False


class ControlArguments(NamedTuple):
    """Arguments split as tor's control_cmd_parse_args does: positional ones first, then an
    optional K=V tail."""

    positional: tuple[str, ...]
    keywords: tuple[KeywordArgument, ...] = ()

    def get(self, key: str, default: str | None = None) -> str | None:
        """The value of the first keyword ``key`` (case-insensitive), or ``default``."""
        wanted = key.upper()
        for item in self.keywords:
            if item.key is not None and item.key.upper() == wanted:
                return item.value if item.value is not None else default
        return default

    def has_flag(self, name: str) -> bool:
        """True if the bare keyword ``name`` (case-insensitive, no value) was given."""
        wanted = name.upper()
        return any(item.key is not None and item.value is None and item.key.upper() == wanted for item in self.keywords)


def ascii_upper(text: str) -> str:
    """``text`` upper-cased for comparing with ASCII keywords the way tor's strcasecmp does: text that
    is not pure ASCII is returned as it is (str.upper() would turn "ı" into "I" and "ſ" into "S")."""
    return text.upper() if text.isascii() else text


def split_positional(text: str, max_pieces: int = 0) -> list[str]:
    """Split on single spaces, trimming whitespace and dropping empty pieces (tor's
    smartlist_split_string with SKIP_SPACE|IGNORE_BLANK); with ``max_pieces`` > 0 the last
    piece is the whole remainder."""
    pieces: list[str] = []
    position = 0
    length = len(text)
    while True:
        while position < length and text[position] in _TOR_SPACE:
            position += 1
        if max_pieces > 0 and len(pieces) == max_pieces - 1:
            end = length
        else:
            end = text.find(" ", position)
            if end < 0:
                end = length
        next_position = end + 1 if end < length else -1
        while end > position and text[end - 1] in _TOR_SPACE:
            end -= 1
        if end != position:
            pieces.append(text[position:end])
        if next_position < 0:
            return pieces
        position = next_position


def unescape_cstring(text: str, start: int = 0) -> tuple[str, int]:
    """Decode the C-style quoted string (control-spec CString) at ``text[start]`` with tor's cstring.c rules
    (:mod:`oppy.cstring`). Returns the value and the index just past the closing quote."""
    try:
        value, end = decode_cstring_bytes(text, start)
    except CStringError as exc:
        raise ControlSyntaxError(str(exc)) from None
    return _decode(value), end


def decode_qstring(text: str, start: int = 0) -> tuple[str, int]:
    """Decode the control-spec QuotedString at ``text[start]``: a backslash makes the next
    character literal (tor's qstring.c, formerly decode_escaped_string, used by AUTHENTICATE
    and AUTHCHALLENGE). Returns the value and the index just past the closing quote."""
    if start >= len(text) or text[start] != '"':
        raise ControlSyntaxError("Expected a quoted string")
    out: list[str] = []
    position = start + 1
    length = len(text)
    while True:
        if position >= length:
            raise ControlSyntaxError("Unterminated quoted string")
        char = text[position]
        if char == '"':
            return "".join(out), position + 1
        if char == "\\":
            position += 1
            if position >= length:
                raise ControlSyntaxError("Unterminated quoted string")
            char = text[position]
        out.append(char)
        position += 1


# kvline.c / control_cmd.c: tor's one message for any K=V tail it cannot parse.
_CANNOT_PARSE_KEYWORDS = "Cannot parse keyword argument(s)"


def _needs_escape(value: str, as_keyless_value: bool) -> bool:
    """kvline.c needs_escape: would tor have to quote ``value`` to send it?"""
    if as_keyless_value and (not value or "=" in value):
        return True
    return any(ord(char) >= 0x7F or ord(char) < 0x20 or char in " '\"" for char in value)


def parse_kvline(
    text: str, *, keyless: bool = False, valueless: bool = False, quoting: str | None = "cstring"
) -> list[KeywordArgument]:
    """Parse space-separated ``K=V`` items as tor's kvline_parse does.

    ``keyless`` allows bare values (``V``, ``"V"``), ``valueless`` bare keys (flags); they are
    exclusive, as in tor. ``quoting`` is "cstring" (C escapes), "qstring" (QuotedString) or
    None (no quoted values). Raises :class:`ControlSyntaxError`.
    """
    if keyless and valueless:
        raise ValueError("keyless and valueless are mutually exclusive")
    if quoting not in ("cstring", "qstring", None):
        raise ValueError(f"unknown quoting {quoting!r}")
    result: list[KeywordArgument] = []
    position = 0
    length = len(text)
    while True:
        while position < length and text[position] in _KVLINE_SPACE:
            position += 1
        if position >= length:
            break
        key: str | None = None
        value: str | None = None
        quoted = False
        if text[position] != '"':
            end = position
            while end < length and text[end] not in _KVLINE_SPACE and text[end] != "=":
                end += 1
            if end < length and text[end] == "=":
                key = text[position:end]
                position = end + 1
            elif valueless:
                key = text[position:end]
                position = end
                result.append(KeywordArgument(key, None, False))
                continue
            elif not keyless:
                raise ControlSyntaxError(_CANNOT_PARSE_KEYWORDS)
        if position < length and text[position] == '"':
            if quoting is None:
                raise ControlSyntaxError(_CANNOT_PARSE_KEYWORDS)
            decoder = unescape_cstring if quoting == "cstring" else decode_qstring
            try:
                value, position = decoder(text, position)
            except ControlSyntaxError as error:
                raise ControlSyntaxError(_CANNOT_PARSE_KEYWORDS) from error
            if "\0" in value:
                raise ControlSyntaxError(_CANNOT_PARSE_KEYWORDS)
            quoted = True
        else:
            end = position
            while end < length and text[end] not in _KVLINE_SPACE:
                end += 1
            value = text[position:end]
            position = end
        if key is not None and not key:
            raise ControlSyntaxError(_CANNOT_PARSE_KEYWORDS)
        result.append(KeywordArgument(key, value, quoted))
    if quoting != "qstring":
        for item in result:
            if item.key is not None and _needs_escape(item.key, True):
                raise ControlSyntaxError(_CANNOT_PARSE_KEYWORDS)
            if quoting is None and item.value is not None and _needs_escape(item.value, item.key is None):
                raise ControlSyntaxError(_CANNOT_PARSE_KEYWORDS)
    return result


def parse_arguments(
    args: str,
    *,
    min_positional: int = 0,
    max_positional: int | None = None,
    keywords: bool = False,
    allowed_keywords: Sequence[str] | None = None,
    keyless: bool = False,
    valueless: bool = False,
    quoting: str | None = "cstring",
) -> ControlArguments:
    """Parse a one-line command's arguments like tor's control_cmd_parse_args.

    Up to ``max_positional`` space-separated arguments (None: any number, no keywords); if
    ``keywords`` is set, whatever follows them is a K=V tail (see :func:`parse_kvline`),
    restricted to ``allowed_keywords`` (case-insensitive) when given. Error messages are
    tor's; answer them with :func:`bad_arguments_reply`.
    """
    pieces = split_positional(args, 0 if max_positional is None else max_positional + 1)
    if len(pieces) < min_positional:
        raise ControlSyntaxError(f"Need at least {min_positional} argument(s)")
    if max_positional is None or len(pieces) <= max_positional:
        return ControlArguments(tuple(pieces))
    if not keywords:
        raise ControlSyntaxError(f"Cannot accept more than {max_positional} argument(s)")
    tail = parse_kvline(pieces.pop(), keyless=keyless, valueless=valueless, quoting=quoting)
    if not tail:
        raise ControlSyntaxError(_CANNOT_PARSE_KEYWORDS)
    if allowed_keywords is not None:
        allowed = {name.upper() for name in allowed_keywords}
        for item in tail:
            if item.key is not None and item.key.upper() not in allowed:
                raise ControlSyntaxError(f"Unrecognized keyword argument {quote(item.key)}")
    return ControlArguments(tuple(pieces), tuple(tail))


# --------------------------------------------------------------------------- writing


def quote(value: str) -> str:
    """Quote ``value`` with C escapes, byte for byte as tor's esc_for_log (``\\n \\t \\r \\"
    \\\\ \\'``, other non-printable or non-ASCII bytes of its UTF-8 as three-digit octal)."""
    table = _ESCAPE_TABLE
    return '"' + "".join([table[byte] for byte in _encode(value)]) + '"'


def line_safe(text: str) -> str:
    """``text`` (which may repeat a controller's argument) for one reply line: a CR or LF, which would
    end the line, is written as ``\\r`` or ``\\n``. A command line can hold a bare CR; tor echoes it
    raw and so breaks its own reply."""
    if "\r" not in text and "\n" not in text:
        return text
    return text.replace("\r", "\\r").replace("\n", "\\n")


class DataBlock(NamedTuple):
    """A reply line carrying CmdData: ``NNN+head`` then ``data`` dot-stuffed, then ``.``.
    For GETINFO, ``head`` is ``key=``."""

    head: str
    data: str | bytes


def encode_data(data: str | bytes) -> bytes:
    """CmdData as tor's write_escaped_data: LF becomes CRLF, a line starting with ``.`` gets
    another ``.``, the data ends with CRLF and a final ``.`` line."""
    raw = _encode(data) if isinstance(data, str) else bytes(data)
    if not raw:
        return b".\r\n"
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    out = bytearray()
    for line in lines:
        if line[:1] == b".":
            out += b"."
        out += line
        if line[-1:] != b"\r":
            out += b"\r"
        out += b"\n"
    out += b".\r\n"
    return bytes(out)


def _check_line(code: int, text: str) -> bytes:
    raw = _encode(text)
    if b"\r" in raw or b"\n" in raw:
        raise ReplyFormatError(f"reply line for {code} holds CR or LF: {text!r}")
    return raw


def reply(code: int, lines: Sequence[str | DataBlock]) -> bytes:
    """Encode a whole reply: ``NNN-line`` for all but the last item, ``NNN+head`` and its
    CmdData for a :class:`DataBlock`, ``NNN line`` for the last item (which must be text)."""
    if not 100 <= code <= 999:
        raise ReplyFormatError(f"reply code must have three digits, not {code}")
    if not lines or isinstance(lines[-1], DataBlock):
        raise ReplyFormatError("a reply must end with a text line")
    prefix = str(code).encode()
    last = len(lines) - 1
    out = bytearray()
    for index, item in enumerate(lines):
        out += prefix
        if isinstance(item, DataBlock):
            out += b"+"
            out += _check_line(code, item.head)
            out += b"\r\n"
            out += encode_data(item.data)
            continue
        out += b" " if index == last else b"-"
        out += _check_line(code, item)
        out += b"\r\n"
    return bytes(out)


def bad_arguments_reply(keyword: str, error: ControlSyntaxError) -> bytes:
    """tor's answer to arguments that do not parse: ``512 Bad arguments to KEYWORD: why``."""
    return reply(error.code, [f"Bad arguments to {keyword}: {error.message}"])


def encode_event(*lines: str | DataBlock) -> bytes:
    """An asynchronous event: one text gives ``650 text``; several items (or a DataBlock)
    give ``650-``/``650+`` lines closed by ``650 OK``."""
    if len(lines) == 1 and not isinstance(lines[0], DataBlock):
        return reply(EVENT_CODE, lines)
    if not lines:
        raise ReplyFormatError("an event needs at least one line")
    return reply(EVENT_CODE, [*lines, "OK"])
