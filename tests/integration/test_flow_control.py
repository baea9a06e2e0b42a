"""XON/XOFF stream flow control (proposal 324) with the private network's 0.4.9 exits, which negotiate
congestion control: a client that stops reading makes oppy send XOFF, memory stays bounded, and once the
client reads again the XON lets the download finish byte-exact. oppy's info log says each XOFF and XON it sends
(tor logs the same at info), and the control port reports them as STREAM events (XOFF_SENT, XON_SENT) as tor
does. On a network with congestion control off (cc_alg=0, see test_congestion_control) the same download runs
on the fixed windows: no XOFF, memory as bounded. (50 MB down and 20 MB up byte-exact: test_congestion_control.)"""

from __future__ import annotations

import hashlib
import socket
import threading
import time

import pytest
from stem.control import Controller, EventType

from tests.integration.test_congestion_control import network_cc_alg
from tests.support.network import TestNetwork
from tests.support.oppy_process import OppyProcess
from tests.support.relays import fetch
from tests.support.socks_client import socks5_request

HUNDRED_MB = 100 * 1000 * 1000


@pytest.fixture(scope="module")
def oppy(network: TestNetwork, tmp_path_factory):
    process = OppyProcess(network, tmp_path_factory.mktemp("oppy-flow") / "data", control_port=True).wait_ready()
    yield process
    assert process.stop() == 0


def expected_sha256(network: TestNetwork, length: int) -> str:
    return fetch(network.url(f"/sha256/{length}")).decode().strip()


def read_headers(sock: socket.socket) -> bytes:
    """The HTTP response up to the blank line; returns what came after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "the connection closed in the HTTP headers"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0]
    return rest


def read_to_the_end(sock: socket.socket, digest, received: int, length: int) -> int:
    """Read the rest of a `length`-byte download at full speed into `digest`, then close; returns how many
    bytes came in all."""
    sock.settimeout(60)
    while received < length:
        chunk = sock.recv(1 << 20)
        assert chunk, f"the download ended after {received} bytes"
        digest.update(chunk)
        received += len(chunk)
    sock.close()
    return received


def test_a_slow_reader_gets_xoff_memory_stays_bounded_then_xon_finishes_byte_exact(network, oppy):
    congestion_control = network_cc_alg(network) != 0
    controller = Controller.from_port(port=oppy.control_port)
    controller.authenticate()
    statuses: list[tuple[str, str]] = []
    controller.add_event_listener(lambda event: statuses.append((event.id, event.status)), EventType.STREAM)
    before = oppy.rss_kib()
    xoffs_before = oppy.info_log.count("Sending XOFF")
    code, sock = socks5_request(oppy.socks_port, "127.0.0.1", network.http_port)
    assert code == 0
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(f"GET /bytes/{HUNDRED_MB} HTTP/1.0\r\n\r\n".encode())
    digest = hashlib.sha256()
    body = read_headers(sock)
    digest.update(body)
    received = len(body)
    peak = before
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # about 1 MB/s, far slower than the circuit
        chunk = sock.recv(64 * 1024)
        digest.update(chunk)
        received += len(chunk)
        time.sleep(0.06)
        peak = max(peak, oppy.rss_kib())
    xoffs = oppy.info_log.count("Sending XOFF") - xoffs_before
    if congestion_control:
        assert xoffs > 0, "no XOFF while the client did not read"
    else:
        assert xoffs == 0, "XOFF on a circuit with fixed windows"
    assert (peak - before) < 30 * 1024, f"oppy grew by {(peak - before) / 1024:.1f} MiB"
    # Reading at full speed again: the XON lets the exit go on, to the last byte.
    assert read_to_the_end(sock, digest, received, HUNDRED_MB) == HUNDRED_MB
    assert digest.hexdigest() == expected_sha256(network, HUNDRED_MB)
    time.sleep(0.5)
    controller.close()
    (stream_id,) = {number for number, status in statuses if status == "SUCCEEDED"}
    mine = [status for number, status in statuses if number == stream_id]
    if congestion_control:
        assert "Sending XON" in oppy.info_log
        assert "XOFF_SENT" in mine and "XON_SENT" in mine
        assert mine.index("XOFF_SENT") < mine.index("XON_SENT")
    else:
        assert not {"XOFF_SENT", "XON_SENT"} & set(mine)


def test_the_exits_xoff_holds_an_upload_to_a_server_that_does_not_read_and_its_xon_resumes_it(network, oppy):
    """A server that does not read: the exit's buffer toward it fills, its XOFF stops oppy's packaging (the
    SOCKS client is stopped in turn, oppy's memory stays bounded), and its XON once the server reads lets the
    upload finish byte-exact."""
    congestion_control = network_cc_alg(network) != 0
    body = hashlib.shake_256(b"an upload the server does not read at first").digest(40 * 1000 * 1000)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    controller = Controller.from_port(port=oppy.control_port)
    controller.authenticate()
    statuses: list[tuple[str, str]] = []
    controller.add_event_listener(lambda event: statuses.append((event.id, event.status)), EventType.STREAM)
    code, client = socks5_request(oppy.socks_port, "127.0.0.1", server.getsockname()[1])
    assert code == 0
    sender = threading.Thread(target=client.sendall, args=(body,), daemon=True)
    before = oppy.rss_kib()
    sender.start()
    connection, _ = server.accept()
    peak = before
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the server reads nothing
        time.sleep(0.2)
        peak = max(peak, oppy.rss_kib())
    assert sender.is_alive(), "the whole upload was taken while the server read nothing"
    assert (peak - before) < 30 * 1024, f"oppy grew by {(peak - before) / 1024:.1f} MiB"
    digest = hashlib.sha256()
    received = 0
    connection.settimeout(60)
    while received < len(body):
        chunk = connection.recv(1 << 20)
        assert chunk, f"the upload ended after {received} bytes"
        digest.update(chunk)
        received += len(chunk)
    sender.join(timeout=60)
    client.close()
    connection.close()
    server.close()
    assert digest.hexdigest() == hashlib.sha256(body).hexdigest()
    time.sleep(0.5)
    controller.close()
    (stream_id,) = {number for number, status in statuses if status == "SUCCEEDED"}
    mine = [status for number, status in statuses if number == stream_id]
    if congestion_control:
        assert "XOFF_RECV" in mine and "XON_RECV" in mine[mine.index("XOFF_RECV"):]
        assert "Got XOFF" in oppy.info_log
    else:
        assert not {"XOFF_RECV", "XON_RECV"} & set(mine)
