"""Directory requests: request encoding, bounded response reading, deflate, BEGIN_DIR streams."""

from __future__ import annotations

import gzip
import zlib

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from oppy.cell.commands import EndReason, RelayCommand
from oppy.circuit.circuit import CircuitState
from oppy.directory import client as client_module
from oppy.directory.client import (
    MAX_MICRODESCS_PER_REQUEST,
    DirectoryClient,
    DirectoryConnectionError,
    DirectoryStatusError,
    DirectoryTimeoutError,
    HTTPResponseReader,
    ResponseDecodeError,
    ResponseParseError,
    ResponseTooLargeError,
    consensus_url,
    decode_body,
    encode_request,
    key_certificates_url,
    microdescriptors_url,
)
from oppy.netdoc.relay import RelayTarget
from tests.unit.dirsim import CannedSite, OneHopCache

CONSENSUS = b"network-status-version 3 microdesc\nvote-status consensus\n" + b"r x\n" * 1000


# ------------------------------------------------------------------------------------------ sans-IO


def test_request_is_tors_http_1_0_get():
    assert encode_request("/tor/keys/all.z") == b"GET /tor/keys/all.z HTTP/1.0\r\n\r\n"
    assert encode_request(consensus_url(), if_modified_since=0) == (
        b"GET /tor/status-vote/current/consensus-microdesc.z HTTP/1.0\r\n"
        b"If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n\r\n")
    for bad in ("tor/keys", "/a b", "/a\r\nHost: x"):
        with pytest.raises(ValueError):
            encode_request(bad)


def test_urls():
    assert consensus_url(compressed=False) == "/tor/status-vote/current/consensus-microdesc"
    assert key_certificates_url() == "/tor/keys/all.z"
    assert key_certificates_url([("B" * 40, "2" * 40), ("A" * 40, "1" * 40)]) == \
        f"/tor/keys/fp-sk/{'A' * 40}-{'1' * 40}+{'B' * 40}-{'2' * 40}.z"
    assert microdescriptors_url(["b=", "a"]) == "/tor/micro/d/a-b.z"
    assert microdescriptors_url(["x"] * MAX_MICRODESCS_PER_REQUEST, compressed=False).count("-") == 91
    with pytest.raises(ValueError):
        microdescriptors_url(["x"] * (MAX_MICRODESCS_PER_REQUEST + 1))
    with pytest.raises(ValueError):
        microdescriptors_url([])


def read(raw: bytes, path: str = "/tor/keys/all", max_size: int = 1 << 20, chunk: int = 7):
    reader = HTTPResponseReader(max_size)
    for start in range(0, len(raw), chunk):
        reader.feed(raw[start:start + chunk])
    return reader.finish(path, "test")


def test_reader_parses_status_headers_and_body_in_any_split():
    raw = b"HTTP/1.0 200 OK\r\nDate: x\r\nContent-Type: text/plain\r\n\r\n" + CONSENSUS
    for chunk in (1, 13, len(raw)):
        response = read(raw, chunk=chunk)
        assert (response.status, response.reason) == (200, "OK")
        assert response.headers["content-type"] == "text/plain"
        assert response.body == CONSENSUS
        assert response.wire_bytes == len(raw)


def test_reader_keeps_error_bodies_raw_and_tolerates_bare_newlines():
    response = read(b"HTTP/1.0 503 Directory busy, try again later\n\nbusy")
    assert (response.status, response.reason, response.body) == (503, "Directory busy, try again later", b"busy")


@pytest.mark.parametrize("raw", [
    b"", b"HTTP/1.0 200 OK\r\nDate: x\r\n", b"HTTP/2 200 OK\r\n\r\n", b"HTTP/1.0 2000 OK\r\n\r\n",
    b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.0 200 OK\r\nno colon here\r\n\r\n",
])
def test_reader_rejects_what_is_not_http(raw):
    with pytest.raises(ResponseParseError):
        read(raw)


#: Status lines and headers a hostile source may send. Python's int() and str.isdigit() accept other
#: scripts' digits; "\xb2" (superscript two in latin-1) passes isdigit() and then fails int().
HOSTILE_HEADS = [
    b"HTTP/1.0 \xb2\xb2\xb2 OK",
    "HTTP/1.0 \uff12\uff10\uff10 OK".encode(),              # fullwidth digits, UTF-8
    "HTTP/1.0 \u0662\u0660\u0660 OK".encode(),              # Arabic-Indic digits, UTF-8
    b"HTTP/1.0 000 Nothing", b"HTTP/1.0 999 Beyond", b"HTTP/1.0 +20 OK", b"HTTP/1.0  200 OK",
    b"HTTP/1.0 200\xa0OK", b"HTTP/1.x 200 OK", b"HTTP/1.0 200 OK\rX",
    b"HTTP/1.0 200 OK\r\nContent-Length: \xd9\xa1\xd9\xa2",  # Arabic-Indic digits
    b"HTTP/1.0 200 OK\r\nContent-Length: " + b"9" * 5000,     # beyond int()'s 4300 digits
    b"HTTP/1.0 200 OK\r\nContent-Length: -1",
    b"HTTP/1.0 200 OK\r\nContent-Length: 1_0",
    b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nContent-Length: 6",
    b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked",
    b"HTTP/1.0 200 OK\r\nX-Your-Address-Is: \xff",
    b"HTTP/1.0 200 OK\r\n folded: header",
    b"HTTP/1.0 200 OK\r\nBad Name: x",
]


@pytest.mark.parametrize("head", HOSTILE_HEADS)
@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
def test_reader_rejects_hostile_heads_with_its_own_error(head, chunk):
    with pytest.raises(ResponseParseError):
        read(head + b"\r\n\r\n" + b"0123456789", chunk=chunk)


def test_a_bad_head_fails_as_soon_as_it_arrives():
    reader = HTTPResponseReader(max_size=1 << 20)
    reader.feed(b"HTTP/1.0 \xb2\xb2\xb2 OK\r")
    with pytest.raises(ResponseParseError, match="non-ASCII byte in the status line"):
        reader.feed(b"\n\r\n")
    reader = HTTPResponseReader(max_size=1 << 20)
    with pytest.raises(ResponseParseError, match="no end of headers"):
        reader.feed(b"HTTP/1.0 200 OK\r\n" + b"X: y\r\n" * 20000)


def test_content_length_is_honoured():
    head = b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\n"
    assert read(head + b"0123456789").body == b"0123456789"
    assert read(head + b"0123456789 trailing").body == b"0123456789"
    with pytest.raises(ResponseParseError, match="truncated: 4 of the 10 bytes"):
        read(head + b"0123")
    reader = HTTPResponseReader(max_size=1000)
    with pytest.raises(ResponseTooLargeError, match="Content-Length 1001"):
        reader.feed(b"HTTP/1.0 200 OK\r\nContent-Length: 1001\r\n\r\n")


def test_the_first_empty_line_ends_the_head_whatever_its_line_ends():
    assert read(b"HTTP/1.0 200 OK\nA: b\n\r\nbody\r\n\r\nmore").body == b"body\r\n\r\nmore"
    assert read(b"HTTP/1.0 200 OK\r\nA: b\r\n\r\nbody\n\nmore", chunk=1).body == b"body\n\nmore"


def test_reader_cuts_off_an_oversized_response_while_it_arrives():
    reader = HTTPResponseReader(max_size=1000)
    reader.feed(b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 1000)
    with pytest.raises(ResponseTooLargeError):
        reader.feed(b"x" * 70000)
    with pytest.raises(ResponseTooLargeError):
        read(b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 1001, max_size=1000)


def test_deflate_bodies_are_inflated_with_or_without_the_header():
    packed = zlib.compress(CONSENSUS)
    with_header = read(b"HTTP/1.0 200 OK\r\nContent-Encoding: deflate\r\n\r\n" + packed, "/x.z")
    sniffed = read(b"HTTP/1.0 200 OK\r\n\r\n" + packed, "/x.z")
    gzipped = read(b"HTTP/1.0 200 OK\r\nContent-Encoding: gzip\r\n\r\n" + gzip.compress(CONSENSUS), "/x")
    plain = read(b"HTTP/1.0 200 OK\r\nContent-Encoding: identity\r\n\r\n" + CONSENSUS, "/x.z")
    assert with_header.body == sniffed.body == gzipped.body == plain.body == CONSENSUS


def test_bad_truncated_unsupported_and_oversized_compression():
    packed = zlib.compress(CONSENSUS)
    with pytest.raises(ResponseDecodeError, match="truncated"):
        decode_body(packed[:-10], "deflate", "/x.z", 1 << 20)
    with pytest.raises(ResponseDecodeError, match="bad compressed"):
        decode_body(b"\x78" + b"\x00" * 30, "deflate", "/x.z", 1 << 20)
    with pytest.raises(ResponseDecodeError, match="unsupported"):
        decode_body(b"(\xb5/\xfd", "x-zstd", "/x.z", 1 << 20)
    bomb = zlib.compress(b"\0" * (8 << 20))
    assert len(bomb) < 10000
    with pytest.raises(ResponseTooLargeError):
        decode_body(bomb, "deflate", "/x.z", 1 << 20)


# ------------------------------------------------------------------------------------------ BEGIN_DIR


class FakeCircuit:
    """Just enough of a Circuit for one stream: records what the stream sends."""

    def __init__(self):
        self.path = [RelayTarget("relay0", b"\x01" * 20, "127.0.0.1", 9001, b"\x02" * 32)]
        self.sent = []
        self.data = b""
        self.streams = {}
        self.package_room = 1000
        self.congestion_control = None  # fixed windows

    def allocate_stream_id(self):
        return 7

    def attach_stream(self, stream):
        self.streams[stream.stream_id] = stream

    def detach_stream(self, stream_id):
        self.streams.pop(stream_id, None)

    def send_relay(self, command, stream_id, body):
        self.sent.append((command, stream_id, body))

    def send_data_many(self, stream_id, chunks, urgent=False):
        self.data += b"".join(chunks)

    def end_stream(self, stream_id, reason=EndReason.MISC):
        self.sent.append((RelayCommand.END, stream_id, bytes([reason])))
        self.streams.pop(stream_id, None)

    def answer(self, *cells):
        stream = self.streams[7]
        for command, body in cells:
            if command == RelayCommand.DATA:
                stream.data_cells_received([body])
            else:
                stream.relay_received(command, body)


def begin_dir(circuit, **options):
    client = DirectoryClient(reactor, timeout=options.pop("timeout", 30))
    return client.fetch_over_circuit(circuit, "/tor/micro/d/a.z", options.pop("max_size", 1 << 20))


def outcome(deferred):
    results = []
    deferred.addBoth(results.append)
    assert results, "the request has not finished"
    return results[0]


def test_begin_dir_sends_the_request_when_connected_and_reads_until_end_done():
    circuit = FakeCircuit()
    request = begin_dir(circuit)
    assert circuit.sent == [(RelayCommand.BEGIN_DIR, 7, b"")]
    answer = b"HTTP/1.0 200 OK\r\nContent-Encoding: deflate\r\n\r\n" + zlib.compress(CONSENSUS)
    circuit.answer((RelayCommand.CONNECTED, b""))
    assert circuit.data == encode_request("/tor/micro/d/a.z")
    assert not request.called
    circuit.answer(*[(RelayCommand.DATA, answer[i:i + 498]) for i in range(0, len(answer), 498)])
    circuit.answer((RelayCommand.END, bytes([EndReason.DONE])))
    response = outcome(request)
    assert response.body == CONSENSUS and "(BEGIN_DIR)" in response.source


def test_begin_dir_refused_or_cut_short_fails():
    circuit = FakeCircuit()
    request = begin_dir(circuit)
    circuit.answer((RelayCommand.END, bytes([EndReason.NOTDIRECTORY])))
    failure = outcome(request).value
    assert isinstance(failure, DirectoryConnectionError) and "refused" in str(failure)
    circuit = FakeCircuit()
    request = begin_dir(circuit)
    circuit.answer((RelayCommand.CONNECTED, b""), (RelayCommand.DATA, b"HTTP/1.0 200 OK\r\n\r\nab"),
                   (RelayCommand.END, bytes([EndReason.MISC])))
    assert isinstance(outcome(request).value, DirectoryConnectionError)


def test_begin_dir_too_large_closes_the_stream():
    circuit = FakeCircuit()
    request = begin_dir(circuit, max_size=100)
    circuit.answer((RelayCommand.CONNECTED, b""), *[(RelayCommand.DATA, b"x" * 498)] * 200)
    assert isinstance(outcome(request).value, ResponseTooLargeError)
    assert circuit.sent[-1] == (RelayCommand.END, 7, bytes([EndReason.RESOURCELIMIT]))


@pytest_twisted.inlineCallbacks
def test_begin_dir_times_out_and_cancels():
    circuit = FakeCircuit()
    with pytest.raises(DirectoryTimeoutError):
        yield begin_dir(circuit, timeout=0.05)
    assert circuit.sent[-1][0] == RelayCommand.END
    circuit = FakeCircuit()
    request = begin_dir(circuit)
    request.cancel()
    assert isinstance(outcome(request).value, defer.CancelledError)
    assert circuit.sent[-1][0] == RelayCommand.END


@pytest.mark.parametrize("answer", [
    b"HTTP/1.0 \xb2\xb2\xb2 OK\r\n\r\n" + CONSENSUS,
    b"HTTP/1.0 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n" + CONSENSUS,
    b"HTTP/1.0 200 OK\r\nContent-Encoding: deflate\r\n\r\n" + zlib.compress(CONSENSUS)[:-20],
])
def test_a_hostile_begin_dir_answer_ends_its_stream_not_the_circuit(answer):
    """Over BEGIN_DIR the reader's error used to escape into the circuit, which tore the link down."""
    site = CannedSite(answer)
    cache = OneHopCache(site)
    client = DirectoryClient(task.Clock())
    request = client.fetch_over_circuit(cache.circuit, "/tor/micro/d/a.z", 1 << 20)
    cache.pump()
    assert isinstance(outcome(request).value, (ResponseParseError, ResponseDecodeError))
    assert cache.circuit.state is CircuitState.OPEN and cache.channel.destroyed == []
    assert cache.circuit.streams == {}
    site.raw = b"HTTP/1.0 200 OK\r\n\r\n" + CONSENSUS
    again = client.fetch_over_circuit(cache.circuit, "/tor/micro/d/a.z", 1 << 20)
    cache.pump()
    assert outcome(again).body == CONSENSUS
    assert cache.circuit.state is CircuitState.OPEN


def test_begin_dir_status_errors_carry_the_status():
    cache = OneHopCache(CannedSite(b"HTTP/1.0 404 Not found\r\nContent-Length: 3\r\n\r\nno\n"))
    request = DirectoryClient(task.Clock()).fetch_over_circuit(cache.circuit, "/tor/micro/d/x.z", 1000)
    cache.pump()
    failure = outcome(request).value
    assert isinstance(failure, DirectoryStatusError) and failure.status == 404
    assert str(failure).endswith("(BEGIN_DIR): HTTP 404 Not found for /tor/micro/d/x.z")


def test_a_reader_bug_fails_the_request_cleanly(monkeypatch, caplog):
    """Whatever the reader raises, the request ends with a DirectoryRequestError and is logged once."""
    def broken(*args):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(client_module, "decode_body", broken)
    cache = OneHopCache(CannedSite(b"HTTP/1.0 200 OK\r\n\r\n" + CONSENSUS))
    clock = task.Clock()
    request = DirectoryClient(clock).fetch_over_circuit(cache.circuit, "/x", 1 << 20)
    cache.pump()
    failure = outcome(request).value
    assert isinstance(failure, ResponseParseError) and "RuntimeError: simulated bug" in str(failure)
    assert [record.levelname for record in caplog.records] == ["ERROR"]
    assert clock.getDelayedCalls() == [] and cache.circuit.state is CircuitState.OPEN
