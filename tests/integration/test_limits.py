"""Resource limits of `oppy` the program, on the private network: MaxMemInQueues with clients that stop
reading, and MaxSocksConnections. A limit reached costs the offender its circuit (or a new connection), with
one log line, and disturbs nobody else.

MaxMemInQueues is set to 3 MB here: tor's minimum is 256 MB, which oppy keeps on a TestingTorNetwork
only (oppy.circuit.memory.max_mem_in_queues), so that a test can reach it with a few stalled downloads.
"""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import threading
import time

import pytest
from stem.control import Controller

from tests.integration.test_conflux import LINKED, wait_for
from tests.support.network import TestNetwork
from tests.support.oppy_process import OppyProcess, free_port
from tests.support.relays import fetch
from tests.support.listeners import hung_up_on
from tests.support.socks_client import SOCKS5_NO_AUTH_GREETING, socks5_greeting, socks5_request

MAX_SOCKS_CONNECTIONS = 40
OOM_LINE = re.compile(r"\[notice\] We're low on memory .* closing circuit 0x[0-9a-f]+, which held (\d+) bytes "
                      r"in (\d+) of its (\d+) stream\(s\)")
SMALL_RECEIVE_BUFFER = 4096
# A stalled stream holds what the exit sent that the transport did not take (the kernel takes some 2 MB
# first): with fixed windows at most one stream window (500 cells, 249 KB), 50 to 250 KB here; with congestion
# control (XON/XOFF) cc_xoff_client (500 cells, 249 KB) and what was in flight when the exit heard the XOFF,
# 250 to 290 KB here. A normal download over a conflux set holds its out-of-order queue too, up to some
# 700 KB here while one leg runs ahead of the other: freeing the offender must leave room for that swing, or
# the limit is reached again at once. The offender's four streams (about 1 MB) cannot reach the limit alone,
# and once stalled they hold more than the 10% (plus one read) the out-of-memory handler frees and more than
# that swing; the test adds slow readers until the queues reach the limit.
MAX_MEM_IN_QUEUES = 3 * 1024 * 1024
OFFENDER_STREAMS = 4
MAX_SLOW_READERS = 30


@pytest.fixture(scope="module")
def oppy(network: TestNetwork, tmp_path_factory):
    control_port = free_port()
    process = OppyProcess(network, tmp_path_factory.mktemp("oppy-limits") / "data",
                          extra_lines=[f"MaxMemInQueues {MAX_MEM_IN_QUEUES // 1024} KB",
                                       f"MaxSocksConnections {MAX_SOCKS_CONNECTIONS}",
                                       f"ControlPort 127.0.0.1:{control_port}"])
    process.control_port = control_port
    process.wait_ready()
    # Conflux is on (the default): once a set is linked, the offender's streams share it rather than one
    # going to a single circuit built while the sets were still linking.
    wait_for(lambda: LINKED.search(process.info_log))
    yield process
    assert process.stop() == 0


def expected_sha256(network: TestNetwork, length: int) -> str:
    return fetch(network.url(f"/sha256/{length}")).decode().strip()


def start_download(oppy: OppyProcess, network: TestNetwork, length: int, user: str) -> socket.socket:
    """A GET through oppy as SOCKS user `user` (one circuit per user), from a socket with a small receive
    buffer whose client reads nothing yet."""
    code, sock = socks5_request(oppy.socks_port, "127.0.0.1", network.http_port, credentials=(user.encode(), b"pw"),
                                receive_buffer=SMALL_RECEIVE_BUFFER)
    assert code == 0
    sock.sendall(f"GET /bytes/{length} HTTP/1.0\r\n\r\n".encode())
    return sock


def wait_until_oppy_reads_nothing_more(oppy: OppyProcess, timeout: float = 90) -> None:
    """Until oppy's links read less than 16 KB in a second (GETINFO traffic/read): the stalled streams have
    spent their windows."""
    with Controller.from_port(port=oppy.control_port) as controller:
        controller.authenticate()
        deadline = time.monotonic() + timeout
        last = int(controller.get_info("traffic/read"))
        while time.monotonic() < deadline:
            time.sleep(1)
            now = int(controller.get_info("traffic/read"))
            if now - last < 16 * 1024:
                return
            last = now
    raise AssertionError("oppy went on reading")


def read_all(sock: socket.socket) -> tuple[bytes, str]:
    """Everything the socket gives, and how it ended: "eof" or "reset"."""
    data = bytearray()
    sock.settimeout(60)
    try:
        while piece := sock.recv(1 << 20):
            data += piece
    except ConnectionResetError:
        return bytes(data), "reset"
    return bytes(data), "eof"


def http_body(raw: bytes) -> bytes:
    return raw.partition(b"\r\n\r\n")[2]


def test_max_socks_connections_refuses_the_next_client_with_one_line_and_serves_the_others(network, oppy):
    clients = [socks5_greeting(oppy.socks_port) for _ in range(MAX_SOCKS_CONNECTIONS)]
    try:
        assert all(hung_up_on(oppy.socks_port, SOCKS5_NO_AUTH_GREETING) for _ in range(3))
        oppy.wait_for_line("Refusing new SOCKS connections", timeout=10)
        time.sleep(0.5)  # any further line would have been read by now
        lines = [line for line in oppy.lines if "Refusing new SOCKS connections" in line]
        assert len(lines) == 1 and f"{MAX_SOCKS_CONNECTIONS} are open" in lines[0], lines
        # A client that was let in is served as ever: a request and its answer.
        client = clients[0]
        client.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + network.http_port.to_bytes(2, "big"))
        assert client.recv(10)[1] == 0
        client.sendall(b"GET / HTTP/1.0\r\n\r\n")
        answer, _ = read_all(client)
        assert answer.endswith(b"hello from the oppy test target\n")
        client.close()
        clients.pop(0)
        deadline = time.monotonic() + 10
        while True:  # the listener hears of the close a moment later
            try:
                clients.append(socks5_greeting(oppy.socks_port))
                break
            except (ConnectionError, AssertionError):
                assert time.monotonic() < deadline, "no client let in after one left"
                time.sleep(0.1)
    finally:
        for client in clients:
            client.close()


def curl_through(oppy: OppyProcess, user: str, url: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "60", "--socks5-hostname", f"127.0.0.1:{oppy.socks_port}",
                           "--proxy-user", f"{user}:pw", url], capture_output=True, timeout=90)


def test_past_max_mem_in_queues_the_oldest_offender_goes_and_normal_downloads_complete(network, oppy):
    slow_length, normal_length = 6_000_000, 10_000_000
    # The offender: downloads on one circuit (one SOCKS user) whose client never reads. Once they stalled,
    # its data is the oldest queued.
    offender = [start_download(oppy, network, 50_000_000, "offender") for _ in range(OFFENDER_STREAMS)]
    wait_until_oppy_reads_nothing_more(oppy)

    def out_of_memory() -> bool:
        return any(OOM_LINE.search(line) for line in oppy.lines)

    # Normal downloads, one after the other, until one has started after the limit was reached.
    normal: list[subprocess.CompletedProcess] = []
    stop = threading.Event()

    def download_normally() -> None:
        while not stop.is_set():
            after = out_of_memory()
            normal.append(curl_through(oppy, "normal", network.url(f"/bytes/{normal_length}")))
            if after:
                return

    # Slow readers, each on a circuit of its own, reading a little now and then, until the queues reach
    # MaxMemInQueues.
    slow: list[tuple[socket.socket, bytearray]] = []
    lock = threading.Lock()

    def trickle() -> None:
        while not stop.wait(0.5):
            with lock:
                for sock, received in slow:
                    received += sock.recv(512)

    threads = [threading.Thread(target=download_normally), threading.Thread(target=trickle)]
    for thread in threads:
        thread.start()
    try:
        while len(slow) < 2 or (not out_of_memory() and len(slow) < MAX_SLOW_READERS):
            sock = start_download(oppy, network, slow_length, f"slow{len(slow)}")
            with lock:
                slow.append((sock, bytearray()))
            time.sleep(2)  # it stalls (its younger data is never the oldest)
        assert out_of_memory(), f"{len(slow)} slow readers and the offender never reached MaxMemInQueues"
        threads[0].join(timeout=120)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    # The normal downloads, the one under way when the limit was reached included, completed byte-exact.
    assert len(normal) >= 2
    for result in normal:
        assert result.returncode == 0, result.stderr
        assert hashlib.sha256(result.stdout).hexdigest() == expected_sha256(network, normal_length)
    # One line, for the offender's circuit: its streams held the oldest data, and enough of it.
    (line,) = [line for line in oppy.lines if "We're low on memory" in line]
    held, holding, streams = map(int, OOM_LINE.search(line).groups())
    assert streams == OFFENDER_STREAMS and 0 < holding <= streams and held > 0, line
    for sock in offender:
        _, ending = read_all(sock)
        assert ending == "reset"  # an error for the client, not a clean end of a short download
        sock.close()
    # The slow readers were served on: reading fast now, each gets its whole download.
    for sock, start in slow:
        rest, ending = read_all(sock)
        sock.close()
        body = http_body(bytes(start) + rest)
        assert ending == "eof" and hashlib.sha256(body).hexdigest() == expected_sha256(network, slow_length)
    assert [line for line in oppy.lines if "We're low on memory" in line] == [line]
