"""Managed proxies as processes: launched with pt-spec's environment, LOG lines forwarded, restarted with a
backoff when they die or misbehave, stopped by closing stdin; and the SOCKS5 endpoint through a transport.

The proxies here are small real programs (shell scripts) that behave like a transport, well or badly;
tests/integration/test_pluggable_transports.py runs Debian's obfs4proxy against a real obfs4 bridge.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import struct

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ServerEndpoint, connectProtocol

from oppy.pt.manager import (
    RESTART_DELAY_INITIAL,
    RESTART_DELAY_MAX,
    PluggableTransports,
    ProxyState,
    TransportConnected,
    TransportConnecting,
    TransportFailed,
    TransportLaunched,
    TransportReady,
    TransportUnavailable,
)
from oppy.pt.plugin import parse_transport_plugin_line
from oppy.pt.socks5 import Socks5ClientError, SocksArgumentsError


def _script(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _transports(tmp_path, line: str, events: list) -> PluggableTransports:
    return PluggableTransports([parse_transport_plugin_line(line)], str(tmp_path / "pt_state") + "/", reactor,
                               observers=[events.append], stop_grace=0.5)


def _until(condition, timeout: float = 10.0) -> defer.Deferred:
    """Poll the real reactor until ``condition()`` holds."""
    deadline = reactor.seconds() + timeout

    @defer.inlineCallbacks
    def poll():
        while not condition():
            assert reactor.seconds() < deadline, "timed out"
            yield task.deferLater(reactor, 0.02, lambda: None)

    return poll()


WELL_BEHAVED = """
echo "VERSION 1"
echo "LOG SEVERITY=warning MESSAGE=\\"env $TOR_PT_MANAGED_TRANSPORT_VER $TOR_PT_CLIENT_TRANSPORTS $TOR_PT_EXIT_ON_STDIN_CLOSE $TOR_PT_STATE_LOCATION\\""
echo "CMETHOD obfs4 socks5 127.0.0.1:${PORT:-1}"
echo "CMETHOD-ERROR meek_lite not built in"
echo "CMETHODS DONE"
echo "a line on stderr" >&2
cat > /dev/null
echo "stdin closed" > "$TOR_PT_STATE_LOCATION/exited"
"""


@pytest_twisted.inlineCallbacks
def test_a_proxy_is_launched_once_configured_logged_and_stopped_by_closing_stdin(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="oppy.pt")
    events: list = []
    transports = _transports(tmp_path, f"obfs4,meek_lite exec {_script(tmp_path, 'proxy', WELL_BEHAVED)}", events)
    assert transports.provides("obfs4") and not transports.provides("snowflake")
    first, second = transports.address_of("obfs4"), transports.address_of("obfs4")
    assert (yield first) == ("127.0.0.1", 1) and (yield second) == ("127.0.0.1", 1)
    assert [type(event) for event in events] == [TransportLaunched, TransportReady]  # one process for both
    assert [method.transport for method in events[1].methods] == ["obfs4"]
    with pytest.raises(TransportUnavailable, match="cannot provide meek_lite: not built in"):
        yield transports.address_of("meek_lite")
    state = tmp_path / "pt_state"
    forwarded = [record for record in caplog.records if "env 1" in record.getMessage()]
    assert [record.levelno for record in forwarded] == [logging.WARNING]
    assert f"env 1 obfs4,meek_lite 1 {state}/" in forwarded[0].getMessage()
    yield _until(lambda: any("a line on stderr" in record.getMessage() for record in caplog.records))
    yield transports.stop()
    assert (state / "exited").read_text() == "stdin closed\n"  # it left on its own, before any signal
    assert transports.proxies[0].state is ProxyState.STOPPED


@pytest_twisted.inlineCallbacks
def test_an_unknown_transport_is_refused_with_its_name(tmp_path):
    transports = _transports(tmp_path, f"obfs4 exec {_script(tmp_path, 'proxy', WELL_BEHAVED)}", [])
    with pytest.raises(TransportUnavailable, match="no ClientTransportPlugin line provides transport snowflake"):
        yield transports.address_of("snowflake")


def test_a_missing_binary_is_one_warning_and_retried_with_a_backoff(tmp_path, caplog):
    clock = task.Clock()
    events: list = []
    transports = PluggableTransports([parse_transport_plugin_line("obfs4 exec /nonexistent/obfs4proxy")],
                                     str(tmp_path) + "/", clock, observers=[events.append])
    transports.launch(["obfs4", "snowflake"])
    failure = transports.address_of("obfs4")
    failures = []
    failure.addErrback(failures.append)
    assert "cannot launch /nonexistent/obfs4proxy: no such file" in str(failures[0].value)
    assert "no such file; restarting" in transports.proxies[0].describe_wait()
    delays = []
    for _ in range(9):
        delays.append(events[-1].retry_in)
        clock.advance(events[-1].retry_in)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert all(isinstance(event, TransportFailed) for event in events)
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "no such file" in warnings[0].getMessage()
    assert RESTART_DELAY_INITIAL == 1 and RESTART_DELAY_MAX == 60


@pytest_twisted.inlineCallbacks
def test_a_proxy_that_exits_at_start_says_so_and_is_started_again(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="oppy.pt")
    events: list = []
    transports = _transports(tmp_path, f"obfs4 exec {_script(tmp_path, 'proxy', 'echo VERSION 1; exit 3')}", events)
    with pytest.raises(TransportUnavailable, match="terminated with status code 3"):
        yield transports.address_of("obfs4")
    yield _until(lambda: sum(isinstance(event, TransportFailed) for event in events) == 2)
    assert [type(event) for event in events] == [TransportLaunched, TransportFailed, TransportLaunched, TransportFailed]
    assert [event.retry_in for event in events if isinstance(event, TransportFailed)] == [1, 2]
    down = [record for record in caplog.records if "is down" in record.getMessage()]
    assert [record.levelno for record in down] == [logging.WARNING, logging.INFO]
    yield transports.stop()


@pytest.mark.parametrize(("output", "reason"), [
    ("VERSION-ERROR no-version", "supports no version we speak"),
    ("VERSION 1\\nCMETHOD obfs4 socks5 somewhere", "expected IP:PORT"),
    ("Segmentation fault \\001\\000", "not a pt-spec line"),
])
@pytest_twisted.inlineCallbacks
def test_a_proxy_that_breaks_the_protocol_is_killed_and_restarted(tmp_path, output, reason):
    events: list = []
    script = _script(tmp_path, "proxy", f'printf "{output}\\n"; sleep 30')
    transports = _transports(tmp_path, f"obfs4 exec {script}", events)
    with pytest.raises(TransportUnavailable, match=reason):
        yield transports.address_of("obfs4")
    pid = [proxy.pid for proxy in transports.proxies]
    assert pid == [None]  # forgotten, and killed (not left behind)
    yield transports.stop()


@pytest_twisted.inlineCallbacks
def test_stopping_from_the_failure_s_errback_leaves_no_restart_behind(tmp_path):
    """The waiter's errback runs inside the failure handling: stopping there must cancel the restart (it was
    scheduled after the errback, and the proxy went on restarting for the rest of the process)."""
    script = _script(tmp_path, "proxy", 'printf "VERSION-ERROR no-version\\n"; sleep 30')
    transports = _transports(tmp_path, f"obfs4 exec {script}", [])
    stopped = []

    def stop(failure):
        failure.trap(TransportUnavailable)
        stopped.append(transports.stop())

    yield transports.address_of("obfs4").addErrback(stop)
    yield stopped[0]
    yield task.deferLater(reactor, 0, lambda: None)  # the failure handling the errback ran inside has returned
    proxy = transports.proxies[0]
    assert proxy.state is ProxyState.STOPPED
    assert not [call for call in reactor.getDelayedCalls() if call.func == proxy._launch]


@pytest_twisted.inlineCallbacks
def test_garbage_that_is_not_a_message_is_reported_once_and_the_bootstrap_says_what_it_waits_for(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="oppy.pt")
    script = _script(tmp_path, "proxy", 'echo "hello world"; echo "more chatter"; sleep 30')
    transports = _transports(tmp_path, f"obfs4 exec {script}", [])
    transports.launch(["obfs4"])
    yield _until(lambda: any("ignores" in record.getMessage() for record in caplog.records))
    ignored = [record for record in caplog.records if "ignores" in record.getMessage()]
    assert len(ignored) == 1 and "'hello world'" in ignored[0].getMessage()
    assert transports.proxies[0].describe_wait() == f'managed proxy "{script}" for obfs4 (starting)'
    yield transports.stop()


@pytest_twisted.inlineCallbacks
def test_a_proxy_killed_while_running_is_restarted_and_its_new_address_used(tmp_path):
    events: list = []
    body = 'echo VERSION 1; echo "CMETHOD obfs4 socks5 127.0.0.1:$$"; echo CMETHODS DONE; cat > /dev/null'
    transports = _transports(tmp_path, f"obfs4 exec {_script(tmp_path, 'proxy', body)}", events)
    first_pid = (yield transports.address_of("obfs4"))[1]
    os.kill(first_pid, signal.SIGKILL)
    yield _until(lambda: len(events) == 5)
    assert [type(event) for event in events] == [TransportLaunched, TransportReady, TransportFailed,
                                                 TransportLaunched, TransportReady]
    assert "terminated by signal 9" in events[2].reason
    second_pid = (yield transports.address_of("obfs4"))[1]
    assert second_pid != first_pid
    yield transports.stop()


@pytest_twisted.inlineCallbacks
def test_a_proxy_that_ignores_stdin_close_and_sigterm_is_killed(tmp_path):
    body = "trap '' TERM; echo VERSION 1; echo CMETHODS DONE; while true; do sleep 0.05; done"
    transports = _transports(tmp_path, f"obfs4 exec {_script(tmp_path, 'proxy', body)}", [])
    transports.launch(["obfs4"])
    yield _until(lambda: transports.proxies[0].state is ProxyState.READY)
    started = reactor.seconds()
    yield transports.stop()
    assert 0.9 <= reactor.seconds() - started < 5  # two grace periods of 0.5 s, then SIGKILL


# --------------------------------------------------------------------------- SOCKS5 through a transport


class _Socks5Transport(protocol.Protocol):
    """A transport's SOCKS5 side as pt-spec describes it: username/password only, then echo what it gets."""

    def connectionMade(self):  # noqa: N802
        self.buffer = b""
        self.step = "greeting"

    def dataReceived(self, data):  # noqa: N802
        if self.step == "echo":
            self.transport.write(data)
            return
        self.buffer += data
        if self.step == "greeting" and len(self.buffer) >= 3:
            assert self.buffer[:3] == b"\x05\x01\x02"
            self.buffer, self.step = self.buffer[3:], "auth"
            self.transport.write(b"\x05\x02")
        if self.step == "auth" and len(self.buffer) >= 2 and len(self.buffer) >= 3 + self.buffer[1]:
            ulen = self.buffer[1]
            plen = self.buffer[2 + ulen]
            if len(self.buffer) >= 3 + ulen + plen:
                self.factory.credentials.append((self.buffer[2:2 + ulen], self.buffer[3 + ulen:3 + ulen + plen]))
                self.buffer, self.step = self.buffer[3 + ulen + plen:], "connect"
                self.transport.write(b"\x01\x00")
        if self.step == "connect" and len(self.buffer) >= 10:
            self.factory.targets.append((self.buffer[4:8], struct.unpack("!H", self.buffer[8:10])[0]))
            refuse = self.factory.refuse
            self.transport.write(b"\x05" + bytes((5 if refuse else 0,)) + b"\x00\x01\x7f\x00\x00\x01\x00\x01"
                                 + (b"" if refuse else b"hello"))
            self.buffer, self.step = b"", "echo"


class _Client(protocol.Protocol):
    def connectionMade(self):  # noqa: N802
        self.received = b""
        self.transport.write(b"ping")

    def dataReceived(self, data):  # noqa: N802
        self.received += data


@pytest.mark.parametrize("refuse", [False, True])
@pytest_twisted.inlineCallbacks
def test_the_endpoint_speaks_socks5_with_the_bridge_arguments_then_hands_the_connection_over(tmp_path, refuse):
    factory = protocol.Factory.forProtocol(_Socks5Transport)
    factory.credentials, factory.targets, factory.refuse = [], [], refuse
    listener = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    events: list = []
    line = f"obfs4 socks5 127.0.0.1:{listener.getHost().port}"
    transports = _transports(tmp_path, line, events)
    client = _Client()
    try:
        endpoint = transports.endpoint("obfs4", "192.0.2.7", 443, [("cert", "a;b=c"), ("iat-mode", "0")])
        connecting = connectProtocol(endpoint, client)
        if refuse:
            with pytest.raises(Socks5ClientError, match="CONNECTION_REFUSED"):
                yield connecting
        else:
            assert (yield connecting) is client
            yield _until(lambda: client.received == b"helloping")
            client.transport.loseConnection()
        assert factory.credentials == [(b"cert=a\\;b\\=c;iat-mode=0", b"\0")]
        assert factory.targets == [(bytes([192, 0, 2, 7]), 443)]
        assert [type(event) for event in events] == [TransportConnecting, TransportConnected]
        assert events[0].bridge == "192.0.2.7:443"
    finally:
        yield listener.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_proxy_that_exits_while_oppy_shuts_down_is_not_restarted_nor_warned_about(tmp_path, caplog):
    events: list = []
    body = 'echo VERSION 1; echo "CMETHOD obfs4 socks5 127.0.0.1:$$"; echo CMETHODS DONE; cat > /dev/null'
    transports = _transports(tmp_path, f"obfs4 exec {_script(tmp_path, 'proxy', body)}", events)
    pid = (yield transports.address_of("obfs4"))[1]
    transports.stop_restarting()
    os.kill(pid, signal.SIGKILL)  # as a Ctrl-C in the terminal, which reaches the whole process group
    yield _until(lambda: transports.proxies[0].pid is None)
    yield task.deferLater(reactor, RESTART_DELAY_INITIAL + 0.2, lambda: None)
    assert [type(event) for event in events] == [TransportLaunched, TransportReady]
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    with pytest.raises(TransportUnavailable, match="shutting down"):
        yield transports.address_of("obfs4")
    yield transports.stop()


@pytest_twisted.inlineCallbacks
def test_arguments_too_long_for_socks5_fail_the_connection_not_the_caller(tmp_path):
    transports = _transports(tmp_path, "obfs4 socks5 127.0.0.1:1", [])
    endpoint = transports.endpoint("obfs4", "192.0.2.7", 443, [("cert", "=" * 300)])  # 600 bytes escaped
    with pytest.raises(SocksArgumentsError, match="at most 510"):
        yield connectProtocol(endpoint, _Client())
