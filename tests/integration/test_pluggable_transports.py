"""Pluggable transports against a real obfs4 bridge: Debian's obfs4proxy as oppy's managed proxy.

The private network's obfs4 bridge (`scripts/testnet bridges`: a tor bridge behind obfs4proxy, not in the
consensus) is reached the way oppy reaches it: oppy launches obfs4proxy with pt-spec's environment, reads
where it listens, speaks SOCKS5 to it with the Bridge line's cert= and iat-mode= arguments, and runs TLS
and the link handshake through it; the bridge proves the identity its Bridge line names. strace, put in
front of obfs4proxy in the ClientTransportPlugin line, shows where the transport itself connects.
"""

from __future__ import annotations

import hashlib
import os
import socket
import re
import shutil
import signal
import subprocess
import time
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
from tests.integration.test_begin_dir_only import _CONNECT_RE, inet_connects, strace
from tests.integration.test_daemon import TEN_MB, curl, expected_sha256
from tests.support.network import REPO, TestNetwork
from tests.support.oppy_process import OppyProcess, free_port


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


def _connects_by_program(trace: str) -> dict[str, list[tuple[str, int]]]:
    """strace -f -Y: (address, port) of each IPv4/IPv6 connect(), by the name of the program that made it."""
    found: dict[str, list[tuple[str, int]]] = {}
    for line in trace.splitlines():
        match = re.match(r"\d+<([^>]*)> ", line)
        connect = _CONNECT_RE.search(line)
        if match and connect:
            port, v4, v6 = connect.groups()
            found.setdefault(match.group(1), []).append((v4 or v6, int(port)))
    return found


def test_connects_by_program_reads_strace_lines():
    trace = ('17<python3> connect(7, {sa_family=AF_INET, sin_port=htons(4000), sin_addr=inet_addr("127.0.0.1")}, '
             '16) = -1 EINPROGRESS (Operation now in progress)\n'
             '18<obfs4proxy> connect(3, {sa_family=AF_INET, sin_port=htons(19813), '
             'sin_addr=inet_addr("127.0.0.1")}, 16) = 0\n'
             '19<python3> connect(3, {sa_family=AF_UNIX, sun_path="/run/x"}, 110) = 0\n')
    assert _connects_by_program(trace) == {"python3": [("127.0.0.1", 4000)], "obfs4proxy": [("127.0.0.1", 19813)]}


def _transport_ports(oppy: OppyProcess) -> list[int]:
    """The local ports obfs4proxy announced, launch after launch (oppy's notice "... is ready: obfs4 at ...")."""
    return [int(match.group(1)) for line in oppy.lines
            if (match := re.search(r'Managed proxy ".*obfs4proxy" is ready: obfs4 at 127\.0\.0\.1:(\d+)', line))]


def _transport_pid(oppy: OppyProcess) -> int:
    """obfs4proxy's process id: oppy's only child."""
    children = Path(f"/proc/{oppy.pid}/task/{oppy.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def test_oppy_bootstraps_through_the_obfs4_bridge_talks_only_to_the_transport_and_survives_its_death(
        network: TestNetwork, tmp_path: Path):
    bridge = network.bridge("obfs4")
    trace_file = tmp_path / "connect.strace"
    control_port = free_port()
    oppy = OppyProcess(network, tmp_path / "data",
                       extra_lines=["UseBridges 1", f"Bridge {bridge['bridge_line']}",
                                    f"ClientTransportPlugin obfs4 exec {obfs4proxy()}",
                                    f"ControlPort 127.0.0.1:{control_port}"],
                       command_prefix=[strace(), "-f", "-qq", "-Y", "-e", "trace=connect", "-o", str(trace_file),
                                       "--"])
    try:
        oppy.wait_ready()
        fetched = curl(oppy, network.url(f"/bytes/{TEN_MB}"))
        assert fetched.returncode == 0, fetched.stderr
        assert len(fetched.stdout) == TEN_MB
        assert hashlib.sha256(fetched.stdout).hexdigest() == expected_sha256(network, TEN_MB)

        # The transport dies mid-run: oppy starts it again (a controller hears TRANSPORT_LAUNCHED), and the
        # next fetch goes through the new one.
        # (A raw control connection: stem files TRANSPORT_LAUNCHED events under their "type" field, "client",
        # so its listeners for them are never called.)
        with socket.create_connection(("127.0.0.1", control_port), timeout=30) as control:
            control.sendall(b"AUTHENTICATE\r\nSETEVENTS TRANSPORT_LAUNCHED\r\n")
            replies = control.makefile("rb")
            assert [replies.readline(), replies.readline()] == [b"250 OK\r\n", b"250 OK\r\n"]
            first_pid = _transport_pid(oppy)
            os.kill(first_pid, signal.SIGKILL)
            oppy.wait_for_line(r"is down: its process terminated by signal 9\. Restarting it in 1 s", timeout=30)
            event = replies.readline()
        assert _transport_pid(oppy) != first_pid
        launched = re.fullmatch(rb"650 TRANSPORT_LAUNCHED client obfs4 127\.0\.0\.1 (\d+)\r\n", event)
        assert launched, event
        # The event can come before the test's reader has read oppy's notice of the same launch (seen once
        # under load: only the first launch's line was read yet), so that line is waited for.
        deadline = time.monotonic() + 10
        while len(_transport_ports(oppy)) < 2:
            assert time.monotonic() < deadline, oppy.lines[-20:]
            time.sleep(0.1)
        assert _transport_ports(oppy)[1:] == [int(launched[1])]
        fetched = curl(oppy, network.url("/bytes/1000000"))
        assert fetched.returncode == 0, fetched.stderr
        assert hashlib.sha256(fetched.stdout).hexdigest() == expected_sha256(network, 1000000)
        second_pid = _transport_pid(oppy)
    finally:
        assert oppy.stop() == 0
    deadline = time.monotonic() + 5
    while Path(f"/proc/{second_pid}").exists():  # stopped with oppy (stdin closed)
        assert time.monotonic() < deadline, "obfs4proxy outlived oppy"
        time.sleep(0.1)

    phases = [match.group(1) for line in oppy.lines if (match := re.search(r"Bootstrapped \d+% \((\w+)\)", line))]
    assert phases[:4] == ["starting", "conn_pt", "conn_done_pt", "conn_done"]
    assert phases[-1] == "done"
    connects = _connects_by_program(trace_file.read_text())
    transport_ports = {("127.0.0.1", port) for port in _transport_ports(oppy)}
    assert set(connects.pop("obfs4proxy")) == {("127.0.0.1", bridge["ports"]["obfs4"])}
    oppy_connects = [address for addresses in connects.values() for address in addresses]
    assert oppy_connects and set(oppy_connects) <= transport_ports, (connects, transport_ports)


def test_a_missing_transport_binary_is_one_warning_and_the_bootstrap_says_what_it_waits_for(network, tmp_path):
    missing = tmp_path / "no-such-obfs4proxy"
    control_port = free_port()
    oppy = OppyProcess(network, tmp_path / "data",
                       extra_lines=["UseBridges 1", f"Bridge {network.bridge('obfs4')['bridge_line']}",
                                    f"ClientTransportPlugin obfs4 exec {missing}", f"ControlPort 127.0.0.1:{control_port}"])
    try:
        oppy.wait_for_line(r"Bootstrapped 1% \(conn_pt\): Connecting to pluggable transport", timeout=30)
        oppy.wait_for_line(rf'Managed proxy "{re.escape(str(missing))}" for obfs4 is down: cannot launch '
                           rf"{re.escape(str(missing))}: no such file\. Restarting it in 1 s\.", timeout=30)
        time.sleep(4)  # the retries after 1 s and 2 s fail the same way
        with socket.create_connection(("127.0.0.1", control_port), timeout=30) as control:
            control.sendall(b"AUTHENTICATE\r\nGETINFO status/bootstrap-phase\r\n")
            replies = control.makefile("rb")
            assert replies.readline() == b"250 OK\r\n"
            phase = replies.readline().decode()
        assert phase.startswith("250-status/bootstrap-phase=WARN BOOTSTRAP PROGRESS=1 TAG=conn_pt "), phase
        assert "pluggable transport obfs4 is not running" in phase and "no such file" in phase, phase
    finally:
        assert oppy.stop() == 0
    about_the_transport = [line for line in oppy.lines if "[warn]" in line and "Managed proxy" in line]
    assert len(about_the_transport) == 1, about_the_transport
    phases = [match.group(1) for line in oppy.lines if (match := re.search(r"Bootstrapped \d+% \((\w+)\)", line))]
    assert phases == ["starting", "conn_pt"]


def test_an_obfs4_bridge_line_without_fingerprint_learns_the_identity_through_the_transport(network: TestNetwork,
                                                                                          tmp_path: Path):
    """``Bridge obfs4 IP:PORT cert=... iat-mode=0`` as tor takes it: the identity the link handshake proves
    through obfs4proxy is learned, and the bridge is used by it."""
    bridge = network.bridge("obfs4")
    line = parse_bridge_line(bridge["bridge_line"])
    without = " ".join(["obfs4", line.addrport, *(f"{key}={value}" for key, value in line.args)])
    trace_file = tmp_path / "connect.strace"
    oppy = OppyProcess(network, tmp_path / "data",
                       extra_lines=["UseBridges 1", f"Bridge {without}",
                                    f"ClientTransportPlugin obfs4 exec {obfs4proxy()}"],
                       command_prefix=[strace(), "-f", "-qq", "-Y", "-e", "trace=connect", "-o", str(trace_file),
                                       "--"])
    try:
        oppy.wait_ready()
        fetched = curl(oppy, network.url("/bytes/1000000"))
    finally:
        assert oppy.stop() == 0
    assert fetched.returncode == 0, fetched.stderr
    assert hashlib.sha256(fetched.stdout).hexdigest() == expected_sha256(network, 1000000)
    assert any(f"Learned fingerprint ${bridge['fingerprint']} for bridge {line.addrport}." in text
               for text in oppy.lines)
    connects = _connects_by_program(trace_file.read_text())
    assert set(connects.pop("obfs4proxy")) == {("127.0.0.1", bridge["ports"]["obfs4"])}
    oppy_connects = [address for addresses in connects.values() for address in addresses]
    assert oppy_connects and set(oppy_connects) <= {("127.0.0.1", port) for port in _transport_ports(oppy)}
