"""Pluggable transports against a real obfs4 bridge: Debian's obfs4proxy as oppy's managed proxy.

The private network's obfs4 bridge (`scripts/testnet bridges`: a tor bridge behind obfs4proxy, not in the
consensus) is reached the way oppy reaches it: oppy launches obfs4proxy with pt-spec's environment, reads
where it listens, speaks SOCKS5 to it with the Bridge line's cert= and iat-mode= arguments, and runs TLS
and the link handshake through it; the bridge proves the identity its Bridge line names. strace, put in
front of obfs4proxy in the ClientTransportPlugin line, shows where the transport itself connects.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import connectProtocol

from oppy.config.bridges import parse_bridge_line
from oppy.link.channel import ChannelState
from oppy.link.connection import RelayConnection
from oppy.netdoc.relay import RelayTarget
from oppy.pt.manager import PluggableTransports, TransportFailed, TransportReady
from oppy.pt.plugin import parse_transport_plugin_line
from tests.integration.test_begin_dir_only import inet_connects, strace
from tests.support.network import REPO, TestNetwork


def obfs4proxy() -> str:
    """Debian's obfs4proxy; scripts/setup installs it when it is missing."""
    if shutil.which("obfs4proxy") is None:
        subprocess.run([str(REPO / "scripts" / "setup")], check=True, cwd=REPO)
    return shutil.which("obfs4proxy")


def _obfs4_bridge(network: TestNetwork):
    return parse_bridge_line(network.bridge("obfs4")["bridge_line"])


def _transports(tmp_path: Path, exec_line: str, events: list) -> PluggableTransports:
    return PluggableTransports([parse_transport_plugin_line(f"obfs4 exec {exec_line}")],
                               str(tmp_path / "pt_state") + "/", reactor, observers=[events.append])


@defer.inlineCallbacks
def _open_link(transports: PluggableTransports, bridge, args=None, timeout: float = 30):
    """TLS and the link handshake with the bridge through the transport; the open connection."""
    relay = RelayTarget("bridge", bridge.fingerprint, bridge.address, bridge.port)
    connection = RelayConnection(relay, reactor)
    endpoint = transports.endpoint(bridge.transport, bridge.address, bridge.port,
                                   bridge.args if args is None else args)
    try:
        yield connectProtocol(endpoint, connection).addTimeout(timeout, reactor)
        yield connection.opened.addTimeout(timeout, reactor)
    except BaseException:
        connection.close()
        raise
    return connection


@pytest_twisted.inlineCallbacks
def test_obfs4proxy_carries_the_link_to_the_obfs4_bridge_and_connects_only_to_its_obfs4_port(network, tmp_path):
    bridge = _obfs4_bridge(network)
    trace_file = tmp_path / "obfs4proxy.strace"
    events: list = []
    transports = _transports(tmp_path, f"{strace()} -f -qq -e trace=connect -o {trace_file} {obfs4proxy()}", events)
    try:
        connection = yield _open_link(transports, bridge)
        assert connection.channel.state is ChannelState.OPEN
        assert connection.channel.expected_rsa_id == bridge.fingerprint  # proved by the CERTS cell
        ready = [event for event in events if isinstance(event, TransportReady)]
        assert len(ready) == 1 and ready[0].methods[0].host == "127.0.0.1"
        # oppy's side of the link is the transport's local port, not the bridge.
        assert connection.transport.getPeer().port == ready[0].methods[0].port
        connection.close()
    finally:
        yield transports.stop()
    connects = inet_connects(trace_file.read_text())
    assert connects == [("127.0.0.1", network.bridge("obfs4")["ports"]["obfs4"])], connects


@pytest_twisted.inlineCallbacks
def test_a_wrong_obfs4_cert_gets_no_link(network, tmp_path):
    """obfs4 resists probing: the bridge never answers a client without its key, so there is no link (the
    handshake runs into its timeout, or the transport gives up first)."""
    bridge = _obfs4_bridge(network)
    transports = _transports(tmp_path, obfs4proxy(), [])
    wrong = tuple((key, "A" * len(value)) if key == "cert" else (key, value) for key, value in bridge.args)
    try:
        with pytest.raises(Exception):  # noqa: B017 - a timeout or the transport's refusal: either way, no link
            yield _open_link(transports, bridge, wrong, timeout=8)
        right = yield _open_link(transports, bridge)  # the same transport, with the right cert
        right.close()
    finally:
        yield transports.stop()


@pytest_twisted.inlineCallbacks
def test_obfs4proxy_killed_mid_run_is_restarted_and_the_next_link_opens(network, tmp_path):
    bridge = _obfs4_bridge(network)
    events: list = []
    transports = _transports(tmp_path, obfs4proxy(), events)
    try:
        first = yield _open_link(transports, bridge)
        pid = transports.proxies[0].pid
        os.kill(pid, signal.SIGKILL)
        deadline = reactor.seconds() + 20
        while sum(isinstance(event, TransportReady) for event in events) < 2:
            assert reactor.seconds() < deadline, events
            yield task.deferLater(reactor, 0.05, lambda: None)
        failed = [event for event in events if isinstance(event, TransportFailed)]
        assert len(failed) == 1 and "terminated by signal 9" in failed[0].reason
        assert first.channel.state is not ChannelState.OPEN  # the old link died with the old process
        second = yield _open_link(transports, bridge)
        assert second.channel.state is ChannelState.OPEN
        assert transports.proxies[0].pid not in (None, pid)
        second.close()
    finally:
        yield transports.stop()
