"""oppy.config: tor's torrc syntax, option types, defaults, the command line, GETCONF/SETCONF.

Expected error texts and behaviours were checked against tor 0.4.9.11 (``tor --verify-config``,
``tor --dump-config short``); the line-syntax cases are also compared with a live tor when one is
installed.
"""

import io
import os
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oppy.config import (
    DEFAULT_LONG_LIVED_PORTS,
    DEFAULT_SOCKS_FLAGS,
    OPTION_NAMES,
    Config,
    ConfigError,
    ConfigLine,
    LineCommand,
    LogSpec,
    PortConfig,
    UnknownOptionError,
    canonical_option_name,
    config_from_lines,
    config_from_torrc_text,
    load_config,
    option_type_name,
    parse_command_line,
    parse_interval,
    parse_memunit,
    parse_torrc_text,
    quote_value,
    read_torrc_file,
    reload_config,
)
from oppy.crypto.s2k import hash_password
from tests.support.tools import make_present

AUTHORITY = ("auth0 orport=5000 no-v2 v3ident=" + "A" * 40 + " 127.0.0.1:7000 " + "B" * 40)
HASH = "16:D55D2544D35A76A86054A13DC6DCA992C50E7B90C487F80FBCCF7B890F"  # tor --hash-password foo


def pairs(text):
    return [(line.key, line.value) for line in parse_torrc_text(text)]


# --------------------------------------------------------------------------- line syntax


def test_comments_blank_lines_and_whitespace():
    text = "# a comment\n\n   SocksPort   9150   # trailing comment\n\t\n#SocksPort 1\nLog notice stdout\n"
    assert pairs(text) == [("SocksPort", "9150"), ("Log", "notice stdout")]


def test_hash_ends_the_value_and_the_keyword():
    assert pairs("ContactInfo a#b\nSocksPort#9050\n") == [("ContactInfo", "a"), ("SocksPort", "")]


def test_backslash_continuation_with_comment_lines_inside():
    text = "DirAuthority auth0 \\\n# a comment line inside\n   orport=5000 \\\n   127.0.0.1:7000 FP\nSocksPort 1\n"
    assert pairs(text) == [("DirAuthority", "auth0    orport=5000    127.0.0.1:7000 FP"), ("SocksPort", "1")]


def test_continuation_at_end_of_text_keeps_the_backslash_as_tor_does():
    assert pairs("ContactInfo a\\\n") == [("ContactInfo", "a\\")]


def test_quoted_values_and_c_escapes():
    text = 'DataDirectory "/tmp/a dir/#not a comment"  # a comment\nContactInfo "q\\x41\\101\\n\\t\\\\\\"\\\'"\n'
    assert pairs(text) == [("DataDirectory", "/tmp/a dir/#not a comment"), ("ContactInfo", "qAA\n\t\\\"'")]


def test_quoted_utf8_and_crlf_files(tmp_path):
    assert pairs('DataDirectory "/tmp/\\303\\251t\\xc3\\xa9"\r\n') == [("DataDirectory", "/tmp/\u00e9t\u00e9")]
    torrc = tmp_path / "torrc"
    torrc.write_bytes(b'DataDirectory "/tmp/x"\r\nSocksPort 1\r\n')  # tor drops every CR of a file
    assert [(line.key, line.value) for line in read_torrc_file(str(torrc))] == [
        ("DataDirectory", "/tmp/x"), ("SocksPort", "1")]
    assert config_from_torrc_text('DataDirectory "/tmp/x"\r\nSocksPort 1\r\n').data_directory == "/tmp/x"


@pytest.mark.parametrize("text, message", [
    ('ContactInfo "abc" junk\n', "Excess data after quoted string"),
    ('ContactInfo "ab\\q"\n', "Invalid escape sequence"),
    ('ContactInfo "ab\\400"\n', "Invalid escape sequence"),
    ('ContactInfo "ab\\x4"\n', "Invalid escape sequence"),
    ('ContactInfo "unterminated\nSocksPort 1\n', "Invalid escape sequence"),
    ('ContactInfo "unterminated', "Invalid escape sequence"),
])
def test_bad_quoted_values(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_torrc_text(text)


def test_plus_and_slash_prefixes():
    assert parse_torrc_text("+SocksPort 1\n/Log\n") == [
        ConfigLine("SocksPort", "1", LineCommand.APPEND), ConfigLine("Log", "", LineCommand.CLEAR)]


def test_byte_order_mark_is_ignored():
    assert pairs("\ufeffSocksPort 1\n") == [("SocksPort", "1")]


LIVE_TOR_CASES = [
    "ContactInfo a \\\n# c\n  b # x\n",
    "ContactInfo a \\\n  b # x\n c\n",
    "ContactInfo   x y   \t \n",
    'ContactInfo "q\\x41\\101\\t\\\\" # c\n',
    "ContactInfo\\\nfoo\n",
    "ContactInfo a \\\n#c \\\n d\n",
    "ContactInfo 'single'\n",
]


def test_line_syntax_matches_a_live_tor(tmp_path):
    """tor --dump-config prints the value it read; ours must be the same."""
    make_present("tor")
    for number, case in enumerate(LIVE_TOR_CASES):
        torrc = tmp_path / f"torrc{number}"
        torrc.write_text(case)
        result = subprocess.run(
            ["tor", "--ignore-missing-torrc", "--defaults-torrc", os.devnull, "-f", str(torrc),
             "--DataDirectory", str(tmp_path / "data"), "--dump-config", "short"],
            capture_output=True, text=True, timeout=30)
        tor_lines = [line for line in result.stdout.splitlines() if line.startswith("ContactInfo ")]
        (key, value), = pairs(case)
        # tor quotes a value only for a leading quote, CR, LF, '#' or a non-printable character.
        needs_quotes = value.startswith('"') or any(c in "\r\n#" or not " " <= c <= "~" for c in value)
        assert tor_lines == [f"ContactInfo {quote_value(value) if needs_quotes else value}"], case


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40))
def test_quote_value_round_trips(value):
    assert pairs(f"ContactInfo {quote_value(value)}\n") == [("ContactInfo", value)]


# --------------------------------------------------------------------------- %include


def test_include_needs_a_file_system():
    with pytest.raises(ConfigError, match="%include is only supported in a torrc file read with -f"):
        config_from_torrc_text("%include /etc/tor/torrc.d\n")


def test_include_file_directory_and_wildcard(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.conf").write_text("SocksPort 2\n")
    (tmp_path / "d" / "a.conf").write_text("SocksPort 1\n")
    (tmp_path / "d" / ".hidden").write_text("SocksPort 99\n")
    (tmp_path / "x1.conf").write_text("SocksPort 3\n")
    (tmp_path / "x2.conf").write_text("SocksPort 4\n")
    torrc = tmp_path / "torrc"
    torrc.write_text(f"SocksPort 0.0.0.0:9\n%include {tmp_path / 'd'}\n%include {tmp_path}/x?.conf\nSocksPort 5\n")
    assert [line.value for line in read_torrc_file(str(torrc))] == ["0.0.0.0:9", "1", "2", "3", "4", "5"]


def test_include_loops_and_missing_files_fail(tmp_path):
    torrc = tmp_path / "torrc"
    torrc.write_text(f"%include {torrc}\n")
    with pytest.raises(ConfigError, match="nested %includes"):
        read_torrc_file(str(torrc))
    torrc.write_text(f"%include {tmp_path}/nothing-*.conf\n")
    with pytest.raises(ConfigError, match="Error reading included configuration"):
        read_torrc_file(str(torrc))


# --------------------------------------------------------------------------- defaults


def test_defaults_are_tors():
    config = config_from_torrc_text("")
    assert config == Config()
    assert config.socks_ports == (PortConfig("127.0.0.1", 9050, DEFAULT_SOCKS_FLAGS, None, "9050"),)
    assert config.control_ports == ()
    assert config.data_directory == "~/.oppy"
    assert config.data_directory_path() == __import__("pathlib").Path(os.path.expanduser("~/.oppy"))
    assert config.cookie_auth_file_path() == config.data_directory_path() / "control_auth_cookie"
    assert config.logs == (LogSpec("notice", "err", "stdout", None, "notice stdout"),)
    assert (config.max_circuit_dirtiness, config.circuit_build_timeout, config.socks_timeout) == (600, 0, 120)
    assert config.learn_circuit_build_timeout is True
    assert config.testing_tor_network is False
    assert config.client_reject_internal_addresses is True
    assert config.enforce_distinct_subnets is True
    assert config.safe_logging == "1" and config.scrub_addresses
    assert config.max_client_circuits_pending == 32
    assert config.cookie_authentication is False and config.cookie_auth_file is None
    assert config.hashed_control_passwords == () and config.dir_authorities == () and config.fallback_dirs == ()
    assert config.leave_streams_unattached is False and config.owning_controller_process is None
    assert config.to_torrc_lines() == []
    assert config.warnings == ()


def test_keywords_are_case_insensitive():
    config = config_from_torrc_text("socksPORT 9150\nMAXCIRCUITDIRTINESS 60\ncookieauthentication 1\n")
    assert config.socks_ports[0].port == 9150
    assert config.max_circuit_dirtiness == 60
    assert config.cookie_authentication is True
    assert canonical_option_name("__leavestreamsunattached") == "__LeaveStreamsUnattached"


def test_unknown_option_is_tors_message():
    with pytest.raises(UnknownOptionError) as caught:
        config_from_torrc_text("SocksPort 9050\nFoo 1\n")
    assert str(caught.value) == "Unknown option 'Foo'.  Failing."
    assert caught.value.option == "Foo"
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, ValueError)


# --------------------------------------------------------------------------- SocksPort / ControlPort


@pytest.mark.parametrize("value, address, port", [
    ("9150", "127.0.0.1", 9150),
    ("127.0.0.2:9150", "127.0.0.2", 9150),
    ("0.0.0.0:9150", "0.0.0.0", 9150),
    ("[::1]:9150", "::1", 9150),
    ("localhost:9150", "127.0.0.1", 9150),
    ("auto", "127.0.0.1", 0),
    ("AUTO", "127.0.0.1", 0),
    ("127.0.0.5:auto", "127.0.0.5", 0),
    ("[::1]:auto", "::1", 0),
])
def test_socks_port_forms(value, address, port):
    (listener,) = config_from_torrc_text(f"SocksPort {value}\n").socks_ports
    assert (listener.address, listener.port, listener.is_auto) == (address, port, port == 0)
    assert listener.value == value
    assert listener.flags == DEFAULT_SOCKS_FLAGS


def test_socks_port_zero_disables_and_repeats_accumulate():
    assert config_from_torrc_text("SocksPort 0\n").socks_ports == ()
    assert config_from_torrc_text("SocksPort 0\n").get_option("SocksPort") == ["0"]
    config = config_from_torrc_text("SocksPort 9050\nSocksPort 127.0.0.1:9150\nsocksport auto\n")
    assert [(p.address, p.port) for p in config.socks_ports] == [("127.0.0.1", 9050), ("127.0.0.1", 9150),
                                                                 ("127.0.0.1", 0)]
    assert config.get_option("socksport") == ["9050", "127.0.0.1:9150", "auto"]


def test_socks_port_flags_are_a_set_with_tors_defaults():
    (port,) = config_from_torrc_text("SocksPort 9050 IsolateDestAddr isolatedestports NoIsolateSOCKSAuth "
                                     "SessionGroup=7 ExtendedErrors\n").socks_ports
    assert {"IsolateDestAddr", "IsolateDestPort", "IsolateClientAddr", "ExtendedErrors"} <= port.flags
    assert "IsolateSOCKSAuth" not in port.flags
    assert "PreferSOCKSNoAuth" in port.flags  # tor: no SOCKS-auth isolation -> prefer no auth
    assert port.isolation == {"IsolateDestAddr", "IsolateDestPort", "IsolateClientAddr"}
    assert port.session_group == 7
    (port,) = config_from_torrc_text("SocksPort 9050 OnionTrafficOnly\n").socks_ports
    assert not port.flags & {"IPv4Traffic", "IPv6Traffic", "DNSRequest"} and "OnionTraffic" in port.flags
    (port,) = config_from_torrc_text("SocksPort 9050 CacheDNS NoUseDNSCache\n").socks_ports
    assert {"CacheIPv4DNS", "CacheIPv6DNS"} <= port.flags and not port.flags & {"UseIPv4Cache", "UseIPv6Cache"}


@pytest.mark.parametrize("value, reason", [
    ("99999", "out of range"),
    ("127.0.0.1", "address but no port"),
    ("127.0.0.1:0", "out of range"),
    ("127.0.0.1:70000", "out of range"),
    ("127.0.0.1:abc", "out of range"),
    ("example.com:9050", "could not parse address"),
    ("[::1:9050", "unterminated IPv6"),
    ("[::1]9050", "could not parse address"),
    ("unix:/tmp/socks", "unix sockets"),
    ("9050 IsolateBogus", "unrecognized SocksPort option 'IsolateBogus'"),
    ("9050 GroupWritable", "unix sockets only"),
    ("9050 NoOnionTrafficOnly", "NoOnionTrafficOnly is not supported"),
    ("9050 SessionGroup=x", "invalid SessionGroup"),
    ("9050 SessionGroup=1 SessionGroup=2", "more than one SessionGroup"),
    ("9050 NoIsolateSOCKSAuth KeepAliveIsolateSOCKSAuth", "KeepAliveIsolateSOCKSAuth"),
    ("9050 NoIPv4Traffic NoIPv6Traffic NoOnionTraffic", "all disabled"),
    ("9050 NoIPv4Traffic NoIPv6Traffic", "DNSRequest is enabled"),
    ("0 IsolateDestAddr", "takes no flags"),
])
def test_bad_socks_ports(value, reason):
    with pytest.raises(ConfigError, match=reason) as caught:
        config_from_torrc_text(f"SocksPort {value}\n")
    assert f"SocksPort '{value}'" in str(caught.value)
    assert (caught.value.option, caught.value.value) == ("SocksPort", value)


def test_zero_and_nonzero_socks_ports_together_are_an_error():
    with pytest.raises(ConfigError, match="nonzero SocksPort along with 'SocksPort 0'"):
        config_from_torrc_text("SocksPort 0\nSocksPort 9050\n")


def test_public_socks_port_is_a_warning():
    config = config_from_torrc_text("SocksPort 0.0.0.0:9050\n")
    assert any("open proxy" in warning for warning in config.warnings)


def test_control_port():
    config = config_from_torrc_text("ControlPort 9051\nControlPort [::1]:auto\nCookieAuthentication 1\n")
    assert [(p.address, p.port) for p in config.control_ports] == [("127.0.0.1", 9051), ("::1", 0)]
    assert config.control_ports[0].flags == frozenset()
    assert config.warnings == ()
    assert config_from_torrc_text("ControlPort 0\n").control_ports == ()
    assert config_from_torrc_text("ControlPort 0\n").get_option("ControlPort") == []


@pytest.mark.parametrize("value", ["9051 IsolateDestAddr", "9051 GroupWritable", "unix:/x", "abc", "65536"])
def test_bad_control_ports(value):
    with pytest.raises(ConfigError, match="ControlPort"):
        config_from_torrc_text(f"ControlPort {value}\n")


def test_control_port_without_authentication_warns():
    config = config_from_torrc_text("ControlPort 9051\n")
    assert any("no authentication method" in warning for warning in config.warnings)


# --------------------------------------------------------------------------- Log


@pytest.mark.parametrize("value, spec", [
    ("notice stdout", ("notice", "err", "stdout", None)),
    ("info file /var/log/oppy/info.log", ("info", "err", "file", "/var/log/oppy/info.log")),
    ("warn stderr", ("warn", "err", "stderr", None)),
    ("notice-err file /tmp/a b.log", ("notice", "err", "file", "/tmp/a b.log")),
    ("debug-info FILE /tmp/debug.log", ("debug", "info", "file", "/tmp/debug.log")),
    ("NOTICE-Warn StdOut", ("notice", "warn", "stdout", None)),
    ("info", ("info", "err", "stdout", None)),
    ("err-err stderr", ("err", "err", "stderr", None)),
])
def test_log_lines(value, spec):
    (log,) = config_from_torrc_text(f"Log {value}\n").logs
    assert (log.min_severity, log.max_severity, log.destination, log.path) == spec
    assert log.value == value


def test_log_accepts_severity_range():
    log = LogSpec("info", "warn", "stdout")
    assert [log.accepts(s) for s in ("debug", "info", "notice", "warn", "err")] == [False, True, True, True, False]


@pytest.mark.parametrize("value, reason", [
    ("blah stdout", "unknown severity 'blah'"),
    ("notice-loud stdout", "unknown severity 'loud'"),
    ("notice nowhere", "unknown destination 'nowhere'"),
    ("notice file", "needs a file name"),
    ("err-notice stdout", "empty"),
    ("[net]info stdout", "domains"),
    ("info notice stdout", "more than one severity range"),
    ("notice syslog", "syslog"),
    ("notice stdout extra", "unexpected 'extra'"),
])
def test_bad_log_lines(value, reason):
    with pytest.raises(ConfigError, match=reason) as caught:
        config_from_torrc_text(f"Log {value}\n")
    assert f"Log '{value}'" in str(caught.value)


def test_logs_accumulate():
    config = config_from_torrc_text("Log notice stdout\nLog info file /tmp/x.log\n")
    assert [log.destination for log in config.logs] == ["stdout", "file"]


# --------------------------------------------------------------------------- intervals, numbers, booleans


@pytest.mark.parametrize("text, seconds", [
    ("600", 600), ("10 minutes", 600), ("10minutes", 600), ("1 hour", 3600), ("1.5 hours", 5400),
    ("2 days", 172800), ("1 week", 604800), ("30 SECONDS", 30), ("1 month", 2629728), ("0.5", 0),
])
def test_intervals(text, seconds):
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["10 fortnights", "-5", "abc", "", "10 minutes ago", "1e3", "99999999999"])
def test_bad_intervals(text):
    with pytest.raises(ConfigError):
        parse_interval(text, "MaxCircuitDirtiness")


@pytest.mark.parametrize("text, size", [
    ("0", 0), ("8 GB", 8 << 30), ("8GB", 8 << 30), ("512 MB", 512 << 20), ("512 m", 512 << 20),
    ("1.5 gigabytes", 3 << 29), ("100 kbits", 12800), ("2 Megabits", 1 << 18), ("1 TB", 1 << 40),
    ("300 bytes", 300), ("1 KBytes", 1024),
])
def test_data_sizes_as_tor_reads_them(text, size):
    # unitparse.c memory_units: "m" alone is megabytes, and the *bit units are an eighth of the bytes.
    assert parse_memunit(text) == size


@pytest.mark.parametrize("text", ["8 GiB", "-1", "lots", "", "1e9", "99999999999999999999 TB"])
def test_bad_data_sizes(text):
    with pytest.raises(ConfigError):
        parse_memunit(text, "MaxMemInQueues")


def test_max_mem_in_queues_option():
    config = config_from_torrc_text("MaxMemInQueues 512 MB\n")
    assert config.max_mem_in_queues == 512 << 20
    assert config.get_option("MaxMemInQueues") == [str(512 << 20)]  # tor encodes a DataSize in bytes
    assert config_from_torrc_text("").max_mem_in_queues == 0  # tor's default: chosen from the RAM
    assert option_type_name("MaxMemInQueues") == "DataSize"


def test_interval_options():
    config = config_from_torrc_text("MaxCircuitDirtiness 1 hour\nCircuitBuildTimeout 30 seconds\n"
                                    "SocksTimeout 3 minutes\n")
    assert (config.max_circuit_dirtiness, config.circuit_build_timeout, config.socks_timeout) == (3600, 30, 180)
    assert config.get_option("MaxCircuitDirtiness") == ["3600"]


def test_max_circuit_dirtiness_is_clamped_as_tor_does():
    config = config_from_torrc_text("MaxCircuitDirtiness 5\n")
    assert config.max_circuit_dirtiness == 10
    assert "MaxCircuitDirtiness option is too short; raising to 10 seconds." in config.warnings
    assert config_from_torrc_text("MaxCircuitDirtiness 31 days\n").max_circuit_dirtiness == 30 * 86400


def test_a_short_circuit_build_timeout_warns_only_when_it_is_not_learned():
    config = config_from_torrc_text("CircuitBuildTimeout 2\n")
    assert (config.circuit_build_timeout, config.learn_circuit_build_timeout, config.warnings) == (2, True, ())
    config = config_from_torrc_text("CircuitBuildTimeout 2\nLearnCircuitBuildTimeout 0\n")
    assert config.circuit_build_timeout == 2 and config.learn_circuit_build_timeout is False
    assert any("recommended minimum (10 seconds), and LearnCircuitBuildTimeout is disabled" in warning
               for warning in config.warnings)
    config = config_from_torrc_text("LearnCircuitBuildTimeout 0\n")
    assert config.circuit_build_timeout == 0
    assert any("didn't specify a CircuitBuildTimeout" in warning for warning in config.warnings)
    assert config.to_torrc_lines() == ["LearnCircuitBuildTimeout 0"]


BAD_VALUES = [
    ("MaxCircuitDirtiness", "10 fortnights", "unknown unit 'fortnights'"),
    ("MaxCircuitDirtiness", "soon", "expected a number"),
    ("CircuitBuildTimeout", "-1", "expected a number"),
    ("LearnCircuitBuildTimeout", "2", "allowed values are 0 and 1"),
    ("SocksTimeout", "2 eons", "unknown unit"),
    ("SocksTimeout", "0", "at least 1 second"),
    ("CookieAuthentication", "yes", "allowed values are 0 and 1"),
    ("TestingTorNetwork", "2", "allowed values are 0 and 1"),
    ("ClientRejectInternalAddresses", "true", "allowed values are 0 and 1"),
    ("EnforceDistinctSubnets", "on", "allowed values are 0 and 1"),
    ("UseDefaultFallbackDirs", "yes", "allowed values are 0 and 1"),
    ("ClientTransportPlugin", "obfs-4 exec /usr/bin/obfs4proxy", "transport name 'obfs-4' is not a C identifier"),
    ("ClientTransportPlugin", "obfs4 socks5 localhost:1", "expected IP:PORT"),
    ("__LeaveStreamsUnattached", "maybe", "allowed values are 0 and 1"),
    ("SafeLogging", "2", "allowed values are 0, 1 and relay"),
    ("MaxClientCircuitsPending", "-1", "between 0 and"),
    ("MaxClientCircuitsPending", "many", "between 0 and"),
    ("MaxClientCircuitsPending", "0", "must be between 1 and 1024, but was set to 0"),
    ("MaxClientCircuitsPending", "1025", "must be between 1 and 1024"),
    ("MaxSocksConnections", "0", "between 1 and"),
    ("SafeSocks", "yes", "allowed values are 0 and 1"),
    ("TestSocks", "2", "allowed values are 0 and 1"),
    ("VanguardsLiteEnabled", "2", "allowed values are 0, 1, and auto"),
    ("VanguardsLiteEnabled", "yes", "allowed values are 0, 1, and auto"),
    ("ConfluxEnabled", "2", "allowed values are 0, 1, and auto"),
    ("ConfluxClientUX", "bulk", "ConfluxClientUX must be 'latency', 'throughput'"),
    ("ConfluxClientUX", "Latency", "ConfluxClientUX must be"),
    ("MaxMemInQueues", "8 GiB", "unknown unit 'GiB'"),
    ("MaxMemInQueues", "-1 GB", "expected a number of bytes"),
    ("HashedControlPassword", "foo", "wrong length or bad encoding"),
    ("HashedControlPassword", "16:ABC", "wrong length or bad encoding"),
    ("__OwningControllerProcess", "abc", "expected a process id"),
    ("DataDirectory", "/tmp/a\0b", "NUL"),
    ("ClientOnionAuthDir", "/tmp/a\0b", "NUL"),
    ("SocksPort", "nonsense", "could not parse address"),
    ("ControlPort", "9051 IsolateDestAddr", "unrecognized ControlPort option"),
    ("HTTPTunnelPort", "8118 IsolateEverything", "unrecognized HTTPTunnelPort option 'IsolateEverything'"),
    ("DNSPort", "5353 Isolate", "unrecognized DNSPort option 'Isolate'"),
    ("AutomapHostsOnResolve", "yes", "allowed values are 0 and 1"),
    ("VirtualAddrNetworkIPv4", "127.192.0.0/24", "expects a /16 network or larger"),
    ("VirtualAddrNetworkIPv4", "fe80::/10", "Incorrect address type for VirtualAddressNetwork"),
    ("VirtualAddrNetworkIPv6", "nonsense", "Error parsing VirtualAddressNetworkIPv6 nonsense"),
    ("Log", "loud stdout", "unknown severity"),
    ("ConnectionPadding", "2", "allowed values are 0, 1, and auto"),
    ("ReducedConnectionPadding", "auto", "allowed values are 0 and 1"),
    ("CircuitPadding", "auto", "allowed values are 0 and 1"),
    ("ReducedCircuitPadding", "2", "allowed values are 0 and 1"),
    ("LongLivedPorts", "22,0", "'0' is not a port between 1 and 65535"),
    ("LongLivedPorts", "22,６６６７", "is not a port"),
    ("LongLivedPorts", "ssh", "'ssh' is not a port"),
    ("UseBridges", "yes", "allowed values are 0 and 1"),
    ("Bridge", "obfs4 127.0.0.1:5000 cert", "'cert' is not 40 hex digits"),
]


def test_long_lived_ports_take_a_comma_list_and_an_empty_value_is_the_default():
    assert config_from_torrc_text("LongLivedPorts 22, 6667,,8300\n").long_lived_ports == {22, 6667, 8300}
    assert config_from_torrc_text("").long_lived_ports == DEFAULT_LONG_LIVED_PORTS
    assert config_from_torrc_text("LongLivedPorts 443\nLongLivedPorts\n").long_lived_ports == (
        DEFAULT_LONG_LIVED_PORTS)
    assert config_from_torrc_text("LongLivedPorts 6667,22\n").to_torrc_lines() == ["LongLivedPorts 22,6667"]


@pytest.mark.parametrize("name, value, reason", BAD_VALUES)
def test_bad_values_name_the_option(name, value, reason):
    with pytest.raises(ConfigError, match=reason) as caught:
        config_from_lines([[ConfigLine(name, value)]])
    assert name in str(caught.value)
    assert caught.value.option == name


def test_every_option_has_a_bad_value_test():
    tested = {name for name, _, _ in BAD_VALUES} | {"DirAuthority", "FallbackDir", "CookieAuthFile",
                                                     "AutomapHostsSuffixes"}
    assert tested == set(OPTION_NAMES)


def test_bad_directory_lines():
    for name in ("DirAuthority", "FallbackDir"):
        with pytest.raises(ConfigError, match=f"Could not parse {name}"):
            config_from_torrc_text(f"{name} not a directory line\n")


def test_directory_lines_are_kept_raw():
    fallback = "127.0.0.1:7000 orport=5000 id=" + "C" * 40
    config = config_from_torrc_text(f"DirAuthority {AUTHORITY}\nFallbackDir {fallback}\n")
    assert config.dir_authorities == (AUTHORITY,)
    assert config.fallback_dirs == (fallback,)


def test_cookie_auth_file_and_passwords():
    second = hash_password("bar")
    config = config_from_torrc_text(f"CookieAuthFile ~/cookie\nHashedControlPassword {HASH}\n"
                                    f"HashedControlPassword {second}\n")
    assert config.cookie_auth_file_path() == __import__("pathlib").Path(os.path.expanduser("~/cookie"))
    assert config.hashed_control_passwords == (HASH, second)


def test_safe_logging_values():
    assert config_from_torrc_text("SafeLogging 0\n").scrub_addresses is False
    relay = config_from_torrc_text("SafeLogging RELAY\n")
    assert relay.safe_logging == "relay" and relay.scrub_addresses is False


# --------------------------------------------------------------------------- TestingTorNetwork


def test_testing_tor_network_needs_dir_authorities():
    with pytest.raises(ConfigError, match="TestingTorNetwork may only be configured in combination with a "
                                          "non-default set of DirAuthority"):
        config_from_torrc_text("TestingTorNetwork 1\n")


def test_testing_tor_network_changes_defaults_but_not_explicit_settings():
    config = config_from_torrc_text(f"TestingTorNetwork 1\nDirAuthority {AUTHORITY}\n")
    assert config.client_reject_internal_addresses is False
    assert config.enforce_distinct_subnets is False
    assert config.to_torrc_lines() == [f"DirAuthority {AUTHORITY}", "TestingTorNetwork 1"]
    config = config_from_torrc_text(f"EnforceDistinctSubnets 1\nTestingTorNetwork 1\nDirAuthority {AUTHORITY}\n")
    assert config.enforce_distinct_subnets is True
    assert config.client_reject_internal_addresses is False


# --------------------------------------------------------------------------- repeats, empty values, sources


def test_single_option_repeated_keeps_the_last_and_warns():
    config = config_from_torrc_text("MaxCircuitDirtiness 60\nMaxCircuitDirtiness 120\n")
    assert config.max_circuit_dirtiness == 120
    assert "Option 'MaxCircuitDirtiness' used more than once; all but the last value will be ignored." \
        in config.warnings


def test_empty_values():
    config = config_from_torrc_text("MaxCircuitDirtiness 60\nMaxCircuitDirtiness\nSocksPort\n")
    assert config.max_circuit_dirtiness == 600  # an empty value resets a single option
    assert config.socks_ports == Config().socks_ports
    assert "Linelist option 'SocksPort' has no value. Skipping." in config.warnings


def test_later_source_replaces_lists_unless_plus():
    file_lines = parse_torrc_text("SocksPort 9050\nSocksPort 9051\nLog info stdout\nMaxCircuitDirtiness 60\n")
    config = config_from_lines([file_lines, [ConfigLine("SocksPort", "9999"), ConfigLine("SocksPort", "9998")]])
    assert [p.port for p in config.socks_ports] == [9999, 9998]
    assert config.logs[0].min_severity == "info" and config.max_circuit_dirtiness == 60
    config = config_from_lines([file_lines, [ConfigLine("SocksPort", "9999", LineCommand.APPEND)]])
    assert [p.port for p in config.socks_ports] == [9050, 9051, 9999]
    config = config_from_lines([file_lines, [ConfigLine("SocksPort", "", LineCommand.CLEAR),
                                             ConfigLine("MaxCircuitDirtiness", "", LineCommand.CLEAR)]])
    assert config.socks_ports == Config().socks_ports and config.max_circuit_dirtiness == 600


# --------------------------------------------------------------------------- GETCONF / SETCONF / RESETCONF


def test_get_option():
    config = config_from_torrc_text(f"ControlPort 9051\nHashedControlPassword {HASH}\nCookieAuthentication 1\n")
    assert config.get_option("controlport") == ["9051"]
    assert config.get_option("HASHEDCONTROLPASSWORD") == [HASH]
    assert config.get_option("CookieAuthentication") == ["1"]
    assert config.get_option("CookieAuthFile") == []
    assert config.get_option("__OwningControllerProcess") == []
    assert config.get_option("Log") == ["notice stdout"]
    assert config.get_option("DataDirectory") == ["~/.oppy"]
    assert config.get_option("SafeLogging") == ["1"]
    with pytest.raises(UnknownOptionError, match="Unknown option 'Nickname'"):
        config.get_option("Nickname")


def test_set_options():
    config = Config()
    changed = config.set_options([("__leavestreamsunattached", "1"), ("SocksPort", "9150"),
                                  ("SocksPort", "9151 IsolateDestAddr"), ("__OwningControllerProcess", "4242"),
                                  ("maxcircuitdirtiness", "5 minutes")])
    assert changed == ["__LeaveStreamsUnattached", "SocksPort", "__OwningControllerProcess", "MaxCircuitDirtiness"]
    assert config.leave_streams_unattached is True
    assert [p.port for p in config.socks_ports] == [9150, 9151]
    assert config.get_option("__OwningControllerProcess") == ["4242"]
    assert config.max_circuit_dirtiness == 300
    # __ options are never written out, as in tor.
    assert config.to_torrc_lines() == ["SocksPort 9150", "SocksPort 9151 IsolateDestAddr", "MaxCircuitDirtiness 300"]


def test_set_options_is_all_or_nothing():
    config = Config()
    with pytest.raises(ConfigError, match="MaxCircuitDirtiness"):
        config.set_options([("SocksPort", "9150"), ("MaxCircuitDirtiness", "later")])
    with pytest.raises(UnknownOptionError):
        config.set_options([("SocksPort", "9150"), ("NoSuch", "1")])
    with pytest.raises(ConfigError, match="between 1 and 1024"):
        config.set_options([("SocksPort", "9150"), ("MaxClientCircuitsPending", "0")])
    assert config == Config()


def test_reset_options_and_empty_values():
    config = config_from_torrc_text("SocksPort 9150\nMaxCircuitDirtiness 60\n__LeaveStreamsUnattached 1\n")
    assert config.reset_options(["socksport", "MaxCircuitDirtiness"]) == ["SocksPort", "MaxCircuitDirtiness"]
    assert config.socks_ports == Config().socks_ports and config.max_circuit_dirtiness == 600
    config.set_options([("__LeaveStreamsUnattached", "")])
    assert config.leave_streams_unattached is False


def test_options_fixed_at_start_cannot_change_at_run_time():
    config = config_from_torrc_text(f"TestingTorNetwork 1\nDirAuthority {AUTHORITY}\nDataDirectory /tmp/a\n")
    with pytest.raises(ConfigError, match="While oppy is running, changing DataDirectory"):
        config.set_options([("DataDirectory", "/tmp/b")])
    with pytest.raises(ConfigError, match="changing TestingTorNetwork"):
        config.set_options([("TestingTorNetwork", "0")])
    config.set_options([("DataDirectory", "/tmp/a")])  # not a change
    # The test network's defaults are what RESETCONF goes back to; its authorities cannot go away.
    config.set_options([("EnforceDistinctSubnets", "1")])
    config.reset_options(["EnforceDistinctSubnets"])
    assert config.enforce_distinct_subnets is False
    with pytest.raises(ConfigError, match="TestingTorNetwork"):
        config.reset_options(["DirAuthority"])


def test_to_torrc_lines_round_trip():
    text = ('SocksPort 9150 IsolateDestAddr\nSocksPort [::1]:auto\nControlPort 9051\nDataDirectory "/tmp/a #b"\n'
            f'Log info-warn file /tmp/x y.log\nLog err stderr\nMaxCircuitDirtiness 1 hour\nHashedControlPassword {HASH}\n'
            'SafeLogging 0\nClientRejectInternalAddresses 0\n')
    config = config_from_torrc_text(text)
    lines = config.to_torrc_lines()
    assert 'DataDirectory "/tmp/a #b"' in lines and "MaxCircuitDirtiness 3600" in lines
    assert config_from_torrc_text("\n".join(lines)) == config
    full = config.to_torrc_lines(include_defaults=True)
    assert "SocksTimeout 120" in full and "EnforceDistinctSubnets 1" in full
    assert config_from_torrc_text("\n".join(full)) == config


@settings(max_examples=100, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=30))
def test_any_data_directory_round_trips(directory):
    config = config_from_lines([[ConfigLine("DataDirectory", directory)]])
    assert config_from_torrc_text("\n".join(config.to_torrc_lines())).data_directory == directory


def test_connection_padding_options():
    config = config_from_torrc_text("")
    assert config.connection_padding is None and config.reduced_connection_padding is False
    assert config.get_option("ConnectionPadding") == ["auto"] and config.get_option("ReducedConnectionPadding") == ["0"]
    for value, parsed in (("0", False), ("1", True), ("AUTO", None)):
        assert config_from_torrc_text(f"ConnectionPadding {value}\n").connection_padding is parsed
    config = config_from_torrc_text("ConnectionPadding 0\nReducedConnectionPadding 1\n")
    assert config.to_torrc_lines() == ["ConnectionPadding 0", "ReducedConnectionPadding 1"]
    config.set_options([("ConnectionPadding", "1")])  # tor lets a controller change both at run time
    assert config.connection_padding is True
    assert option_type_name("ConnectionPadding") == "Boolean+Auto"


def test_vanguards_lite_enabled_is_tors_boolean_plus_auto():
    assert option_type_name("VanguardsLiteEnabled") == "Boolean+Auto"
    assert Config().vanguards_lite_enabled is None and Config().get_option("VanguardsLiteEnabled") == ["auto"]
    for text, value, encoded in (("auto", None, "auto"), ("AUTO", None, "auto"), ("0", False, "0"), ("1", True, "1")):
        config = config_from_torrc_text(f"VanguardsLiteEnabled {text}\n")
        assert config.vanguards_lite_enabled is value
        assert config.get_option("VanguardsLiteEnabled") == [encoded]


def test_conflux_options_are_tors():
    assert option_type_name("ConfluxEnabled") == "Boolean+Auto"
    assert Config().conflux_enabled is None and Config().get_option("ConfluxEnabled") == ["auto"]
    assert config_from_torrc_text("ConfluxEnabled 0\n").conflux_enabled is False
    assert Config().conflux_client_ux == "throughput"
    for value in ("throughput", "latency", "throughput_lowmem", "latency_lowmem"):
        config = config_from_torrc_text(f"ConfluxClientUX {value}\n")
        assert config.conflux_client_ux == value and config.get_option("ConfluxClientUX") == [value]


def test_option_names_and_types():
    assert option_type_name("SocksPort") == "LineList"
    assert option_type_name("maxcircuitdirtiness") == "TimeInterval"
    assert option_type_name("CookieAuthentication") == "Boolean"
    assert "__LeaveStreamsUnattached" in OPTION_NAMES
    for name in OPTION_NAMES:
        Config().get_option(name)  # every option can be read back


# --------------------------------------------------------------------------- command line


def test_command_line_forms():
    parsed = parse_command_line(["-f", "torrc", "--SocksPort", "9150", "--+socksport", "9151", "ControlPort", "9051",
                                 "--/Log", "--socks-port", "9152", "--control-port", "auto", "--data-directory",
                                 "/tmp/d", "--testing-tor-network", "--log-level", "info", "--verify-config"])
    assert parsed.torrc_file == "torrc" and parsed.verify_config and parsed.log_level == "info"
    assert parsed.option_lines == [
        ConfigLine("SocksPort", "9150"), ConfigLine("SocksPort", "9151", LineCommand.APPEND),
        ConfigLine("ControlPort", "9051"), ConfigLine("Log", "", LineCommand.CLEAR),
        ConfigLine("SocksPort", "9152"), ConfigLine("ControlPort", "auto"), ConfigLine("DataDirectory", "/tmp/d"),
        ConfigLine("TestingTorNetwork", "1")]


@pytest.mark.parametrize("argv, message", [
    (["--SocksPort"], "Command-line option '--SocksPort' with no value. Failing."),
    (["--hash-password"], "Command-line option '--hash-password' with no value. Failing."),
    (["-f"], "Command-line option '-f' with no value. Failing."),
    (["--Foo"], "Unknown option 'Foo'.  Failing."),
    (["--foo-bar", "1"], "Unknown option 'foo-bar'.  Failing."),
    (["--log-level", "loud"], "Unknown log level 'loud'"),
    (["--dump-config", "medium"], "--dump-config"),
])
def test_bad_command_lines(argv, message):
    with pytest.raises(ConfigError) as caught:
        parse_command_line(argv)
    assert message in str(caught.value)


def test_load_config_without_a_file_uses_only_defaults_and_the_command_line():
    assert load_config([]) == Config()
    config = load_config(["--SocksPort", "9150", "--MaxCircuitDirtiness", "1 minute"])
    assert [p.port for p in config.socks_ports] == [9150] and config.max_circuit_dirtiness == 60


def test_command_line_overrides_the_file(tmp_path):
    torrc = tmp_path / "torrc"
    torrc.write_text("SocksPort 9050\nSocksPort 9051\nMaxCircuitDirtiness 60\nCookieAuthentication 1\n"
                     "Log info file /tmp/never-opened.log\n")
    config = load_config(["-f", str(torrc), "--socksport", "9999", "--MaxCircuitDirtiness", "120"])
    assert [p.port for p in config.socks_ports] == [9999]
    assert config.max_circuit_dirtiness == 120 and config.cookie_authentication is True
    config = load_config(["--torrc-file", str(torrc), "--+SocksPort", "9999", "--/MaxCircuitDirtiness"])
    assert [p.port for p in config.socks_ports] == [9050, 9051, 9999] and config.max_circuit_dirtiness == 600
    config = load_config(["-f", str(torrc), "--log-level", "debug"])
    assert config.logs == (LogSpec("debug", "err", "file", "/tmp/never-opened.log", "debug file /tmp/never-opened.log"),)
    config = load_config(["--log-level", "warn"])
    assert config.logs == (LogSpec("warn", "err", "stdout", None, "warn stdout"),)


def test_missing_file_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match=f'Unable to open configuration file "{tmp_path}/nope"'):
        load_config(["-f", str(tmp_path / "nope")])
    torrc = tmp_path / "torrc"
    torrc.write_text("SocksPort 9050\nBogus 1\n")
    with pytest.raises(ConfigError, match="Unknown option 'Bogus'"):
        load_config(["-f", str(torrc)])


def test_torrc_from_standard_input(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("SocksPort 9333\n"))
    assert load_config(["-f", "-"]).socks_ports[0].port == 9333


def test_reload_reads_the_same_sources_again(tmp_path):
    torrc = tmp_path / "torrc"
    torrc.write_text("MaxCircuitDirtiness 60\nSocksPort 9050\n")
    config = load_config(["-f", str(torrc), "--SocksPort", "9150"])
    torrc.write_text("MaxCircuitDirtiness 90\nSocksPort 9050\n")
    reloaded = reload_config(config)
    assert reloaded.max_circuit_dirtiness == 90 and [p.port for p in reloaded.socks_ports] == [9150]


# --------------------------------------------------------------------------- hostile numbers and text

# Values that once ended `oppy --verify-config` with a traceback (int() of thousands of digits, float
# overflow) or were taken although tor refuses them (Python reads "１２３", "²" and U+3000 as digits and
# space; tor's strtol and TOR_ISSPACE take ASCII only). Each must be a ConfigError naming the option.
HOSTILE_VALUES = [
    ("SocksPort", "1" * 5000),
    ("SocksPort", "１２３"),
    ("SocksPort", "²"),
    ("SocksPort", "127.0.0.1:１２３"),
    ("SocksPort", "[::1]:" + "1" * 5000),
    ("SocksPort", "9050 SessionGroup=" + "1" * 5000),
    ("SocksPort", "9050 SessionGroup=１"),
    ("SocksPort", "9050\u00a0IsolateDestAddr"),
    ("SocksPort", "9050 PreferSOC\u212aSNoAuth"),  # KELVIN SIGN lower-cases to "k"
    ("ControlPort", "１２３"),
    ("ControlPort", "127.0.0.1:" + "9" * 5000),
    ("MaxCircuitDirtiness", "9" * 5000 + " minutes"),
    ("MaxCircuitDirtiness", "9" * 400 + ".5 minutes"),
    ("MaxCircuitDirtiness", "１０ seconds"),
    ("MaxCircuitDirtiness", "10\u3000minutes"),
    ("CircuitBuildTimeout", "١٠"),
    ("MaxClientCircuitsPending", "1" * 5000),
    ("MaxClientCircuitsPending", "３２"),
    ("__OwningControllerProcess", "１２"),
    ("__OwningControllerProcess", "1" * 5000),
    ("Log", "notice\u2003stdout"),
    ("Log", "notice file /tmp/a\0b"),
]


@pytest.mark.parametrize("name, value", HOSTILE_VALUES, ids=lambda item: ascii(item)[:40])
def test_hostile_values_are_config_errors_naming_the_option(name, value):
    with pytest.raises(ConfigError) as caught:
        config_from_lines([[ConfigLine(name, value)]])
    message = str(caught.value)
    assert caught.value.option == name and name in message
    assert len(message) < 300 and "\n" not in message  # one line a user can read, not 5000 digits


def test_long_values_are_shortened_in_the_message_but_kept_whole_on_the_error():
    value = "9" * 5000 + " minutes"
    with pytest.raises(ConfigError) as caught:
        config_from_lines([[ConfigLine("MaxCircuitDirtiness", value)]])
    assert caught.value.value == value
    assert "(5008 characters)" in str(caught.value)


def test_leading_zeros_and_signs_are_read_as_tors_strtol_reads_them():
    assert config_from_torrc_text("SocksPort " + "0" * 5000 + "9050\n").socks_ports[0].port == 9050
    assert config_from_torrc_text("MaxClientCircuitsPending +0000000000000000000000000000064\n"
                                  ).max_client_circuits_pending == 64
    assert parse_interval("0" * 5000 + "12 minutes") == 720


def test_option_names_fold_ascii_case_only():
    with pytest.raises(UnknownOptionError):
        config_from_torrc_text("So\u212aksPort 9050\n")  # KELVIN SIGN: "socksport" to str.lower()
    with pytest.raises(UnknownOptionError):
        canonical_option_name("Coo\u212aieAuthentication")
    assert canonical_option_name("SOCKSPORT") == "SocksPort"


@pytest.mark.parametrize("argv", [["--log-level", "1" * 5000], ["--dump-config", "1" * 5000]])
def test_long_command_line_values_are_shortened_in_the_message(argv):
    with pytest.raises(ConfigError) as caught:
        parse_command_line(argv)
    assert "(5000 characters)" in str(caught.value) and len(str(caught.value)) < 200
    assert caught.value.value == argv[1]


def test_a_long_value_refused_at_run_time_is_shortened_in_the_message():
    config = Config()
    with pytest.raises(ConfigError, match=r"While oppy is running, changing DataDirectory") as caught:
        config.set_options([("DataDirectory", "/" + "d" * 5000)])
    assert len(str(caught.value)) < 300


def test_automap_suffixes_are_a_comma_list_and_an_empty_one_is_the_default():
    assert config_from_torrc_text("AutomapHostsSuffixes .test, .example ,\n").automap_hosts_suffixes == (
        ".test", ".example")
    config = config_from_torrc_text("AutomapHostsSuffixes ,\n")
    assert config.automap_hosts_suffixes == (".onion", ".exit")
    assert config.get_option("AutomapHostsSuffixes") == [".onion,.exit"]


def test_client_transport_plugin_lines_are_typed_and_given_back_as_written():
    config = config_from_torrc_text("ClientTransportPlugin obfs4,meek_lite exec /usr/bin/obfs4proxy -enableLogging\n"
                                    "ClientTransportPlugin snowflake socks5 127.0.0.1:9999\n")
    managed, external = config.client_transport_plugins
    assert managed.transports == ("obfs4", "meek_lite") and managed.argv == ("/usr/bin/obfs4proxy", "-enableLogging")
    assert (external.transports, external.host, external.port) == (("snowflake",), "127.0.0.1", 9999)
    assert config.get_option("ClientTransportPlugin") == ["obfs4,meek_lite exec /usr/bin/obfs4proxy -enableLogging",
                                                          "snowflake socks5 127.0.0.1:9999"]


def test_client_transport_plugin_is_not_changed_while_running():
    config = config_from_torrc_text("ClientTransportPlugin obfs4 exec /usr/bin/obfs4proxy\n")
    with pytest.raises(ConfigError, match="While oppy is running, changing ClientTransportPlugin"):
        config.set_options([("ClientTransportPlugin", "obfs4 exec /usr/bin/lyrebird")])


def test_circuit_padding_options():
    config = config_from_torrc_text("")
    assert config.circuit_padding is True and config.reduced_circuit_padding is False
    assert config.get_option("CircuitPadding") == ["1"] and config.get_option("ReducedCircuitPadding") == ["0"]
    config = config_from_torrc_text("CircuitPadding 0\nReducedCircuitPadding 1\n")
    assert (config.circuit_padding, config.reduced_circuit_padding) == (False, True)
    assert config.to_torrc_lines() == ["CircuitPadding 0", "ReducedCircuitPadding 1"]
    config.set_options([("CircuitPadding", "1")])  # read live by the padding machines
    assert config.circuit_padding is True
