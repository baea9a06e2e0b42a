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
from oppy.socks.server import SocksFactory
from tests.support.relays import fetch, relay_targets

ONE_MB = 1000 * 1000


@pytest.fixture(scope="module")
def relays(network):
    return relay_targets(network)


def simple_path_chooser(relays):
    rng = random.Random(7)
    exits = [r for name, r in relays.items() if name.startswith("exit")]
    others = [r for name, r in relays.items() if not name.startswith("exit")]

    def choose(port, exclude=frozenset()):
        usable_exits = [e for e in exits if e.rsa_id not in exclude]
        if not usable_exits:
            raise RuntimeError("no exit left")
        guard, middle = rng.sample(others, 2)
        return [guard, middle, rng.choice(usable_exits)]
    return choose


@pytest.fixture
def socks_port(relays):
    links = LinkPool()
    manager = CircuitManager(links, simple_path_chooser(relays), preemptive_circuits=1)
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
