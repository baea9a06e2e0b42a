"""Bridge lines and UseBridges: tor's syntax (config.c parse_bridge_line), its errors, GETCONF round trips."""

from __future__ import annotations

import pytest

from oppy.config import (
    BridgeLine,
    Config,
    ConfigError,
    config_from_torrc_text,
    parse_bridge_line,
    parse_command_line,
)
from oppy.config.command_line import config_from_command_line

FINGERPRINT = "4352E58420E68F5E40BF7C74FADDCCD9D1349413"
AUTHORITY = "auth0 orport=5000 no-v2 v3ident=" + "A" * 40 + " 127.0.0.1:7000 " + "B" * 40


def test_plain_bridge_with_fingerprint():
    bridge = parse_bridge_line(f"127.0.0.1:5000 {FINGERPRINT}")
    assert bridge == BridgeLine(None, "127.0.0.1", 5000, bytes.fromhex(FINGERPRINT), (),
                                f"127.0.0.1:5000 {FINGERPRINT}")
    assert bridge.addrport == "127.0.0.1:5000" and bridge.to_line() == f"127.0.0.1:5000 {FINGERPRINT}"


def test_fingerprint_with_dollar_lower_case_and_in_groups_of_four():
    spaced = " ".join(FINGERPRINT[i:i + 4] for i in range(0, 40, 4))
    for text in (f"${FINGERPRINT}", FINGERPRINT.lower(), spaced):
        assert parse_bridge_line(f"10.0.0.1:443 {text}").fingerprint == bytes.fromhex(FINGERPRINT)


def test_address_without_port_means_443_and_ipv6_goes_in_brackets():
    assert parse_bridge_line("10.1.2.3").port == 443
    bridge = parse_bridge_line("[2001:DB8::1]:9001")
    assert (bridge.address, bridge.port, bridge.addrport) == ("2001:db8::1", 9001, "[2001:db8::1]:9001")
    assert parse_bridge_line("[::1]").port == 443


def test_transport_bridge_with_fingerprint_and_arguments():
    line = f"obfs4 127.0.0.1:5001 {FINGERPRINT} cert=AbC+/x== iat-mode=0"
    bridge = parse_bridge_line(line)
    assert bridge.transport == "obfs4" and bridge.fingerprint == bytes.fromhex(FINGERPRINT)
    assert bridge.args == (("cert", "AbC+/x=="), ("iat-mode", "0"))
    assert bridge.to_line() == line


def test_transport_bridge_arguments_without_fingerprint():
    bridge = parse_bridge_line("meek_lite 192.0.2.2:80 url=https://x.example/ front=a=b empty=")
    assert bridge.fingerprint is None
    assert bridge.args == (("url", "https://x.example/"), ("front", "a=b"), ("empty", ""))


@pytest.mark.parametrize(("line", "reason"), [
    ("obfs4", "no address after the transport name 'obfs4'"),
    ("bridge.example.com:443", "not an IP address"),
    ("127.0.0.1:0", "out of range"),
    ("127.0.0.1:65536", "out of range"),
    ("::1", "an IPv6 address goes in brackets"),
    ("[::1", "unterminated IPv6 address"),
    ("[127.0.0.1]:443", "only an IPv6 address goes in brackets"),
    ("127.0.0.1:443 ABCD", "not 40 hex digits"),
    ("127.0.0.1:443 " + "G" * 40, "not 40 hex digits"),
    ("127.0.0.1:443 " + FINGERPRINT + " extra", "not 40 hex digits"),
    ("127.0.0.1:443 cert=x", "k=v arguments are for a pluggable transport"),
    ("obfs4 127.0.0.1:443 " + FINGERPRINT + " notkv", "'notkv' is not a k=v argument"),
    ("obfs4 127.0.0.1:443 =v", "'=v' is not a k=v argument"),
    ("obfs4 127.0.0.1:443 cert=" + "x" * 600, "at most 510"),
    ("4bad 127.0.0.1:443", "not an IP address"),
    ("obfs-4 127.0.0.1:443", "not an IP address"),
])
def test_malformed_lines_are_errors_naming_the_line(line, reason):
    with pytest.raises(ConfigError, match=reason) as caught:
        config_from_torrc_text(f"Bridge {line}\n")
    assert caught.value.option == "Bridge" and f"Could not parse Bridge '{line[:20]}" in str(caught.value)


def test_a_blank_line_is_too_few_arguments():
    with pytest.raises(ConfigError, match="too few arguments"):
        parse_bridge_line(" \t")


def test_bridge_lines_repeat_and_usebridges_needs_one():
    config = config_from_torrc_text(f"UseBridges 1\nBridge 127.0.0.1:5000 {FINGERPRINT}\n"
                                    f"Bridge obfs4 127.0.0.1:5001 {FINGERPRINT}\n")
    assert config.use_bridges and [bridge.port for bridge in config.bridges] == [5000, 5001]
    assert config.get_option("Bridge") == [f"127.0.0.1:5000 {FINGERPRINT}", f"obfs4 127.0.0.1:5001 {FINGERPRINT}"]
    again = config_from_torrc_text("\n".join(config.to_torrc_lines()))
    assert again.bridges == config.bridges and again.use_bridges
    with pytest.raises(ConfigError, match="If you set UseBridges, you must specify at least one bridge"):
        config_from_torrc_text("UseBridges 1\n")
    assert Config().use_bridges is False and Config().bridges == ()


def test_bridge_on_the_command_line():
    command_line = parse_command_line(["--DirAuthority", AUTHORITY, "--UseBridges", "1",
                                       "--Bridge", "127.0.0.1:5000 " + FINGERPRINT])
    config = config_from_command_line(command_line)
    assert config.bridges[0].fingerprint == bytes.fromhex(FINGERPRINT)
    with pytest.raises(ConfigError, match="Could not parse Bridge 'nonsense'"):
        config_from_command_line(parse_command_line(["--Bridge", "nonsense"]))


def test_bridges_cannot_change_while_running():
    config = config_from_torrc_text(f"UseBridges 1\nBridge 127.0.0.1:5000 {FINGERPRINT}\n")
    with pytest.raises(ConfigError, match="changing Bridge"):
        config.set_options([("Bridge", f"127.0.0.1:5001 {FINGERPRINT}")])
    assert config.bridges[0].port == 5000


def test_a_bridge_without_fingerprint_is_taken_when_bridges_are_used():
    """As tor: the identity is learned from the bridge's link handshake and descriptor."""
    config = config_from_torrc_text("UseBridges 1\nBridge 127.0.0.1:5000\nBridge obfs4 127.0.0.1:5001 cert=abc "
                                    "iat-mode=0\n")
    assert [bridge.fingerprint for bridge in config.bridges] == [None, None]
    assert config.bridges[1].args == (("cert", "abc"), ("iat-mode", "0"))
    assert config.get_option("Bridge") == ["127.0.0.1:5000", "obfs4 127.0.0.1:5001 cert=abc iat-mode=0"]
