"""A bridge's arguments in SOCKS5 credentials (pt-spec 3.5) and the SOCKS5 client handshake (RFC 1928/1929)."""

from __future__ import annotations

import pytest

from oppy.pt.socks5 import (
    MAX_SOCKS5_AUTH_SIZE_TOTAL,
    Socks5ClientError,
    Socks5ClientHandshake,
    Socks5Progress,
    SocksArgumentsError,
    encode_arguments,
    escape_argument,
    socks5_credentials,
)

CERT = "ssH+9rP8dG2NLDN2XuFw63hIO/9MNNinLmxQDpVa+7kTOa9/m+tGWT1SmSYpQ9uTBGa6Hw"


def test_escaping_of_backslash_equals_and_semicolon():
    assert escape_argument(r"a\b=c;d") == r"a\\b\=c\;d"
    assert encode_arguments([("shared-secret", "rahasia"), ("secrets-file", "/tmp/blob")]) == \
        b"shared-secret=rahasia;secrets-file=/tmp/blob"  # pt-spec 3.5's example
    assert encode_arguments({"k;=": "v\\"}) == b"k\\;\\==v\\\\"
    assert encode_arguments({"key": "caf\u00e9"}) == "key=caf\u00e9".encode()


def test_obfs4_arguments_fit_in_the_username_with_a_nul_password():
    assert socks5_credentials({"cert": CERT, "iat-mode": "0"}) == (f"cert={CERT};iat-mode=0".encode(), b"\0")


def test_no_arguments_no_credentials():
    assert socks5_credentials({}) is None


@pytest.mark.parametrize(("length", "username_length", "password"), [
    (255, 255, b"\0"),        # exactly fits: tor still sends the NUL password
    (256, 255, b"x"),
    (510, 255, b"x" * 255),
])
def test_long_arguments_split_at_255_bytes(length, username_length, password):
    value = "x" * (length - 2)
    username, actual_password = socks5_credentials({"k": value})
    assert len(username) == username_length and actual_password == password
    assert username + (b"" if password == b"\0" else actual_password) == b"k=" + value.encode()


def test_arguments_longer_than_510_bytes_are_refused():
    with pytest.raises(SocksArgumentsError, match="at most 510"):
        socks5_credentials({"k": "x" * (MAX_SOCKS5_AUTH_SIZE_TOTAL - 1)})
    with pytest.raises(SocksArgumentsError, match="needs a key"):
        socks5_credentials([("", "v")])


def test_handshake_with_arguments():
    handshake = Socks5ClientHandshake("127.0.0.1", 9001, (b"cert=abc", b"\0"))
    assert handshake.greeting() == b"\x05\x01\x02"
    assert handshake.receive(b"\x05") == Socks5Progress()
    assert handshake.receive(b"\x02") == Socks5Progress(b"\x01\x08cert=abc\x01\x00")
    assert handshake.receive(b"\x01\x00") == Socks5Progress(b"\x05\x01\x00\x01\x7f\x00\x00\x01\x23\x29")
    assert handshake.receive(b"\x05\x00\x00\x01\x00\x00\x00\x00") == Socks5Progress()
    assert handshake.receive(b"\x00\x00TLS") == Socks5Progress(b"", True, b"TLS")
    assert handshake.finished


def test_handshake_without_arguments_ipv6_and_host_names_in_one_read():
    handshake = Socks5ClientHandshake("::1", 443)
    assert handshake.greeting() == b"\x05\x01\x00"
    assert handshake.receive(b"\x05\x00") == Socks5Progress(b"\x05\x01\x00\x04" + b"\0" * 15 + b"\x01\x01\xbb")
    reply = b"\x05\x00\x00\x03\x09bridge.io\x01\xbb"
    assert handshake.receive(reply + b"more") == Socks5Progress(b"", True, b"more")
    handshake = Socks5ClientHandshake("bridge.example", 80)
    assert handshake.receive(b"\x05\x00").send == b"\x05\x01\x00\x03\x0ebridge.example\x00\x50"


@pytest.mark.parametrize(("replies", "message"), [
    ([b"\x04\x02"], "SOCKS version 4"),
    ([b"\x05\xff"], "no offered authentication method"),
    ([b"\x05\x00"], "no offered authentication method"),  # args would be dropped
    ([b"\x05\x02", b"\x01\x01"], "refused the username and password"),
    ([b"\x05\x02", b"\x01\x00", b"\x05\x05\x00\x01" + b"\0" * 6], "could not connect to the target: CONNECTION_REFUSED"),
    ([b"\x05\x02", b"\x01\x00", b"\x05\x42\x00\x01" + b"\0" * 6], "reply 66"),
    ([b"\x05\x02", b"\x01\x00", b"\x05\x00\x00\x07" + b"\0" * 6], "unknown address type 7"),
])
def test_refusals_and_broken_replies_raise_the_module_error(replies, message):
    handshake = Socks5ClientHandshake("127.0.0.1", 1, (b"a=b", b"\0"))
    with pytest.raises(Socks5ClientError, match=message):
        for reply in replies:
            handshake.receive(reply)
    with pytest.raises(Socks5ClientError, match="already failed"):
        handshake.receive(b"\x05\x00")


def test_connection_refused_keeps_its_reply_code():
    handshake = Socks5ClientHandshake("127.0.0.1", 1)
    handshake.receive(b"\x05\x00")
    with pytest.raises(Socks5ClientError) as caught:
        handshake.receive(b"\x05\x05\x00\x01" + b"\0" * 6)
    assert caught.value.reply == 5


def test_undecodable_torrc_bytes_in_an_argument_go_out_as_they_were():
    value = b"\xff\xfe".decode("utf-8", "surrogateescape")  # how the config reader keeps them
    assert socks5_credentials({"k": value}) == (b"k=\xff\xfe", b"\0")
