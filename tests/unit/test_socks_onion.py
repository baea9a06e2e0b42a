"""The SOCKS front door for `.onion` names: they never reach the circuit manager (an exit's resolver) or DNS;
a bad address is refused at once, with proposal 304's F6 on a SocksPort with ExtendedErrors and tor's
GENERAL_FAILURE without; a failed onion-service connection answers its extended code only with the flag."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

from twisted.internet import task
from twisted.internet.testing import StringTransport

from oppy.cell.commands import EndReason
from oppy.circuit.isolation import ClientProtocol, IsolationFlag, StreamIsolation, isolation_flags
from oppy.config.options import DEFAULT_SOCKS_FLAGS
from oppy.hs.address import OnionAddress
from oppy.logs import SCRUBBED
from oppy.socks.messages import Socks5Reply
from oppy.socks.server import SocksFactory, SocksPortSettings
from oppy.stream.stream import Stream

CAPTURE = json.loads((Path(__file__).parent / "data" / "onion_service" / "capture.json").read_text())
GOOD = CAPTURE["plain"]["address"]
# The same address with one character changed: the checksum no longer matches.
BAD_CHECKSUM = ("a" if GOOD[0] != "a" else "b") + GOOD[1:]
EXTENDED = DEFAULT_SOCKS_FLAGS | {"ExtendedErrors"}


def socks5_connect(hostname: str, port: int = 80, command: int = 1) -> bytes:
    name = hostname.encode()
    return b"\x05\x01\x00" + bytes((5, command, 0, 3, len(name))) + name + struct.pack("!H", port)


class ForbiddenManager:
    """The circuit manager of these tests: any stream reaching it would go to an exit's resolver."""

    def __init__(self) -> None:
        self.requests = []

    def open_stream(self, sink, host, port, kind, credentials=None, source=None):
        self.requests.append(host)
        raise AssertionError(f"{host} reached the circuit manager")


class RecordingConnector:
    """An onion-service client that keeps the streams it is given, so a test can end them."""

    def __init__(self) -> None:
        self.opened: list[tuple[OnionAddress, int, Stream]] = []
        self.isolations: list[StreamIsolation] = []

    def open_stream(self, sink, address, port, isolation, source=None):
        stream = Stream(sink, address.hostname, port)
        self.opened.append((address, port, stream))
        self.isolations.append(isolation)
        return type("Managed", (), {"stream": stream})()


def client(flags=DEFAULT_SOCKS_FLAGS, connector=None):
    manager = ForbiddenManager()
    factory = SocksFactory(manager, task.Clock(), onion_services=connector)
    protocol = factory.for_port(SocksPortSettings(flags=flags)).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, manager


def reply_code(transport: StringTransport) -> int:
    data = transport.value()
    assert data[:2] == b"\x05\x00", data  # the method choice
    assert data[2] == 5 and len(data) == 12, data
    return data[3]


def test_a_bad_checksum_answers_f6_at_once_with_extended_errors():
    protocol, transport, manager = client(EXTENDED)
    protocol.dataReceived(socks5_connect(BAD_CHECKSUM))
    assert reply_code(transport) == Socks5Reply.ONION_BAD_ADDRESS
    assert transport.disconnecting
    assert manager.requests == []


def test_a_bad_address_answers_general_failure_without_the_flag():
    protocol, transport, manager = client()
    protocol.dataReceived(socks5_connect("www." + BAD_CHECKSUM.upper()))
    assert reply_code(transport) == Socks5Reply.GENERAL_FAILURE
    assert manager.requests == []


def test_a_short_onion_name_is_a_bad_address_not_a_hostname_for_the_exit():
    protocol, transport, manager = client(EXTENDED)
    protocol.dataReceived(socks5_connect("facebookcorewwwi.onion"))  # a v2 address: no longer supported
    assert reply_code(transport) == Socks5Reply.ONION_BAD_ADDRESS
    assert manager.requests == []


def test_resolving_an_onion_name_is_refused():
    protocol, transport, manager = client(EXTENDED, RecordingConnector())
    protocol.dataReceived(socks5_connect(GOOD, command=0xF0))  # tor's RESOLVE
    assert reply_code(transport) == Socks5Reply.HOST_UNREACHABLE
    assert manager.requests == []


def test_a_port_without_onion_traffic_refuses_onion_names():
    connector = RecordingConnector()
    protocol, transport, manager = client(DEFAULT_SOCKS_FLAGS - {"OnionTraffic"}, connector)
    protocol.dataReceived(socks5_connect(GOOD))
    assert reply_code(transport) == Socks5Reply.NOT_ALLOWED
    assert connector.opened == [] and manager.requests == []


def test_a_valid_address_without_an_onion_client_is_refused_not_sent_to_an_exit():
    protocol, transport, manager = client(EXTENDED)
    protocol.dataReceived(socks5_connect(GOOD))
    assert reply_code(transport) == Socks5Reply.GENERAL_FAILURE
    assert manager.requests == []


def test_a_valid_address_with_a_subdomain_goes_to_the_onion_client():
    connector = RecordingConnector()
    protocol, transport, manager = client(EXTENDED, connector)
    protocol.dataReceived(socks5_connect("www." + GOOD, 8080))
    ((address, port, _),) = connector.opened
    assert (address.hostname, address.subdomain, port) == (GOOD, "www", 8080)
    assert transport.value() == b"\x05\x00"  # no answer until the connection succeeds or fails
    assert manager.requests == []


def test_an_onion_stream_carries_its_ports_isolation():
    """The onion-service client chooses rendezvous circuits by the port's isolation flags and session group,
    the client's address and protocol and its SOCKS credentials, as any stream (tor circuit_is_acceptable)."""
    connector = RecordingConnector()
    factory = SocksFactory(ForbiddenManager(), task.Clock(), onion_services=connector)
    flags = isolation_flags({"IsolateDestPort", "IsolateSOCKSAuth"})
    settings = SocksPortSettings(isolation=StreamIsolation(flags=flags, session_group=7))
    protocol = factory.for_port(settings).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    name = GOOD.encode()
    protocol.dataReceived(b"\x05\x01\x02" + b"\x01\x05alice\x06secret"
                          + bytes((5, 1, 0, 3, len(name))) + name + struct.pack("!H", 443))
    (isolation,) = connector.isolations
    assert isolation == StreamIsolation(flags=flags, session_group=7, protocol=ClientProtocol.SOCKS5,
                                        client_address=transport.getPeer().host, username=b"alice",
                                        password=b"secret")
    assert isolation.flags & IsolationFlag.DESTPORT


def test_an_onion_failure_answers_its_extended_code_only_on_a_port_with_the_flag():
    for flags, expected in ((EXTENDED, Socks5Reply.ONION_DESCRIPTOR_NOT_FOUND),
                            (DEFAULT_SOCKS_FLAGS, Socks5Reply.HOST_UNREACHABLE)):
        connector = RecordingConnector()
        protocol, transport, _ = client(flags, connector)
        protocol.dataReceived(socks5_connect(GOOD))
        ((_, _, stream),) = connector.opened
        # tor hs_client.c: no HSDir has the descriptor: END_STREAM_REASON_RESOLVEFAILED, F0.
        stream.close(EndReason.RESOLVEFAILED, extended_error=Socks5Reply.ONION_DESCRIPTOR_NOT_FOUND)
        assert reply_code(transport) == expected
        assert transport.disconnecting


def test_refused_onion_names_stay_out_of_the_log_under_safe_logging(caplog):
    """SafeLogging 1 (the default): tor logs a refused onion name as [scrubbed] (safe_str_client)."""
    with caplog.at_level(logging.INFO, logger="oppy"):
        for name, connector in ((BAD_CHECKSUM, None), (GOOD, None)):
            protocol, transport, _ = client(EXTENDED, connector)
            protocol.dataReceived(socks5_connect(name))
            assert reply_code(transport) in (Socks5Reply.ONION_BAD_ADDRESS, Socks5Reply.GENERAL_FAILURE)
    assert len(caplog.records) == 2
    assert GOOD[:50] not in caplog.text and BAD_CHECKSUM[:50] not in caplog.text
    assert caplog.text.count(SCRUBBED) == 2
