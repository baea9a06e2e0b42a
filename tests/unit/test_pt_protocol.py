"""pt-spec's managed-proxy protocol: the environment, every message, malformed lines, the state machine."""

from __future__ import annotations

import logging

import pytest

from oppy.logs import NOTICE
from oppy.pt.plugin import PluginKind, parse_transport_plugin_line
from oppy.pt.protocol import (
    ClientMethod,
    ClientMethodError,
    ClientMethodsDone,
    EnvError,
    LogMessage,
    MalformedLine,
    ManagedProxyConfiguration,
    ProxyBroken,
    ProxyConfigured,
    ProxyDone,
    ProxyError,
    SocksVersion,
    StatusMessage,
    TransportProtocolError,
    UnknownLine,
    Version,
    VersionError,
    managed_proxy_environment,
    parse_kvline,
    parse_line,
)

# --------------------------------------------------------------------------- environment


def test_environment_has_the_client_variables_of_pt_spec_and_keeps_ours():
    environment = managed_proxy_environment(["obfs4", "meek_lite"], "/data/pt_state/",
                                            inherited={"PATH": "/usr/bin", "TOR_PT_PROXY": "socks5://stale:1"})
    assert environment == {
        "PATH": "/usr/bin",
        "TOR_PT_MANAGED_TRANSPORT_VER": "1",
        "TOR_PT_STATE_LOCATION": "/data/pt_state/",
        "TOR_PT_CLIENT_TRANSPORTS": "obfs4,meek_lite",
        "TOR_PT_EXIT_ON_STDIN_CLOSE": "1",
    }


def test_environment_never_passes_on_an_upstream_proxy():
    environment = managed_proxy_environment(["obfs4"], "/s/", inherited={"TOR_PT_PROXY": "socks5://127.0.0.1:8001"})
    assert "TOR_PT_PROXY" not in environment


def test_environment_refuses_a_name_that_is_no_c_identifier():
    with pytest.raises(TransportProtocolError, match="not a transport name"):
        managed_proxy_environment(["obfs4", "9lives"], "/s/", inherited={})


# --------------------------------------------------------------------------- each message


@pytest.mark.parametrize(("line", "message"), [
    ("VERSION 1", Version("1")),
    ("VERSION-ERROR no-version", VersionError("no-version")),
    ("ENV-ERROR No TOR_PT_AUTH_COOKIE_FILE when TOR_PT_EXTENDED_SERVER_PORT set",
     EnvError("No TOR_PT_AUTH_COOKIE_FILE when TOR_PT_EXTENDED_SERVER_PORT set")),
    ("PROXY DONE", ProxyDone()),
    ("PROXY-ERROR SOCKS 4 upstream proxies unsupported.", ProxyError("SOCKS 4 upstream proxies unsupported.")),
    ("CMETHOD trebuchet socks5 127.0.0.1:19999", ClientMethod("trebuchet", SocksVersion.SOCKS5, "127.0.0.1", 19999)),
    ("CMETHOD obfs4 socks4 [::1]:5", ClientMethod("obfs4", SocksVersion.SOCKS4, "::1", 5)),
    ("CMETHOD obfs4 socks5 127.0.0.1:1 ARGS:ignored", ClientMethod("obfs4", SocksVersion.SOCKS5, "127.0.0.1", 1)),
    ("CMETHOD-ERROR trebuchet no rocks available", ClientMethodError("trebuchet", "no rocks available")),
    ("CMETHODS DONE", ClientMethodsDone()),
    ('LOG SEVERITY=debug MESSAGE="Connected to bridge A"', LogMessage("debug", logging.DEBUG, "Connected to bridge A")),
    ("LOG SEVERITY=notice MESSAGE=plain", LogMessage("notice", NOTICE, "plain")),
    ("LOG MESSAGE=x SEVERITY=warning", LogMessage("warning", logging.WARNING, "x")),
    ("LOG SEVERITY=error MESSAGE=x", LogMessage("error", logging.ERROR, "x")),
    ("LOG SEVERITY=info MESSAGE=x", LogMessage("info", logging.INFO, "x")),
    ("STATUS TRANSPORT=obfs4 ADDRESS=198.51.100.123:1234 CONNECT=Success",
     StatusMessage("obfs4", (("ADDRESS", "198.51.100.123:1234"), ("CONNECT", "Success")))),
    ('STATUS TRANSPORT=obfs4 ADDRESS=198.51.100.222:2222 CONNECT=Failed ERRSTR="Connection refused"',
     StatusMessage("obfs4", (("ADDRESS", "198.51.100.222:2222"), ("CONNECT", "Failed"),
                             ("ERRSTR", "Connection refused")))),
    ("HELLO there", UnknownLine("HELLO", "HELLO there")),
    ("SMETHOD obfs4 0.0.0.0:1", UnknownLine("SMETHOD", "SMETHOD obfs4 0.0.0.0:1")),
])
def test_each_message(line, message):
    assert parse_line(line) == message


def test_quoted_values_use_tor_cstring_escapes():
    assert parse_kvline(r'A="q\"uote \\ \n\t\r\x41\101\047" B=\x') == [("A", 'q"uote \\ \n\t\rAA\''), ("B", "\\x")]
    assert parse_kvline('M="caf\u00e9 \\xff"') == [("M", "caf\u00e9 \\xff")]  # not UTF-8: shown, not dropped


@pytest.mark.parametrize("line", [
    "VERSION",
    "VERSION 1 2",
    "VERSION-ERROR",
    "ENV-ERROR",
    "PROXY-ERROR",
    "CMETHOD obfs4 socks5",
    "CMETHOD obfs4 http 127.0.0.1:1",
    "CMETHOD 4bfs socks5 127.0.0.1:1",
    "CMETHOD obfs4 socks5 localhost:1",
    "CMETHOD obfs4 socks5 127.0.0.1",
    "CMETHOD obfs4 socks5 127.0.0.1:0",
    "CMETHOD obfs4 socks5 127.0.0.1:65536",
    "CMETHOD obfs4 socks5 ::1:5",
    "CMETHOD obfs4 socks5 [127.0.0.1]:5",
    "CMETHOD-ERROR obfs4",
    "LOG SEVERITY=notice",
    "LOG MESSAGE=x",
    "LOG SEVERITY=warn MESSAGE=x",
    'LOG SEVERITY=notice MESSAGE="unterminated',
    r'LOG SEVERITY=notice MESSAGE="bad \q escape"',
    r'LOG SEVERITY=notice MESSAGE="\x4"',
    r'LOG SEVERITY=notice MESSAGE="\400"',
    r'LOG SEVERITY=notice MESSAGE="a NUL \0 inside"',
    "LOG SEVERITY=notice =x MESSAGE=y",
    "LOG SEVERITY=notice bare MESSAGE=y",
    "STATUS TRANSPORT=obfs4",
    "STATUS CONNECT=Success",
    "STATUS TRANSPORT=a TRANSPORT=b X=1",
    "",
    " VERSION 1",
    "VERSION\x001",
    "\u00e9t\u00e9 1",
    "{garbage}",
])
def test_malformed_lines_raise_the_module_error(line):
    with pytest.raises(TransportProtocolError):
        parse_line(line)


# --------------------------------------------------------------------------- the state machine

OBFS4PROXY_OUTPUT = (b"VERSION 1\nCMETHOD obfs4 socks5 127.0.0.1:42823\nCMETHOD meek_lite socks5 127.0.0.1:42033\n"
                     b"CMETHOD-ERROR foo no such transport is supported\nCMETHODS DONE\n")


def test_obfs4proxy_output_configures_the_proxy_however_it_is_cut():
    expected_methods = {"obfs4": ClientMethod("obfs4", SocksVersion.SOCKS5, "127.0.0.1", 42823),
                        "meek_lite": ClientMethod("meek_lite", SocksVersion.SOCKS5, "127.0.0.1", 42033)}
    for size in (1, 3, len(OBFS4PROXY_OUTPUT)):
        configuration = ManagedProxyConfiguration(["obfs4", "meek_lite", "foo"])
        events = []
        for start in range(0, len(OBFS4PROXY_OUTPUT), size):
            events += configuration.feed(OBFS4PROXY_OUTPUT[start:start + size])
        assert events[-1] == ProxyConfigured(expected_methods, {"foo": "no such transport is supported"})
        assert events[:-1] == [*expected_methods.values(), ClientMethodError("foo", "no such transport is supported")]
        assert configuration.configured


def test_crlf_line_ends_are_accepted():
    configuration = ManagedProxyConfiguration(["obfs4"])
    events = configuration.feed(b"VERSION 1\r\nCMETHODS DONE\r\n")
    assert events == [ProxyConfigured({}, {})]


@pytest.mark.parametrize(("output", "reason"), [
    (b"VERSION-ERROR no-version\n", "supports no version we speak"),
    (b"ENV-ERROR bad state dir\n", "could not use the environment"),
    (b"VERSION 2\n", "we only speak version 1"),
    (b"CMETHOD obfs4 socks5 127.0.0.1:1\n", "out of order"),
    (b"CMETHODS DONE\n", "out of order"),
    (b"VERSION 1\nVERSION 1\n", "out of order"),
    (b"VERSION 1\nCMETHODS DONE\nCMETHOD obfs4 socks5 127.0.0.1:1\n", "out of order"),
    (b"VERSION 1\nCMETHOD obfs4 socks5 nowhere\n", "expected IP:PORT"),
    (b"VERSION 1\nPROXY DONE\n", "given no upstream proxy"),
    (b"VERSION 1\nPROXY-ERROR nope\n", "cannot use the upstream proxy"),
    (b"Segmentation fault\x00\n", "not a pt-spec line"),
    (b"x" * 70000, "longer than"),
])
def test_protocol_errors_break_the_proxy_once(output, reason):
    configuration = ManagedProxyConfiguration(["obfs4"])
    events = configuration.feed(output)
    broken = [event for event in events if isinstance(event, ProxyBroken)]
    assert len(broken) == 1 and events[-1] is broken[0], events
    assert reason in broken[0].reason
    assert configuration.broken
    assert configuration.feed(b"VERSION 1\nCMETHODS DONE\n") == []


def test_log_and_status_lines_pass_through_in_any_state_and_bad_ones_break_nothing():
    configuration = ManagedProxyConfiguration(["obfs4"])
    events = configuration.feed(b'LOG SEVERITY=notice MESSAGE="starting"\nVERSION 1\nLOG SEVERITY=loud MESSAGE=x\n'
                                b"STATUS TRANSPORT=obfs4 CONNECT=Success\nCMETHODS DONE\n"
                                b"LOG SEVERITY=info MESSAGE=later\n")
    assert events[0] == LogMessage("notice", NOTICE, "starting")
    assert isinstance(events[1], MalformedLine) and "unknown severity" in events[1].reason
    assert events[2] == StatusMessage("obfs4", (("CONNECT", "Success"),))
    assert events[3] == ProxyConfigured({}, {})
    assert events[4] == LogMessage("info", logging.INFO, "later")


def test_unknown_lines_are_reported_once_and_ignored():
    configuration = ManagedProxyConfiguration(["obfs4"])
    events = configuration.feed(b"hello world\nsecond unknown line\nVERSION 1\nCMETHODS DONE\n")
    assert len(events) == 2
    assert isinstance(events[0], MalformedLine) and "unknown keyword 'hello'" in events[0].reason
    assert events[1] == ProxyConfigured({}, {})


# --------------------------------------------------------------------------- ClientTransportPlugin


def test_plugin_lines_as_tor_reads_them():
    managed = parse_transport_plugin_line("obfs4,meek_lite exec /usr/bin/obfs4proxy -enableLogging")
    assert managed.transports == ("obfs4", "meek_lite") and managed.kind is PluginKind.EXEC and managed.managed
    assert managed.argv == ("/usr/bin/obfs4proxy", "-enableLogging")
    external = parse_transport_plugin_line("obfs4 socks5 127.0.0.1:9999")
    assert (external.transports, external.kind, external.host, external.port) == (("obfs4",), PluginKind.SOCKS5,
                                                                                  "127.0.0.1", 9999)
    assert not external.managed
    assert parse_transport_plugin_line("x socks4 [::1]:7").host == "::1"


@pytest.mark.parametrize(("line", "reason"), [
    ("obfs4 exec", "too few arguments"),
    ("obfs-4 exec /bin/x", "not a C identifier"),
    (", exec /bin/x", "no transport name"),
    ("obfs4 http 127.0.0.1:1", "unknown type"),
    ("a,b socks5 127.0.0.1:1", "exactly one transport"),
    ("a socks5 localhost:1", "expected IP:PORT"),
    ("a socks5 127.0.0.1:0", "bad port"),
    ("a socks5 127.0.0.1:" + "9" * 5000, "bad port"),  # past int()'s digit limit (found by the fuzz test)
    ("a socks5 127.0.0.1:1 extra", "unexpected 'extra'"),
])
def test_bad_plugin_lines_name_the_problem(line, reason):
    with pytest.raises(TransportProtocolError, match=reason):
        parse_transport_plugin_line(line)
