"""Fuzz targets for the control port: the line codec, the argument parsers and whole ControlSessions.

Whatever a controller sends, before or after authentication, in whatever fragments, the session answers
each command with exactly one well-formed reply of a code tor uses (or closes as tor does), never raises,
and stays usable afterwards.
"""

from __future__ import annotations

import io

import stem.socket
from hypothesis import given
from hypothesis import strategies as st

from oppy.config import Config
from oppy.control.codec import (
    ControlCommand,
    ControlLineReader,
    ControlSyntaxError,
    FramingFailure,
    decode_qstring,
    parse_arguments,
    parse_kvline,
    unescape_cstring,
)
from oppy.control.session import AuthSettings, ControlHub
from oppy.stream.stream import StreamState
from tests.unit.fuzz.budget import FUZZ
from tests.unit.fuzz.strategies import chunked, cuts, mutated, seeds_mutated_or_random
from tests.unit.test_control_commands import FP, FakeBackend, add_stream, built_circuit

# --------------------------------------------------------------------------- the codec


@FUZZ
@given(st.lists(st.binary(max_size=80), max_size=12), st.integers(min_value=3, max_value=120))
def test_line_reader_on_random_bytes_never_raises_and_stays_bounded(chunks, limit):
    reader = ControlLineReader(max_command_length=limit)
    for chunk in chunks:
        for item in reader.feed(chunk):
            assert isinstance(item, (ControlCommand, FramingFailure))
        assert reader.buffered_bytes <= limit


@FUZZ
@given(st.binary(max_size=300), cuts)
def test_line_reader_fragmentation_never_changes_the_result(stream, cut_points):
    reference = ControlLineReader(max_command_length=100).feed(stream)
    reader = ControlLineReader(max_command_length=100)
    assert [item for chunk in chunked(stream, cut_points) for item in reader.feed(chunk)] == reference


@FUZZ
@given(st.text(max_size=60), st.booleans(), st.sampled_from(["cstring", "qstring", None]))
def test_argument_parsers_raise_only_their_own_error(text, keyless, quoting):
    for call in (
        lambda: parse_kvline(text, keyless=keyless, valueless=not keyless, quoting=quoting),
        lambda: parse_arguments(text, max_positional=1, keywords=True, keyless=keyless, quoting=quoting),
        lambda: unescape_cstring(text),
        lambda: decode_qstring(text),
    ):
        try:
            call()
        except ControlSyntaxError:
            pass


# --------------------------------------------------------------------------- sessions

# control-spec "Replies": every code oppy may answer a command with.
REPLY_CODES = {"250", "500", "510", "512", "513", "514", "515", "551", "552", "553", "555"}
EVENT_CODE = "650"
INTERNAL_ERROR = b"551 Internal error\r\n"
COOKIE = bytes(range(32))

# One well-formed line of every command oppy implements (and of the authentication commands), from
# which mutated ones are made.
SEED_COMMANDS: tuple[bytes, ...] = tuple(line.encode() for line in (
    "PROTOCOLINFO 1",
    "PROTOCOLINFO",
    "AUTHCHALLENGE SAFECOOKIE " + "00" * 32,
    'AUTHCHALLENGE SAFECOOKIE "nonce"',
    'AUTHENTICATE "password"',
    "AUTHENTICATE " + COOKIE.hex(),
    "AUTHENTICATE",
    "GETINFO version config-text",
    f"GETINFO ns/id/${FP[0]} md/id/{FP[1]} ns/name/guard0",
    "GETINFO circuit-status stream-status status/bootstrap-phase net/listeners/socks",
    "GETINFO ip-to-country/127.0.0.1 exit-policy/default entry-guards",
    "GETCONF SocksPort MaxCircuitDirtiness Nickname",
    'SETCONF MaxCircuitDirtiness="10 minutes" Log="info stdout"',
    "SETCONF __LeaveStreamsUnattached=1 MaxClientCircuitsPending=16",
    "RESETCONF Log SocksTimeout",
    "SETEVENTS CIRC STREAM CONF_CHANGED SIGNAL",
    "SIGNAL NEWNYM",
    f"EXTENDCIRCUIT 0 ${FP[0]},${FP[1]},${FP[2]} PURPOSE=general",
    "EXTENDCIRCUIT 5 guard0",
    "ATTACHSTREAM 1 5 HOP=3",
    "ATTACHSTREAM 1 0",
    "CLOSESTREAM 1 3",
    "CLOSECIRCUIT 5 IfUnused",
    "USEFEATURE VERBOSE_NAMES EXTENDED_EVENTS",
    "TAKEOWNERSHIP",
    "+LOADCONF",
))
command_lines = seeds_mutated_or_random(SEED_COMMANDS, max_random=80).map(lambda line: line.replace(b"\n", b" "))


def _framed(line: bytes) -> bytes:
    """The line as a controller sends it (a ``+`` command with an empty CmdData)."""
    return line + b"\r\n" + (b".\r\n" if line.startswith(b"+") else b"")


def _new_session(auth: str, authenticated: bool):
    backend = FakeBackend()
    built_circuit(backend, 5)
    add_stream(backend, 1, StreamState.NEW, awaiting=True)
    settings = AuthSettings(cookie=COOKIE, cookie_path="/nonexistent/control_auth_cookie") if auth == "cookie" \
        else AuthSettings()
    session = ControlHub(backend, settings).open_session()
    if authenticated:
        session.feed(b"AUTHENTICATE " + COOKIE.hex().encode() + b"\r\n")
        assert session.data_to_send() == b"250 OK\r\n"
    return backend, session


def _reply_codes(output: bytes) -> list[str]:
    """The code of each reply in ``output`` (events left out), read as stem reads a control socket."""
    assert INTERNAL_ERROR not in output, output  # an exception caught by the session: a bug
    codes = []
    replies = io.BytesIO(output)
    while replies.tell() < len(output):
        message = stem.socket.recv_message(replies)
        (code, _, _), *_ = message.content()
        if code != EVENT_CODE:
            assert code in REPLY_CODES, output
            assert {line_code for line_code, _, _ in message.content()} == {code}, output
            codes.append(code)
    return codes


def _run_session(auth, authenticated, lines, pieces_of):
    backend, session = _new_session(auth, authenticated)
    stream = b"".join(_framed(line) for line in lines)
    output = b""
    for piece in pieces_of(stream):
        session.feed(piece)
        output += session.data_to_send()
        if session.should_close:
            break
    return backend, session, output


@FUZZ
@given(auth=st.sampled_from(["null", "cookie"]), authenticated=st.sampled_from([True, True, False]),
       lines=st.lists(command_lines, min_size=1, max_size=8), cut_points=cuts)
def test_session_answers_every_command_with_one_proper_reply(auth, authenticated, lines, cut_points):
    backend, session, output = _run_session(auth, authenticated, lines, lambda stream: [stream])
    if output.startswith(b"HTTP/1.0 501 "):  # a browser on the control port (a mutation made "GET ")
        assert session.should_close
        return
    assert output == b"" or output.endswith(b"\r\n")
    codes = _reply_codes(output)
    if not session.should_close:
        assert len(codes) == len(lines), (lines, output)
    else:
        assert 1 <= len(codes) <= len(lines)
    assert backend.config.socks_ports == Config().socks_ports  # nothing changed the listeners

    # However the same bytes are cut, the replies are the same (AUTHCHALLENGE nonces aside).
    _, chunked_session, chunked_output = _run_session(
        auth, authenticated, lines, lambda stream: chunked(stream, cut_points))
    assert _reply_codes(chunked_output) == codes
    assert chunked_session.should_close == session.should_close

    # And the session is still usable.
    if not session.should_close:
        if not session.authenticator.authenticated:
            session.feed(b"AUTHENTICATE " + COOKIE.hex().encode() + b"\r\n")
            answer = session.data_to_send()
            if session.should_close:  # a SAFECOOKIE challenge was pending: the plain cookie is refused
                assert answer.startswith(b"515 ")
                return
            assert answer == b"250 OK\r\n"
        session.feed(b"GETINFO version\r\n")
        assert session.data_to_send().startswith(b"250-version=")


@FUZZ
@given(first=mutated(SEED_COMMANDS[:7]), then=st.lists(command_lines, max_size=3))
def test_mutated_authentication_never_raises_and_closes_or_answers(first, then):
    _, session, output = _run_session("cookie", False, [first.replace(b"\n", b" "), *then], lambda s: [s])
    if not output.startswith(b"HTTP/1.0 501 "):
        assert _reply_codes(output)
