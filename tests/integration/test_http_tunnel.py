"""HTTPTunnelPort against the private network: curl through an HTTP CONNECT tunnel fetches byte-exact, a name no
exit can resolve answers tor's status, a plain GET gets tor's page, and Proxy-Authorization isolates streams (seen
in the control port's STREAM events)."""

from __future__ import annotations

import hashlib
import socket
import subprocess

import pytest
from stem.control import Controller, EventType

from tests.integration.test_control import Events
from tests.support.network import TestNetwork
from tests.support.oppy_process import OppyProcess, free_port
from tests.support.relays import fetch
from tests.support.socks_client import recv_exactly

LENGTH = 1_000_000


@pytest.fixture(scope="module")
def oppy(network: TestNetwork, tmp_path_factory):
    tunnel_port, control_port = free_port(), free_port()
    process = OppyProcess(network, tmp_path_factory.mktemp("oppy-tunnel") / "data", extra_lines=[
        f"HTTPTunnelPort 127.0.0.1:{tunnel_port}", f"ControlPort 127.0.0.1:{control_port}",
        # Single circuits, as in test_isolation: a conflux set linked between alice's two requests would
        # take her second one (tor's conflux_get_circ_for_conn comes first), on another circuit by right.
        "ConfluxEnabled 0"])
    process.tunnel_port, process.control_port = tunnel_port, control_port
    process.wait_ready()
    yield process
    assert process.stop() == 0


def curl_tunnel(oppy, url: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "90", "--proxytunnel", "-x",
                           f"http://127.0.0.1:{oppy.tunnel_port}", *extra, url], capture_output=True, timeout=120)


def test_the_listener_is_announced_as_tor_does(oppy):
    assert f"Opened HTTP tunnel listener connection (ready) on 127.0.0.1:{oppy.tunnel_port}" in "\n".join(oppy.lines)


def test_curl_through_the_tunnel_fetches_byte_exact(network, oppy):
    result = curl_tunnel(oppy, network.url(f"/bytes/{LENGTH}", host="web.test"))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == LENGTH
    assert hashlib.sha256(result.stdout).hexdigest() == fetch(network.url(f"/sha256/{LENGTH}")).decode().strip()


def test_a_name_no_exit_resolves_answers_503_with_the_reason(network, oppy):
    result = curl_tunnel(oppy, network.url("/", host="no-such-name.invalid"), "-w", "%{http_connect}")
    assert result.returncode != 0
    assert result.stdout.decode().endswith("503"), (result.stdout, result.stderr)
    with socket.create_connection(("127.0.0.1", oppy.tunnel_port), timeout=90) as sock:
        sock.sendall(b"CONNECT no-such-name.invalid:80 HTTP/1.1\r\nHost: no-such-name.invalid:80\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer == (b"HTTP/1.0 503 Service Unavailable (resolve failed)\r\n"
                      b"Tor-Request-Failed: RESOLVEFAILED\r\n\r\n")


def test_a_plain_get_gets_tors_explanation(network, oppy):
    with socket.create_connection(("127.0.0.1", oppy.tunnel_port), timeout=30) as sock:
        sock.sendall(f"GET {network.url('/')} HTTP/1.1\r\nHost: web.test\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.0 405 Method Not Allowed\r\n")
    assert b"This is an HTTP CONNECT tunnel, not an HTTP proxy." in answer


def test_proxy_authorization_isolates_streams(network, oppy):
    with Controller.from_port(port=oppy.control_port) as controller:
        controller.authenticate()
        events = Events(controller, EventType.STREAM)

        def circuit_as(user: str, host: str) -> str:
            result = curl_tunnel(oppy, network.url("/", host=host), "--proxy-user", f"{user}:pw")
            assert result.returncode == 0, result.stderr
            return events.wait_for(lambda e: e.status == "SUCCEEDED" and e.target_address == host).circ_id

        alice = circuit_as("alice", "alice-1.test")
        assert circuit_as("bob", "bob.test") != alice
        assert circuit_as("alice", "alice-2.test") == alice
        events.close()


def test_the_tunnel_carries_what_the_client_sent_with_its_request(network, oppy):
    """Bytes sent right after the request head (before the 200) reach the destination."""
    with socket.create_connection(("127.0.0.1", oppy.tunnel_port), timeout=60) as sock:
        sock.sendall(f"CONNECT web.test:{network.http_port} HTTP/1.0\r\n\r\n".encode()
                     + b"GET / HTTP/1.0\r\nHost: web.test\r\n\r\n")
        assert recv_exactly(sock, 19) == b"HTTP/1.0 200 OK\r\n\r\n"
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.endswith(b"hello from the oppy test target\n")
