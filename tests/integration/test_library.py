"""oppy as a library: ``oppy.launch`` on the test's reactor, its endpoints, its Agent (and treq), the
``oppy:`` string endpoint, TLS over a stream, and a clean stop, against the private network."""

from __future__ import annotations

import hashlib
import os

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, task

import oppy
from oppy.library import LaunchError
from tests.support.relays import fetch

ONE_MB = 1000 * 1000


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def network_options(network) -> dict:
    return {"TestingTorNetwork": 1,
            "DirAuthority": [line.split(" ", 1)[1] for line in network.dir_authority_lines]}


def test_launch_refuses_the_public_network(tmp_path):
    """OPPY_FORBID_PUBLIC_NETWORK is set by the test suite: no DirAuthority, no oppy."""
    assert os.environ.get("OPPY_FORBID_PUBLIC_NETWORK")
    with pytest.raises(LaunchError, match="refusing to contact the public Tor network"):
        oppy.launch(reactor, data_directory=tmp_path / "data")


def test_launch_reports_a_bad_option(tmp_path, network):
    with pytest.raises(LaunchError, match="NoSuchOption"):
        oppy.launch(reactor, data_directory=tmp_path / "data", NoSuchOption=1, **network_options(network))


@pytest_twisted.inlineCallbacks
def test_launch_bootstraps_serves_and_stops_clean(tmp_path, network):
    yield task.deferLater(reactor, 0, lambda: None)  # the fixtures' own calls settle
    fds_before = open_fds()
    calls_before = set(reactor.getDelayedCalls())
    readers_before, writers_before = set(reactor.getReaders()), set(reactor.getWriters())
    tor = oppy.launch(reactor, data_directory=tmp_path / "data", **network_options(network))
    assert tor.socks_addresses == []  # no listener unless SocksPort is given
    ready = yield tor.bootstrapped
    assert ready is tor
    body = yield fetch_over(tor.endpoint(network.host, network.http_port), b"/bytes/%d" % ONE_MB)
    assert hashlib.sha256(body).hexdigest() == fetch(network.url(f"/sha256/{ONE_MB}")).decode().strip()
    yield tor.stop()
    assert set(reactor.getDelayedCalls()) - calls_before == set()
    assert set(reactor.getReaders()) - readers_before == set()
    assert set(reactor.getWriters()) - writers_before == set()
    assert open_fds() - fds_before == set()


class _Download(protocol.Protocol):
    def __init__(self, done: defer.Deferred) -> None:
        self.done, self.chunks = done, []

    def dataReceived(self, data):  # noqa: N802
        self.chunks.append(data)

    def connectionLost(self, reason):  # noqa: N802
        self.done.callback(b"".join(self.chunks))


@defer.inlineCallbacks
def fetch_over(endpoint, path: bytes):
    """An HTTP/1.0 GET over a raw endpoint; the body."""
    done: defer.Deferred = defer.Deferred()
    proto = yield endpoint.connect(protocol.Factory.forProtocol(lambda: _Download(done)))
    proto.transport.write(b"GET " + path + b" HTTP/1.0\r\nHost: target\r\n\r\n")
    response = yield done
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head
    return body
