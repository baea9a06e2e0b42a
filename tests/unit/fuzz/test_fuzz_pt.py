"""Fuzz targets for pluggable transports: what a transport process prints, what a transport answers on SOCKS5,
and the escaping of a bridge's arguments.

A managed proxy's stdout, cut anywhere, gives the same events, and only the module's own events (a broken
proxy is an event, never an exception); a SOCKS5 reply either advances the handshake or raises
Socks5ClientError; escaped arguments split back into exactly the pairs they came from.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from oppy.pt.protocol import ManagedProxyConfiguration, ProxyBroken, ProxyConfigured, TransportProtocolError, parse_line
from oppy.pt.socks5 import Socks5ClientError, Socks5ClientHandshake, SocksArgumentsError, socks5_credentials
from tests.unit.fuzz.budget import FUZZ
from tests.unit.fuzz.strategies import chunked, seeds_mutated_or_random

PROXY_SEEDS = (
    b"VERSION 1\nCMETHOD obfs4 socks5 127.0.0.1:42823\nCMETHOD-ERROR foo no such transport\nCMETHODS DONE\n",
    b"VERSION 1\nPROXY DONE\nCMETHOD obfs4 socks4 [::1]:1\nCMETHODS DONE\n",
    b'LOG SEVERITY=notice MESSAGE="a \\"b\\" \\x41\\101"\nSTATUS TRANSPORT=obfs4 CONNECT=Failed ERRSTR="x"\n',
    b"VERSION-ERROR no-version\nENV-ERROR x\nPROXY-ERROR y\n",
)
SOCKS_SEEDS = (
    b"\x05\x02\x01\x00\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x50",
    b"\x05\x02\x01\x00\x05\x00\x00\x03\x05hello\x00\x50rest",
    b"\x05\x02\x01\x00\x05\x00\x00\x04" + b"\0" * 16 + b"\x00\x50",
    b"\x05\xff",
)


@FUZZ
@given(seeds_mutated_or_random(PROXY_SEEDS), st.lists(st.integers(0, 400), max_size=6))
def test_proxy_output_gives_the_same_events_however_it_is_cut(output, cuts):
    whole = ManagedProxyConfiguration(["obfs4", "foo"])
    expected = whole.feed(output)
    pieces = ManagedProxyConfiguration(["obfs4", "foo"])
    events = [event for piece in chunked(output, cuts) for event in pieces.feed(piece)]
    assert events == expected
    assert sum(isinstance(event, ProxyBroken) for event in events) <= 1
    assert sum(isinstance(event, ProxyConfigured) for event in events) <= 1
    assert not (whole.broken and whole.configured)


@FUZZ
@given(seeds_mutated_or_random(PROXY_SEEDS))
def test_a_line_parses_or_raises_the_module_error(output):
    for line in output.decode("utf-8", "backslashreplace").split("\n"):
        try:
            parse_line(line)
        except TransportProtocolError:
            pass


def _run_socks5(pieces: list[bytes], with_arguments: bool) -> tuple[bytes, bytes] | str:
    """(everything sent after the greeting, the bytes after the reply) or the error's message."""
    handshake = Socks5ClientHandshake("127.0.0.1", 80, (b"a=b", b"\0") if with_arguments else None)
    sent = b""
    try:
        for index, piece in enumerate(pieces):
            progress = handshake.receive(piece)
            sent += progress.send
            if progress.finished:
                return sent, progress.remainder + b"".join(pieces[index + 1:])
    except Socks5ClientError as exc:
        assert not handshake.finished
        return str(exc)
    return sent, b"(waiting)"


@FUZZ
@given(seeds_mutated_or_random(SOCKS_SEEDS), st.lists(st.integers(0, 40), max_size=5), st.booleans())
def test_socks5_replies_advance_or_raise_the_module_error_however_they_are_cut(replies, cuts, with_arguments):
    assert _run_socks5(chunked(replies, cuts), with_arguments) == _run_socks5([replies], with_arguments)


def _unescape_pairs(encoded: str) -> list[tuple[str, str]]:
    """An independent reader of pt-spec 3.5 (goptlib's parseClientParameters): backslash makes the next
    character literal; unescaped ';' separates pairs and the first unescaped '=' ends a key."""
    pairs, key, current, escaped = [], None, [], False
    for char in encoded:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "=" and key is None:
            key, current = "".join(current), []
        elif char == ";":
            pairs.append((key, "".join(current)))
            key, current = None, []
        else:
            current.append(char)
    pairs.append((key, "".join(current)))
    return pairs


@FUZZ
@given(st.lists(st.tuples(st.text(min_size=1, max_size=30), st.text(max_size=60)), min_size=1, max_size=8))
def test_escaped_arguments_split_back_into_the_same_pairs(pairs):
    try:
        credentials = socks5_credentials(pairs)
    except SocksArgumentsError:
        return
    username, password = credentials
    encoded = username + (b"" if password == b"\0" else password)
    assert len(username) <= 255 and len(password) <= 255
    assert _unescape_pairs(encoded.decode("utf-8")) == pairs
