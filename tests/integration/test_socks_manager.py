"""The SOCKS listener and the circuit manager in-process, driven by curl, over the real relays.

(The daemon's own tests drive `oppy` as a program; these check the layers beneath it directly.)
"""

from __future__ import annotations

import hashlib
import random
import subprocess

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from oppy.circuit.manager import CircuitManager
from oppy.link.connection import LinkPool
from oppy.path.chooser import PathChooser
from oppy.socks.server import SocksFactory
from tests.support.relays import fetch, network_netdir

ONE_MB = 1000 * 1000


@pytest.fixture(scope="module")
def netdir(network):
    return network_netdir(network)


@pytest.fixture
def socks_port(netdir):
    links = LinkPool()
    # oppy's own path choice on the network's directory (every relay is on 127.0.0.1: no subnet rule).
    paths = PathChooser(rng=random.Random(7), enforce_distinct_subnets=False)
    paths.set_netdir(netdir)
    manager = CircuitManager(links, paths, preemptive_circuits=1)
    manager.start()
    factory = SocksFactory(manager, reactor, allow_private_addresses=True, handshake_timeout=2)
    listener = reactor.listenTCP(0, factory, interface="127.0.0.1")
    yield listener.getHost().port
    manager.close_all()
    factory.close_all()
    links.close_all()
    listener.stopListening()


def curl(port: int, url: str, *extra: str):
    return threads.deferToThread(
        subprocess.run, ["curl", "-sS", "--max-time", "60", "--socks5-hostname", f"127.0.0.1:{port}", *extra, url],
        capture_output=True, timeout=90)


@pytest_twisted.inlineCallbacks
def test_curl_fetches_through_the_socks_listener(network, socks_port):
    result = yield curl(socks_port, network.url(f"/bytes/{ONE_MB}"))
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).hexdigest() == fetch(network.url(f"/sha256/{ONE_MB}")).decode().strip()


@pytest_twisted.inlineCallbacks
def test_hostname_is_resolved_by_the_exit(network, socks_port):
    result = yield curl(socks_port, network.url("/", host="target.test"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from the oppy test target\n"


@pytest_twisted.inlineCallbacks
def test_unknown_hostname_gets_host_unreachable(network, socks_port):
    result = yield curl(socks_port, network.url("/", host="nowhere.invalid"))
    assert result.returncode == 97
    assert b"(4)" in result.stderr or b"unreachable" in result.stderr.lower(), result.stderr
