"""The client ports' listeners (oppy.doors.listeners) over loopback TCP: each port's streams carry its isolation
flags and session group and the client's protocol, address and credentials; ports open and close as their lines
come and go; SafeSocks refuses and TestSocks notes as tor does."""

from __future__ import annotations

import logging
import socket
import struct

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.task import Clock

from oppy.circuit.isolation import ISO_DEFAULT, ClientProtocol, IsolationFlag
from oppy.config.options import config_from_torrc_text
from oppy.doors.listeners import DoorKind, FrontDoors, ListenError
from oppy.socks.protocol import SocksServerConnection
from oppy.socks.server import SocksFactory
from tests.support.listeners import until
from tests.support.socks_client import recv_exactly, socks5_request
from tests.unit.test_socks_listener_close import FakeManaged


class RecordingManager:
    """Records every stream asked for (host, port and isolation) and never connects one."""

    def __init__(self) -> None:
        self.requests = []

    def open_stream(self, sink, host, port, kind, source=None, isolation=None, original_address=None):
        self.requests.append((host, port, isolation))
        return FakeManaged()


def ports(text: str):
    return config_from_torrc_text(text).socks_ports


def doors_with(manager, **settings) -> FrontDoors:
    return FrontDoors(manager, reactor, SocksFactory(manager, reactor, allow_private_addresses=True, **settings))


def socks4_request(port: int, ip: str, dest_port: int, userid: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\x04\x01" + struct.pack(">H", dest_port) + socket.inet_aton(ip) + userid + b"\x00")
        return recv_exactly(sock, 8)


def socks5_ip_request(port: int, ip: str, dest_port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert recv_exactly(sock, 2) == b"\x05\x00"
        sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(ip) + struct.pack(">H", dest_port))
        return recv_exactly(sock, 10)[1]


@pytest_twisted.inlineCallbacks
def test_each_port_gives_its_streams_its_flags_and_a_session_group_of_its_own():
    manager = RecordingManager()
    doors = doors_with(manager)
    first, second, grouped = doors.set_ports(DoorKind.SOCKS, ports(
        "SocksPort 127.0.0.1:auto IsolateDestPort IsolateClientProtocol\nSocksPort 127.0.0.1:auto\n"
        "SocksPort 127.0.0.1:auto SessionGroup=7 NoIsolateSOCKSAuth\n"))
    try:
        for door in (first, second, grouped):
            threads.deferToThread(socks5_request, door.address[1], "example.test", 80, credentials=(b"user", b"pw"),
                                  timeout=1).addErrback(lambda _: None)  # never answered: no stream connects
        yield until(lambda: len(manager.requests) == 3, "three streams")
    finally:
        doors.close_all()
    by_group = {isolation.session_group: isolation for _, _, isolation in manager.requests}
    assert sorted(by_group) == [-5, -4, 7]  # the ports in order, then the one with SessionGroup=7
    isolations = [by_group[-4], by_group[-5], by_group[7]]
    assert isolations[0].flags == ISO_DEFAULT | IsolationFlag.DESTPORT | IsolationFlag.CLIENTPROTO
    assert isolations[1].flags == ISO_DEFAULT
    assert isolations[2].flags == ISO_DEFAULT & ~IsolationFlag.SOCKSAUTH
    assert all(isolation.protocol is ClientProtocol.SOCKS5 and isolation.client_address == "127.0.0.1"
               and (isolation.username, isolation.password) == (b"user", b"pw") for isolation in isolations)


@pytest_twisted.inlineCallbacks
def test_socks4_streams_say_so_and_carry_the_userid():
    manager = RecordingManager()
    doors = doors_with(manager)
    (door,) = doors.set_ports(DoorKind.SOCKS, ports("SocksPort 127.0.0.1:auto\n"))
    try:
        threads.deferToThread(socks4_request, door.address[1], "10.1.2.3", 80, b"someone").addErrback(lambda _: None)
        yield until(lambda: manager.requests, "the stream")
    finally:
        doors.close_all()
    ((host, port, isolation),) = manager.requests
    assert (host, port, isolation.protocol, isolation.username) == ("10.1.2.3", 80, ClientProtocol.SOCKS4, b"someone")


def test_set_ports_keeps_what_stays_opens_what_is_new_and_closes_the_rest(caplog):
    doors = doors_with(RecordingManager())
    with caplog.at_level(logging.INFO):
        kept, dropped = doors.set_ports(DoorKind.SOCKS, ports("SocksPort 127.0.0.1:auto\n"
                                                              "SocksPort 127.0.0.1:auto IsolateDestAddr\n"))
        (added,) = doors.set_ports(DoorKind.SOCKS, ports("SocksPort 127.0.0.1:auto\nSocksPort 127.0.0.1:auto "
                                                         "IsolateDestPort\n"))
    try:
        assert doors.doors(DoorKind.SOCKS) == [kept, added]
        messages = [record.getMessage() for record in caplog.records]
        assert f"Opened Socks listener connection (ready) on 127.0.0.1:{added.address[1]}" in messages
        assert f"Closing Socks listener on 127.0.0.1:{dropped.address[1]}" in messages
        assert doors.set_ports(DoorKind.SOCKS, ()) == [] and doors.doors(DoorKind.SOCKS) == []
    finally:
        doors.close_all()


def test_a_port_that_cannot_be_opened_is_an_error_and_leaves_nothing_half_open():
    doors = doors_with(RecordingManager())
    (taken,) = doors.set_ports(DoorKind.SOCKS, ports("SocksPort 127.0.0.1:auto\n"))
    busy = taken.address[1]
    try:
        with pytest.raises(ListenError, match=f"Could not bind to 127.0.0.1:{busy}"):
            doors.set_ports(DoorKind.SOCKS, ports(f"SocksPort 127.0.0.1:auto\nSocksPort 127.0.0.1:auto IsolateDestAddr\n"
                                                  f"SocksPort 127.0.0.1:{busy}\n"))
        assert doors.doors(DoorKind.SOCKS) == [taken]
    finally:
        doors.close_all()


SAFE_SOCKS_WARNING = "is giving Tor only an IP address"


@pytest_twisted.inlineCallbacks
def test_safe_socks_refuses_addresses_the_application_resolved_with_tors_warning(caplog):
    manager = RecordingManager()
    doors = doors_with(manager, safe_socks=True)
    (door,) = doors.set_ports(DoorKind.SOCKS, ports("SocksPort 127.0.0.1:auto\n"))
    port = door.address[1]
    try:
        with caplog.at_level(logging.INFO):
            socks4 = yield threads.deferToThread(socks4_request, port, "10.1.2.3", 80)
            socks5 = yield threads.deferToThread(socks5_ip_request, port, "10.1.2.3", 443)
    finally:
        doors.close_all()
    assert socks4[:2] == b"\x00\x5b" and socks5 == 0x02  # REJECTED; NOT_ALLOWED
    assert manager.requests == []
    warnings = [record for record in caplog.records if SAFE_SOCKS_WARNING in record.getMessage()]
    # tor's words, at most once in five seconds.
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert warnings[0].getMessage().startswith("Your application (using socks4 to port 80) is giving Tor only an "
                                               "IP address.")
    assert warnings[0].getMessage().endswith("#WarningsAboutSOCKSandDNSInformationLeaks. Rejecting.")


def request_of(data: bytes):
    connection = SocksServerConnection()
    connection.feed(data)
    return connection.request


SOCKS4_IP = b"\x04\x01\x00\x50" + socket.inet_aton("10.1.2.3") + b"\x00"
SOCKS4A = b"\x04\x01\x00\x50\x00\x00\x00\x01\x00example.test\x00"
SOCKS5_IP = b"\x05\x01\x00" + b"\x05\x01\x00\x01" + socket.inet_aton("10.1.2.3") + b"\x01\xbb"
SOCKS5_NAME = b"\x05\x01\x00" + b"\x05\x01\x00\x03\x0cexample.test\x01\xbb"
SOCKS5_IP_AS_NAME = b"\x05\x01\x00" + b"\x05\x01\x00\x03\x0810.1.2.3\x01\xbb"
SOCKS5_PTR = b"\x05\x01\x00" + b"\x05\xf1\x00\x01" + socket.inet_aton("10.1.2.3") + b"\x00\x00"


@pytest.mark.parametrize("data, allowed", [(SOCKS4_IP, False), (SOCKS4A, True), (SOCKS5_IP, False),
                                           (SOCKS5_NAME, True), (SOCKS5_IP_AS_NAME, True), (SOCKS5_PTR, True)])
def test_what_safe_socks_refuses(data, allowed):
    """proto_socks.c: an IP address on the wire, except RESOLVE_PTR's; an IP literal given as a name is not."""
    factory = SocksFactory(None, Clock(), safe_socks=True)
    assert factory.socks_type_allowed(request_of(data)) is allowed
    assert SocksFactory(None, Clock()).socks_type_allowed(request_of(data))


def test_the_safe_socks_warning_comes_at_most_every_five_seconds(caplog):
    clock = Clock()
    factory = SocksFactory(None, clock, safe_socks=True)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            factory.socks_type_allowed(request_of(SOCKS5_IP))
        clock.advance(5)
        factory.socks_type_allowed(request_of(SOCKS5_IP))
    assert len([r for r in caplog.records if SAFE_SOCKS_WARNING in r.getMessage()]) == 2


def test_test_socks_notes_the_requests_that_let_tor_resolve(caplog):
    factory = SocksFactory(None, Clock(), test_socks=True)
    with caplog.at_level(logging.INFO):
        for data in (SOCKS4A, SOCKS5_NAME, SOCKS4_IP):
            assert factory.socks_type_allowed(request_of(data))
    assert [r.getMessage() for r in caplog.records] == [
        "Your application (using socks4a to port 80) instructed Tor to take care of the DNS resolution itself if "
        "necessary. This is good.",
        "Your application (using socks5 to port 443) instructed Tor to take care of the DNS resolution itself if "
        "necessary. This is good.",
    ]


def socks5_resolve(port: int, name: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert recv_exactly(sock, 2) == b"\x05\x00"
        sock.sendall(b"\x05\xf0\x00\x03" + bytes([len(name)]) + name.encode() + b"\x00\x00")
        head = recv_exactly(sock, 4)
        return head + recv_exactly(sock, {1: 4, 4: 16}[head[3]] + 2)


@pytest_twisted.inlineCallbacks
def test_an_automapped_resolve_is_answered_at_once_with_a_virtual_address_and_a_connect_to_it_goes_to_the_name():
    manager = RecordingManager()
    doors = doors_with(manager)
    doors.addresses.automap, doors.addresses.suffixes = True, (".virtual",)
    v4_door, v6_door = doors.set_ports(DoorKind.SOCKS, ports("SocksPort 127.0.0.1:auto NoPreferIPv6Automap\n"
                                                             "SocksPort 127.0.0.1:auto\n"))
    try:
        v4 = yield threads.deferToThread(socks5_resolve, v4_door.address[1], "web.virtual")
        v6 = yield threads.deferToThread(socks5_resolve, v6_door.address[1], "web.virtual")
        assert v4[:4] == b"\x05\x00\x00\x01" and v6[:4] == b"\x05\x00\x00\x04"  # PreferIPv6Automap is tor's default
        virtual = socket.inet_ntoa(v4[4:8])
        assert doors.addresses.name_of(virtual) == "web.virtual" and manager.requests == []  # no exit was asked
        threads.deferToThread(socks5_ip_request, v4_door.address[1], virtual, 80).addErrback(lambda _: None)
        yield until(lambda: manager.requests, "the stream")
    finally:
        doors.close_all()
    ((host, port, isolation),) = manager.requests
    assert (host, port) == ("web.virtual", 80)


def test_a_failed_change_keeps_the_listeners_it_would_have_closed():
    """SETCONF SocksPort to a port in use fails and changes nothing: the old listener still listens."""
    doors = doors_with(RecordingManager())
    (old,) = doors.set_ports(DoorKind.SOCKS, ports("SocksPort 127.0.0.1:auto IsolateDestPort\n"))
    (taken,) = doors.set_ports(DoorKind.HTTP_TUNNEL,
                               config_from_torrc_text("HTTPTunnelPort 127.0.0.1:auto\n").http_tunnel_ports)
    try:
        with pytest.raises(ListenError):
            doors.set_ports(DoorKind.SOCKS, ports(f"SocksPort 127.0.0.1:{taken.address[1]}\n"))
        assert doors.doors(DoorKind.SOCKS) == [old]
    finally:
        doors.close_all()
