"""Directory requests: HTTP/1.0 over BEGIN_DIR on a one-hop circuit.

dir-spec "General-use HTTP URLs" and client-operation: a client sends
``GET <url> HTTP/1.0`` and reads the answer until the BEGIN_DIR stream
closes; there is no keep-alive and usually no Content-Length. A URL ending in
``.z`` asks for a deflate (zlib) body. Answers are 200, 304 (not modified),
404 (not found) or 503 (busy). Like C tor's client, oppy never speaks to a
DirPort: the request travels inside the TLS link to the relay's ORPort.

The request encoder, the response reader and the body decoder are sans-IO;
:class:`DirectoryClient` is the thin Twisted edge over a BEGIN_DIR stream. Every
body is bounded: a response larger than the caller's limit (compressed while
it arrives, or once inflated) is cut off with :class:`ResponseTooLargeError`.

Any directory source may be hostile. The head of an answer is read as strict
ASCII (no other script's digits in a status code or Content-Length), and
whatever a source sends, a request ends: with its answer, a
:class:`DirectoryRequestError`, or its timeout. A bad answer over BEGIN_DIR
closes that stream only, never the circuit or the link to the relay.
"""

from __future__ import annotations

import email.utils
import logging
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from twisted.internet import defer

from oppy.cell.commands import EndReason
from oppy.netdoc.fields import parse_decimal
from oppy.netdoc.relay import RelayTarget
from oppy.stream.stream import Stream, StreamEnd, StreamKind

__all__ = [
    "DirectoryRequestError",
    "DirectoryConnectionError",
    "DirectoryTimeoutError",
    "DirectoryStatusError",
    "ResponseTooLargeError",
    "ResponseParseError",
    "ResponseDecodeError",
    "DirectoryResponse",
    "HTTPResponseReader",
    "encode_request",
    "decode_body",
    "DirectoryClient",
    "bridge_descriptor_url",
    "consensus_url",
    "key_certificates_url",
    "microdescriptors_url",
    "MAX_MICRODESCS_PER_REQUEST",
    "MAX_CONSENSUS_SIZE",
    "MAX_CERTIFICATES_SIZE",
    "MAX_MICRODESCS_RESPONSE_SIZE",
    "DEFAULT_REQUEST_TIMEOUT",
]

log = logging.getLogger(__name__)

#: dir-spec client-operation "Retrieving microdescriptors": at most 92 digests per
#: request (so that a URL stays under 4 KB with the slashes and dashes).
MAX_MICRODESCS_PER_REQUEST = 92
#: Size limits on decoded bodies. C tor caps nothing below MAX_BUF_SIZE; these leave
#: room for several times today's full microdesc consensus (about 3 MB) and for
#: 92 microdescriptors of generous size (about 600 bytes each today).
MAX_CONSENSUS_SIZE = 32 * 1024 * 1024
MAX_CERTIFICATES_SIZE = 2 * 1024 * 1024
MAX_MICRODESCS_RESPONSE_SIZE = 4 * 1024 * 1024
#: Limit on the status line and headers of a response.
MAX_HEADER_SIZE = 64 * 1024
#: Whole-request timeout (open the stream, send, read to the end). C tor gives a stalled
#: directory connection a few minutes (DIR_CONN_MAX_STALL); a client bootstrapping
#: on a private network wants to move to the next source much sooner.
DEFAULT_REQUEST_TIMEOUT = 60.0

_CONSENSUS_PATH = "/tor/status-vote/current/consensus-microdesc"
_KEYS_ALL_PATH = "/tor/keys/all"
_KEYS_FP_SK_PATH = "/tor/keys/fp-sk/"
_MICRODESC_PATH = "/tor/micro/d/"
_BRIDGE_DESCRIPTOR_PATH = "/tor/server/authority"
_DEFLATE_SUFFIX = ".z"
#: Magic bytes of compressed bodies (tor ``detect_compression_method``).
_ZLIB_MAGIC = b"\x78"
_GZIP_MAGIC = b"\x1f\x8b"
#: zlib's wbits for "zlib or gzip header, detected automatically".
_ZLIB_AUTO_WBITS = 32 + zlib.MAX_WBITS


# ------------------------------------------------------------------------------------------ errors


class DirectoryRequestError(Exception):
    """A directory request failed; the message names the source and the cause."""


class DirectoryConnectionError(DirectoryRequestError):
    """The link or the one-hop circuit failed, or BEGIN_DIR was refused."""


class DirectoryTimeoutError(DirectoryRequestError):
    """No complete answer within the request timeout."""


class DirectoryStatusError(DirectoryRequestError):
    """The server answered with a status other than 200."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ResponseTooLargeError(DirectoryRequestError):
    """The answer exceeded the size limit of its request."""


class ResponseParseError(DirectoryRequestError):
    """The answer is not an HTTP/1.x response."""


class ResponseDecodeError(DirectoryRequestError):
    """The body could not be decompressed (bad, truncated or unsupported encoding)."""


# ------------------------------------------------------------------------------------------ URLs


def consensus_url(compressed: bool = True) -> str:
    """The microdesc-flavoured consensus (dir-spec general-use-http-urls)."""
    return _CONSENSUS_PATH + (_DEFLATE_SUFFIX if compressed else "")


def key_certificates_url(keys: list[tuple[str, str]] | None = None, compressed: bool = True) -> str:
    """Authority key certificates: all of them, or ``fp-sk/<v3ident>-<signing key digest>+...``."""
    suffix = _DEFLATE_SUFFIX if compressed else ""
    if not keys:
        return _KEYS_ALL_PATH + suffix
    return _KEYS_FP_SK_PATH + "+".join(f"{ident}-{skd}" for ident, skd in sorted(keys)) + suffix


def bridge_descriptor_url(compressed: bool = True) -> str:
    """A relay's own server descriptor (dir-spec "/tor/server/authority"): how a client learns a bridge's
    keys from the bridge itself (tor bridges.c fetch_bridge_descriptors asks ``authority.z``)."""
    return _BRIDGE_DESCRIPTOR_PATH + (_DEFLATE_SUFFIX if compressed else "")


def microdescriptors_url(digests: list[str], compressed: bool = True) -> str:
    """``/tor/micro/d/<d1>-<d2>...``: unpadded base64 SHA-256 digests, sorted, at most 92."""
    if not digests:
        raise ValueError("a microdescriptor request needs at least one digest")
    if len(digests) > MAX_MICRODESCS_PER_REQUEST:
        raise ValueError(f"at most {MAX_MICRODESCS_PER_REQUEST} microdescriptors per request, "
                         f"not {len(digests)}")
    return _MICRODESC_PATH + "-".join(sorted(d.rstrip("=") for d in digests)) + (
        _DEFLATE_SUFFIX if compressed else "")


# ------------------------------------------------------------------------------------------ sans-IO


def encode_request(path: str, if_modified_since: float | None = None) -> bytes:
    """``GET path HTTP/1.0`` as C tor sends it (``directory_send_command``)."""
    if not path.startswith("/") or any(c in path for c in " \r\n"):
        raise ValueError(f"bad directory request path {path!r}")
    lines = [f"GET {path} HTTP/1.0"]
    if if_modified_since is not None:
        lines.append(f"If-Modified-Since: {email.utils.formatdate(if_modified_since, usegmt=True)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


@dataclass(frozen=True, slots=True)
class DirectoryResponse:
    """An HTTP answer with its body decoded (inflated if it was compressed)."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes
    #: Who answered, e.g. ``$FP~auth0 at 127.0.0.1:7000 (BEGIN_DIR)``.
    source: str = ""
    #: Bytes received on the wire (headers and body, before inflating).
    wire_bytes: int = 0


class HTTPResponseReader:
    """Collects the bytes of one HTTP/1.0 response, bounded.

    The status line and headers are checked as soon as they are complete, so that an answer
    that is not HTTP is cut off at once; the body is taken (and inflated) once the connection
    has closed. Every malformed answer raises a :class:`DirectoryRequestError` subclass whose
    message says what is wrong, never another exception.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self.received = 0
        self._head: _ResponseHead | None = None
        #: Where the search for the end of the head resumes.
        self._scanned = 0

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.max_size + MAX_HEADER_SIZE:
            raise ResponseTooLargeError(
                f"response exceeds {self.max_size + MAX_HEADER_SIZE} bytes (limit {self.max_size} "
                f"for the body)")
        self._buffer += data
        if self._head is None:
            self._read_head()

    def _read_head(self) -> None:
        # A separator (up to 3 bytes) may straddle the previous feed.
        found = _end_of_head(self._buffer, max(0, self._scanned - 2))
        self._scanned = len(self._buffer)
        if found is None:
            if len(self._buffer) > MAX_HEADER_SIZE:
                raise ResponseParseError(f"no end of headers in the first {MAX_HEADER_SIZE} bytes")
            return
        head_end, body_start = found
        if head_end > MAX_HEADER_SIZE:
            raise ResponseParseError(f"headers longer than {MAX_HEADER_SIZE} bytes")
        self._head = _parse_head(bytes(self._buffer[:head_end]), body_start)
        length = self._head.content_length
        if length is not None and length > self.max_size:
            raise ResponseTooLargeError(f"Content-Length {length} exceeds the limit of {self.max_size} bytes")

    def finish(self, path: str, source: str = "") -> DirectoryResponse:
        """Parse what arrived once the connection has closed."""
        head = self._head
        if head is None:
            raise ResponseParseError(f"connection closed before the end of the headers "
                                     f"({len(self._buffer)} bytes received)")
        body = bytes(self._buffer[head.body_start:])
        if head.content_length is not None:
            if len(body) < head.content_length:
                raise ResponseParseError(f"body truncated: {len(body)} of the {head.content_length} bytes "
                                         f"announced by Content-Length")
            body = body[:head.content_length]
        if len(body) > self.max_size:
            raise ResponseTooLargeError(f"body of {len(body)} bytes exceeds the limit of {self.max_size}")
        headers = head.headers
        decoded = decode_body(body, headers.get("content-encoding"), path, self.max_size) \
            if head.status == 200 else body
        return DirectoryResponse(head.status, head.reason, headers, decoded, source, len(self._buffer))


#: RFC 9112 "Status Line": ``HTTP/1.x`` SP three digits [SP reason]; tor ``parse_http_response``
#: accepts codes 100-599 only. ASCII throughout: a character range in a str pattern is a range of
#: code points, so no other script's digits match.
_STATUS_LINE_RE = re.compile(r"HTTP/1\.[0-9] ([0-9]{3})(?: ([\t\x20-\x7e]*))?\Z")
MIN_STATUS = 100
MAX_STATUS = 599
#: RFC 9110 "Tokens" (a field name) and visible ASCII with blanks (a field value).
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_HEADER_VALUE_RE = re.compile(r"[\t\x20-\x7e]*\Z")
#: Headers that must not disagree with themselves.
_SINGLE_HEADERS = frozenset({"content-length", "content-encoding", "transfer-encoding"})


@dataclass(frozen=True, slots=True)
class _ResponseHead:
    status: int
    reason: str
    headers: Mapping[str, str]
    #: Offset of the body in the received bytes.
    body_start: int
    content_length: int | None


def _end_of_head(buffer: bytearray, start: int) -> tuple[int, int] | None:
    """(end of the last header line, start of the body) at the first empty line, CRLF or bare LF."""
    ends = [(index, index + len(separator)) for separator in (b"\n\n", b"\n\r\n")
            if (index := buffer.find(separator, start)) >= 0]
    return min(ends) if ends else None


def _parse_head(raw: bytes, body_start: int) -> _ResponseHead:
    """The status line and headers, in strict ASCII (an HTTP head has no other characters)."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ResponseParseError(f"non-ASCII byte in the status line or headers: {raw[:80]!r}") from None
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    match = _STATUS_LINE_RE.match(lines[0])
    status = int(match.group(1)) if match is not None else 0
    if not MIN_STATUS <= status <= MAX_STATUS:
        raise ResponseParseError(f"bad HTTP status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        value = value.strip(" \t")
        if not colon or not _HEADER_NAME_RE.match(name) or not _HEADER_VALUE_RE.match(value):
            raise ResponseParseError(f"bad header line {line[:80]!r}")
        name = name.lower()
        if name in headers and name in _SINGLE_HEADERS and headers[name] != value:
            raise ResponseParseError(f"conflicting {name} headers: {headers[name]!r} and {value!r}")
        headers[name] = value
    transfer_encoding = headers.get("transfer-encoding", "identity").lower()
    if transfer_encoding != "identity":
        # RFC 9112 "Transfer-Encoding": never sent in answer to an HTTP/1.0 request (tor never chunks).
        raise ResponseParseError(f"unexpected Transfer-Encoding {transfer_encoding!r} in an HTTP/1.0 answer")
    length_text = headers.get("content-length")
    content_length = None if length_text is None else parse_decimal(length_text, ResponseParseError,
                                                                    "Content-Length", 0)
    return _ResponseHead(status, match.group(2) or "", MappingProxyType(headers), body_start, content_length)


def decode_body(body: bytes, content_encoding: str | None, path: str, max_size: int) -> bytes:
    """Inflate a deflate/gzip body (as announced, or as detected for a ``.z`` URL), bounded.

    C tor sends ``Content-Encoding: deflate`` for ``.z`` URLs; older servers
    sent none, so the body's magic bytes decide when the header is silent
    (tor ``detect_compression_method``).
    """
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("deflate", "gzip", "x-gzip"):
        compressed = True
    elif encoding in ("", "identity"):
        # A plain-text document starts with a keyword, never with 0x78 ("x") at a ``.z`` URL
        # nor with the gzip magic.
        compressed = (path.endswith(_DEFLATE_SUFFIX) and body[:1] == _ZLIB_MAGIC) or body[:2] == _GZIP_MAGIC
    else:
        raise ResponseDecodeError(f"unsupported Content-Encoding {content_encoding!r} "
                                  f"(only deflate was asked for)")
    if not compressed:
        return body
    inflater = zlib.decompressobj(_ZLIB_AUTO_WBITS)
    try:
        data = inflater.decompress(body, max_size + 1)
        if len(data) > max_size or inflater.unconsumed_tail:
            raise ResponseTooLargeError(f"inflated body exceeds the limit of {max_size} bytes")
        data += inflater.flush()
    except zlib.error as exc:
        raise ResponseDecodeError(f"bad compressed body: {exc}") from None
    if not inflater.eof:
        raise ResponseDecodeError("compressed body is truncated")
    if len(data) > max_size:
        raise ResponseTooLargeError(f"inflated body exceeds the limit of {max_size} bytes")
    return data


# ------------------------------------------------------------------------------------------ Twisted


class _BeginDirSink:
    """Stream sink for one BEGIN_DIR request: send it when connected, read until END."""

    def __init__(self, request: bytes, reader: HTTPResponseReader,
                 done: Callable[[Exception | None], None]) -> None:
        self.request = request
        self.reader = reader
        self.done = done
        self.connected = False
        self.failure: Exception | None = None

    def stream_connected(self, stream: Stream) -> None:
        self.connected = True
        stream.write(self.request)

    def stream_data(self, stream: Stream, data: bytes) -> None:
        if self.failure is not None:
            return
        try:
            self.reader.feed(data)
        except Exception as exc:  # noqa: BLE001 - a bad answer ends this stream, never the circuit or link
            self.failure = _request_error(exc)
            stream.close(EndReason.RESOURCELIMIT if isinstance(exc, ResponseTooLargeError) else EndReason.MISC)

    def stream_writable(self, stream: Stream, writable: bool) -> None:
        pass

    def stream_resolved(self, stream: Stream, answers) -> None:  # pragma: no cover - not a RESOLVE
        pass

    def stream_ended(self, stream: Stream, end: StreamEnd) -> None:
        if self.failure is not None:
            self.done(self.failure)
        elif end.before_connected:
            self.done(DirectoryConnectionError(f"BEGIN_DIR refused: {end}"))
        elif end.remote and end.reason == EndReason.DONE:
            self.done(None)
        else:
            self.done(DirectoryConnectionError(f"directory stream ended before the answer was complete: "
                                               f"{end}"))


class DirectoryClient:
    """Runs directory requests over BEGIN_DIR streams."""

    def __init__(self, reactor=None, timeout: float = DEFAULT_REQUEST_TIMEOUT) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.reactor = reactor
        self.timeout = timeout

    def fetch_over_circuit(self, circuit, path: str, max_size: int, *, relay: RelayTarget | None = None,
                           if_modified_since: float | None = None) -> defer.Deferred:
        """GET ``path`` over a new BEGIN_DIR stream on ``circuit`` (one hop to a directory cache); fires
        with a 200 :class:`DirectoryResponse`.

        Fails with a :class:`DirectoryRequestError` subclass (a non-200 status is
        :class:`DirectoryStatusError`, whose ``status`` 304 means "not modified").
        """
        relay = relay or circuit.path[-1]
        source = f"{relay.describe()} at {relay.address}:{relay.or_port} (BEGIN_DIR)"

        def abort(error: Exception | None) -> None:
            if error is not None:
                sink.failure = error
            stream.close(EndReason.MISC if error is None else EndReason.TIMEOUT)

        request = _Request(self.reactor, self.timeout, HTTPResponseReader(max_size), path, source, abort)
        sink = _BeginDirSink(encode_request(path, if_modified_since), request.reader, request.done)
        stream = Stream(sink, relay.address, relay.or_port, kind=StreamKind.DIRECTORY)
        try:
            stream.attach(circuit)
        except Exception as exc:  # a closed circuit, no free stream id
            request.done(DirectoryConnectionError(f"{source}: cannot open a BEGIN_DIR stream: {exc}"))
        return request.result


class _Request:
    """One directory request in flight, whatever carries it: the Deferred it answers, its timeout, and
    cancelling it. `abort(error)` tears the transport down: `error` is the timeout, or None when the
    caller cancelled."""

    def __init__(self, reactor, timeout: float, reader: HTTPResponseReader, path: str, source: str,
                 abort: Callable[[Exception | None], None]) -> None:
        self.reader = reader
        self.path = path
        self.source = source
        self.timeout = timeout
        self._abort = abort
        self._cancelled = False
        self._timeout_error: Exception | None = None
        self.result: defer.Deferred = defer.Deferred(canceller=self._cancel)
        self._timer = reactor.callLater(timeout, self._timed_out)

    def _stop_timer(self) -> None:
        if self._timer.active():
            self._timer.cancel()

    def _tear_down(self, error: Exception | None) -> None:
        try:
            self._abort(error)
        except Exception:  # noqa: BLE001 - the request ends whatever its transport does
            log.exception("Closing the directory request to %s failed", self.source)

    def _cancel(self, _: defer.Deferred) -> None:
        self._cancelled = True
        self._stop_timer()
        self._tear_down(None)

    def _timed_out(self) -> None:
        # The transport is torn down first (an END reaches the relay before anyone hears of the timeout);
        # whatever failure that reports, the request failed by timing out.
        self._timeout_error = DirectoryTimeoutError(f"{self.source}: no complete answer to {self.path} "
                                                    f"within {self.timeout:.0f} s")
        self._tear_down(self._timeout_error)
        self.done(self._timeout_error)

    def done(self, failure: Exception | None) -> None:
        """The transport finished (failure None: the reader holds the whole answer) or failed.

        The request's Deferred fires here, always: with the answer, or with a
        :class:`DirectoryRequestError` whatever went wrong in reading it.
        """
        if self.result.called or self._cancelled:
            return
        self._stop_timer()
        outcome = self._outcome(self._timeout_error or failure)
        if isinstance(outcome, DirectoryResponse):
            self.result.callback(outcome)
        else:
            self.result.errback(outcome)

    def _outcome(self, failure: Exception | None) -> DirectoryResponse | DirectoryRequestError:
        if failure is None:
            try:
                response = self.reader.finish(self.path, self.source)
            except Exception as exc:  # noqa: BLE001 - whatever the answer holds, this request fails cleanly
                failure = _request_error(exc)
            else:
                if response.status == 200:
                    return response
                return DirectoryStatusError(
                    f"{self.source}: HTTP {response.status} {response.reason} for {self.path}", response.status)
        error = _request_error(failure)
        message = str(error)
        return error if message.startswith(self.source) else type(error)(f"{self.source}: {message}")


def _request_error(exc: Exception) -> DirectoryRequestError:
    """``exc`` as a request failure: the reader's own errors as they are, anything else (a bug in
    reading a hostile answer) as a :class:`ResponseParseError`, logged with its traceback."""
    if isinstance(exc, DirectoryRequestError):
        return exc
    log.error("Reading a directory answer raised %s (a bug); the request fails", type(exc).__name__,
              exc_info=exc)
    return ResponseParseError(f"unreadable answer ({type(exc).__name__}: {exc})")
