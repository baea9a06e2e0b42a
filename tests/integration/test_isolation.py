"""Isolation flags on real circuits: for each flag, two requests that differ only in the isolated property go on
different circuits, and requests that do not differ (or come through a port without the flag) share one. The
circuits are read from the control port's STREAM events (stem), as a controller sees them."""

from __future__ import annotations

import socket
import socketserver
import struct
import threading

import pytest
from stem.control import Controller, EventType

from tests.integration.test_control import Events
from tests.support.network import TestNetwork
from tests.support.oppy_process import OppyProcess, free_port
from tests.support.socks_client import recv_exactly

# Each port's torrc flags; the test names the ports by these keys.
PORT_FLAGS = {
    "destport": "IsolateDestPort",
    "destaddr": "IsolateDestAddr",
    "proto": "IsolateClientProtocol",
    "plain": "",
    "noauth": "NoIsolateSOCKSAuth",
    "noclientaddr": "NoIsolateClientAddr",
    "group_a": "SessionGroup=1",
    "group_b": "SessionGroup=1",
    "other": "",
}


class AcceptAndClose(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(1)


@pytest.fixture(scope="module")
def second_target():
    """A second destination port on the exits' side (127.0.0.1), beside the network's HTTP target."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), AcceptAndClose)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def oppy(network: TestNetwork, tmp_path_factory):
    ports = {name: free_port() for name in PORT_FLAGS}
    control_port = free_port()
    process = OppyProcess(network, tmp_path_factory.mktemp("oppy-isolation") / "data", extra_lines=[
        f"ControlPort 127.0.0.1:{control_port}",
        # Single circuits, so that "the same circuit otherwise" is deterministic: a linked conflux set that
        # becomes ready between two requests takes the second one, as in tor (conflux_get_circ_for_conn comes
        # first); test_conflux checks that sets keep isolation apart.
        "ConfluxEnabled 0",
        *(f"SocksPort 127.0.0.1:{ports[name]} {flags}" for name, flags in PORT_FLAGS.items())])
    process.control_port = control_port
    process.ports = ports
    process.wait_ready()
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def streams(oppy):
    with Controller.from_port(port=oppy.control_port) as controller:
        controller.authenticate()
        events = Events(controller, EventType.STREAM)
        yield events
        events.close()


def socks_connect(proxy_port: int, host: str, port: int, *, version: int = 5, credentials=None,
                  source: str = "127.0.0.1") -> None:
    """One CONNECT through oppy (SOCKS5 with a hostname, or SOCKS4a), from `source`; waits for success."""
    with socket.socket() as sock:
        sock.settimeout(60)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", proxy_port))
        if version == 4:
            userid = credentials[0] if credentials else b""
            sock.sendall(b"\x04\x01" + struct.pack(">H", port) + b"\x00\x00\x00\x01" + userid + b"\x00"
                         + host.encode() + b"\x00")
            assert recv_exactly(sock, 8)[1] == 0x5A
            return
        sock.sendall(b"\x05\x01\x02" if credentials else b"\x05\x01\x00")
        method = recv_exactly(sock, 2)[1]
        if credentials:
            assert method == 2
            user, password = credentials
            sock.sendall(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
            assert recv_exactly(sock, 2) == b"\x01\x00"
        sock.sendall(b"\x05\x01\x00\x03" + bytes([len(host)]) + host.encode() + struct.pack(">H", port))
        reply = recv_exactly(sock, 10)
        assert reply[1] == 0, f"SOCKS5 reply {reply[1]}"


def circuit_of(oppy, streams: Events, door: str, host: str, port: int, **request) -> str:
    """The circuit (its id in STREAM events) that carried one CONNECT through port `door`."""
    with streams.changed:
        before = {id(event) for event in streams.seen}
    socks_connect(oppy.ports[door], host, port, **request)
    event = streams.wait_for(lambda e: id(e) not in before and e.status == "SUCCEEDED"
                             and e.target_address == host and e.target_port == port)
    return event.circ_id


def test_isolate_dest_port(network, oppy, streams, second_target):
    http = network.http_port
    first = circuit_of(oppy, streams, "destport", "port.test", http)
    assert circuit_of(oppy, streams, "destport", "port.test", second_target) != first
    assert circuit_of(oppy, streams, "destport", "port.test", http) == first
    # Without the flag the two ports share a circuit.
    shared = circuit_of(oppy, streams, "plain", "port.test", http)
    assert circuit_of(oppy, streams, "plain", "port.test", second_target) == shared


def test_isolate_dest_addr(network, oppy, streams):
    http = network.http_port
    first = circuit_of(oppy, streams, "destaddr", "a.test", http)
    assert circuit_of(oppy, streams, "destaddr", "b.test", http) != first
    assert circuit_of(oppy, streams, "destaddr", "A.test", http) == first  # compared without case
    shared = circuit_of(oppy, streams, "plain", "addr-a.test", http)
    assert circuit_of(oppy, streams, "plain", "addr-b.test", http) == shared


def test_isolate_client_protocol(network, oppy, streams):
    http = network.http_port
    socks5 = circuit_of(oppy, streams, "proto", "proto.test", http)
    assert circuit_of(oppy, streams, "proto", "proto.test", http, version=4) != socks5
    assert circuit_of(oppy, streams, "proto", "proto.test", http) == socks5
    shared = circuit_of(oppy, streams, "plain", "proto-plain.test", http)
    assert circuit_of(oppy, streams, "plain", "proto-plain.test", http, version=4) == shared


def test_isolate_socks_auth_is_on_by_default_and_can_be_turned_off(network, oppy, streams):
    http = network.http_port
    alice = circuit_of(oppy, streams, "plain", "auth.test", http, credentials=(b"alice", b"pw"))
    assert circuit_of(oppy, streams, "plain", "auth.test", http, credentials=(b"bob", b"pw")) != alice
    assert circuit_of(oppy, streams, "plain", "auth.test", http, credentials=(b"alice", b"other")) != alice
    assert circuit_of(oppy, streams, "plain", "auth.test", http, credentials=(b"alice", b"pw")) == alice
    # Proposal 351's <torS0X>0 username isolates by the password alone.
    token = circuit_of(oppy, streams, "plain", "auth.test", http, credentials=(b"<torS0X>0", b"one"))
    assert circuit_of(oppy, streams, "plain", "auth.test", http, credentials=(b"<torS0X>0", b"two")) != token
    assert circuit_of(oppy, streams, "plain", "auth.test", http, credentials=(b"<torS0X>0", b"one")) == token
    anyone = circuit_of(oppy, streams, "noauth", "auth.test", http, credentials=(b"alice", b"pw"))
    assert circuit_of(oppy, streams, "noauth", "auth.test", http, credentials=(b"bob", b"pw")) == anyone


def test_isolate_client_addr_is_on_by_default_and_can_be_turned_off(network, oppy, streams):
    http = network.http_port
    first = circuit_of(oppy, streams, "plain", "client.test", http)
    assert circuit_of(oppy, streams, "plain", "client.test", http, source="127.0.0.2") != first
    assert circuit_of(oppy, streams, "plain", "client.test", http) == first
    shared = circuit_of(oppy, streams, "noclientaddr", "client.test", http)
    assert circuit_of(oppy, streams, "noclientaddr", "client.test", http, source="127.0.0.2") == shared


def test_ports_are_isolated_from_each_other_unless_they_share_a_session_group(network, oppy, streams):
    http = network.http_port
    plain = circuit_of(oppy, streams, "plain", "group.test", http)
    assert circuit_of(oppy, streams, "other", "group.test", http) != plain
    group = circuit_of(oppy, streams, "group_a", "group.test", http)
    assert group != plain
    assert circuit_of(oppy, streams, "group_b", "group.test", http) == group
