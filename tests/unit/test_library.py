"""oppy.launch's configuration, and the SOCKS5 client handshake that TorClientEndpoint speaks to a SocksPort
(oppy.pt.socks5's, the one pluggable transports hear; checked against oppy's own SOCKS server, the sans-IO
SocksServerConnection)."""

from __future__ import annotations

import pytest

from oppy.endpoints import TorClientEndpoint, isolation_credentials
from oppy.library import LaunchError, library_config
from oppy.pt.socks5 import Socks5ClientError, Socks5ClientHandshake, Socks5Progress
from oppy.socks.messages import Socks5Reply
from oppy.socks.protocol import SocksRequest, SocksServerConnection


def test_library_config_opens_no_socks_listener_unless_asked(tmp_path):
    config = library_config(str(tmp_path), {"dirauthority": ["auth0 orport=19000 no-v2 "
                                                             "v3ident=11ABEDB7AF364AE59F697593F769F35336A65455 "
                                                             "127.0.0.1:19001 6FCFA946CB1C6B1CEE5B128D4326A88531640E5F"],
                                            "TestingTorNetwork": True})
    assert config.socks_ports == () and config.testing_tor_network and config.data_directory == str(tmp_path)
    config = library_config(str(tmp_path), {"SocksPort": ["auto", "127.0.0.1:9999 IsolateDestPort"]})
    assert [port.port for port in config.socks_ports] == [0, 9999]


def test_library_config_bad_option_is_a_launch_error(tmp_path):
    with pytest.raises(LaunchError, match="Unknown option 'Bogus'"):
        library_config(str(tmp_path), {"Bogus": 1})
    with pytest.raises(LaunchError, match="SocksTimeout"):
        library_config(str(tmp_path), {"SocksTimeout": "never"})


def handshake_with(server: SocksServerConnection, client: Socks5ClientHandshake) -> tuple[list, bool]:
    """Bytes back and forth until the server has the request; the events and whether the client is done."""
    events = server.feed(client.greeting())
    done = False
    for _ in range(4):
        progress = client.receive(server.data_to_send())
        done = progress.finished
        if progress.send:
            events += server.feed(progress.send)
        if any(isinstance(event, SocksRequest) for event in events):
            break
    return events, done


@pytest.mark.parametrize("host", ["web.test", "10.1.2.3", "2001:db8::1"])
def test_socks_client_sends_the_target_as_given(host):
    server = SocksServerConnection()
    client = Socks5ClientHandshake(host, 8080)
    events, _ = handshake_with(server, client)
    (request,) = events
    assert (request.address, request.port, request.isolation_key) == (host, 8080, (b"", b""))
    server.reply_connect_succeeded()
    assert client.receive(server.data_to_send() + b"early bytes") == Socks5Progress(b"", True, b"early bytes")


@pytest.mark.parametrize(("username", "password"), [("alice", "pw"), ("alice", "")])
def test_socks_client_credentials_are_the_isolation_key(username, password):
    server = SocksServerConnection()
    client = Socks5ClientHandshake("web.test", 80, isolation_credentials(username, password))
    (request,), _ = handshake_with(server, client)
    assert request.isolation_key == (username.encode(), password.encode())


def test_socks_client_failure_names_the_reply():
    server = SocksServerConnection()
    client = Socks5ClientHandshake("web.test", 80)
    handshake_with(server, client)
    server.reply_failed(Socks5Reply.HOST_UNREACHABLE)
    with pytest.raises(Socks5ClientError, match="HOST_UNREACHABLE") as raised:
        client.receive(server.data_to_send())
    assert raised.value.reply == Socks5Reply.HOST_UNREACHABLE


def test_socks_client_reply_may_come_in_pieces():
    server = SocksServerConnection()
    client = Socks5ClientHandshake("web.test", 80)
    handshake_with(server, client)
    server.reply_connect_succeeded()
    reply = server.data_to_send()
    for byte in reply[:-1]:
        assert client.receive(bytes([byte])) == Socks5Progress()
    assert client.receive(reply[-1:]) == Socks5Progress(b"", True)


def test_endpoint_arguments_are_checked():
    with pytest.raises(ValueError, match="port"):
        TorClientEndpoint("web.test", 0, reactor=object())
    with pytest.raises(ValueError, match="not both"):
        TorClientEndpoint("web.test", 80, tor=object(), socks_endpoint=object())
    with pytest.raises(ValueError, match="longer than SOCKS allows"):
        isolation_credentials("x" * 256, None)
