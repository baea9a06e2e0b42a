"""Control-port authentication: tor's hashed passwords, the cookie, SAFECOOKIE, pre-auth rules.

The expected replies in the tables below were captured from a real tor 0.4.9.11
(DisableNetwork, ControlPort on 127.0.0.1) with the same configuration.
"""

import io
import socket
import stat
import threading

import pytest
import stem.connection
import stem.response
import stem.socket
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from oppy.control.auth import (
    AUTH_COOKIE_LEN,
    PRE_AUTH_COMMANDS,
    Authenticator,
    CookieFileError,
    read_cookie_file,
    safecookie_client_hash,
    safecookie_server_hash,
    write_cookie_file,
)
from oppy.control.codec import ControlCommand, ControlLineReader
from oppy.crypto.s2k import HashedPasswordFormatError
from tests.unit.test_crypto_s2k import TOR_HASH_OF_X

COOKIE = bytes(range(0x40, 0x60))
COOKIE_PATH = "/var/lib/oppy/control_auth_cookie"
SERVER_NONCE = bytes(range(0xA0, 0xC0))


def independent_hmac(key: bytes, message: bytes) -> bytes:
    mac = crypto_hmac.HMAC(key, hashes.SHA256())
    mac.update(message)
    return mac.finalize()


class TestCookie:
    def test_write_and_read(self, tmp_path):
        path = tmp_path / "control_auth_cookie"
        cookie = write_cookie_file(path)
        assert len(cookie) == AUTH_COOKIE_LEN
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert read_cookie_file(path) == cookie
        assert [p.name for p in tmp_path.iterdir()] == ["control_auth_cookie"]  # no temp file left

    def test_rewrite_tightens_mode_and_replaces_content(self, tmp_path):
        path = tmp_path / "cookie"
        path.write_bytes(b"old")
        path.chmod(0o644)
        assert write_cookie_file(path, COOKIE) == COOKIE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_bytes() == COOKIE

    def test_read_refuses_wrong_size_and_missing(self, tmp_path):
        for content in (b"", COOKIE[:31], COOKIE + b"x"):
            (tmp_path / "c").write_bytes(content)
            with pytest.raises(CookieFileError):
                read_cookie_file(tmp_path / "c")
        with pytest.raises(CookieFileError):
            read_cookie_file(tmp_path / "missing")

    def test_write_refuses_wrong_size(self, tmp_path):
        with pytest.raises(ValueError):
            write_cookie_file(tmp_path / "c", b"short")


class TestSafeCookie:
    def test_hashes_against_independent_hmac_and_stems_constants(self):
        client_nonce = b"\x01" * 32
        message = COOKIE + client_nonce + SERVER_NONCE
        assert safecookie_server_hash(COOKIE, client_nonce, SERVER_NONCE) == independent_hmac(
            stem.connection.SERVER_HASH_CONSTANT, message
        )
        assert safecookie_client_hash(COOKIE, client_nonce, SERVER_NONCE) == independent_hmac(
            stem.connection.CLIENT_HASH_CONSTANT, message
        )


def make_authenticator(cookie=True, password=True, nonce=SERVER_NONCE):
    return Authenticator(
        tor_version="0.4.9.11",
        cookie=COOKIE if cookie else None,
        cookie_path=COOKIE_PATH if cookie else None,
        hashed_passwords=[TOR_HASH_OF_X] if password else [],
        random_bytes=lambda n: nonce[:n],
    )


def run(authenticator, raw_lines):
    """Feed raw command lines; return (replies joined, closed flag), stopping at a close."""
    reader = ControlLineReader()
    out = b""
    for raw in raw_lines:
        for command in reader.feed(raw):
            outcome = authenticator.handle(command)
            if outcome is None:
                out += b"<dispatch>"
                continue
            out += outcome.reply
            if outcome.close:
                return out, True
    return out, False


PASSWORD_OR_COOKIE = (
    b"515 Authentication failed: Password did not match HashedControlPassword *or* authentication cookie.\r\n"
)
PROTOCOLINFO_BOTH = (
    b"250-PROTOCOLINFO 1\r\n"
    b'250-AUTH METHODS=COOKIE,SAFECOOKIE,HASHEDPASSWORD COOKIEFILE="/var/lib/oppy/control_auth_cookie"\r\n'
    b'250-VERSION Tor="0.4.9.11"\r\n'
    b"250 OK\r\n"
)
AUTH_REQUIRED = b"514 Authentication required.\r\n"
HEX_PW_MISMATCH = (
    b"515 Authentication failed: Password did not match HashedControlPassword value from configuration. "
    b"Maybe you tried a plain text password? If so, the standard requires that you put it in double quotes.\r\n"
)

# (configuration, command lines, expected reply bytes, connection closed afterwards)
TOR_CAPTURED = [
    ("both", [b"PROTOCOLINFO 1\r\n"], PROTOCOLINFO_BOTH, False),
    ("both", [b"PROTOCOLINFO 1\r\n", b"PROTOCOLINFO 1\r\n"], PROTOCOLINFO_BOTH + AUTH_REQUIRED, True),
    ("both", [b"PROTOCOLINFO abc\r\n"], b'513 No such version "abc"\r\n', True),
    ("both", [b"GETINFO version\r\n"], AUTH_REQUIRED, True),
    ("both", [b"\r\n"], AUTH_REQUIRED, True),
    ("both", [b"+AUTHENTICATE\r\nfoo\r\n.\r\n"], AUTH_REQUIRED, True),
    ("both", [b"+QUIT\r\n.\r\n"], AUTH_REQUIRED, True),
    ("both", [b"QUIT\r\n"], b"250 closing connection\r\n", True),
    ("both", [b'authenticate "x"   \r\n', b"GETINFO version\r\n"], b"250 OK\r\n<dispatch>", False),
    ("both", [b"AUTHENTICATE 78\n", b"PROTOCOLINFO\r\n", b"PROTOCOLINFO -1\r\n"],
     b"250 OK\r\n" + PROTOCOLINFO_BOTH + b'513 No such version "-1"\r\n', False),
    ("both", [b'AUTHENTICATE "x"\r\n', b'AUTHENTICATE "y"\r\n'],
     b"250 OK\r\n" + PASSWORD_OR_COOKIE, True),
    ("both", [b'AUTHENTICATE "y"\r\n'],
     PASSWORD_OR_COOKIE, True),
    ("both", [b"AUTHENTICATE\r\n"],
     PASSWORD_OR_COOKIE, True),
    ("both", [b"AUTHENTICATE " + COOKIE.hex().upper().encode() + b"\r\n"], b"250 OK\r\n", False),
    ("both", [b"AUTHENTICATE zz\r\n"],
     b"551 Invalid hexadecimal encoding.  Maybe you tried a plain text password?  "
     b"If so, the standard requires that you put it in double quotes.\r\n", True),
    ("both", [b"AUTHENTICATE 787\r\n"],
     b"551 Invalid hexadecimal encoding.  Maybe you tried a plain text password?  "
     b"If so, the standard requires that you put it in double quotes.\r\n", True),
    ("both", [b"AUTHENTICATE a b\r\n"], b"512 Too many arguments to AUTHENTICATE.\r\n", True),
    ("both", [b"AUTHENTICATE k=v\r\n"], b"512 AUTHENTICATE does not accept keyword arguments.\r\n", True),
    ("both", [b'AUTHENTICATE "unterminated\r\n', b"QUIT\r\n"],
     b"512 Bad arguments to AUTHENTICATE: Cannot parse keyword argument(s)\r\n250 closing connection\r\n", True),
    ("both", [b"AUTHCHALLENGE\r\n", b"QUIT\r\n"],
     b"512 Bad arguments to AUTHCHALLENGE: Need at least 1 argument(s)\r\n250 closing connection\r\n", True),
    ("both", [b"AUTHCHALLENGE FOO 00\r\n"], b"513 AUTHCHALLENGE only supports SAFECOOKIE authentication\r\n", True),
    ("both", [b"AUTHCHALLENGE SAFECOOKIE zz\r\n"], b"513 Invalid base16 client nonce\r\n", True),
    ("both", [b"AUTHCHALLENGE SAFECOOKIE k=v\r\n"], b"512 AUTHCHALLENGE does not accept keyword arguments.\r\n", True),
    ("both", [b"AUTHCHALLENGE SAFECOOKIE 00 11\r\n"], b"512 Wrong number of arguments for AUTHCHALLENGE\r\n", True),
    ("password", [b'AUTHENTICATE "y"\r\n'],
     b"515 Authentication failed: Password did not match HashedControlPassword value from configuration\r\n", True),
    ("password", [b"AUTHENTICATE 79\r\n"], HEX_PW_MISMATCH, True),
    ("password", [b"AUTHCHALLENGE SAFECOOKIE 00\r\n"], b"515 Cookie authentication is disabled\r\n", True),
    ("cookie", [b'AUTHENTICATE "x"\r\n'],
     b"515 Authentication failed: Wrong length on authentication cookie.\r\n", True),
    ("cookie", [b"AUTHENTICATE " + b"00" * 32 + b"\r\n"],
     b"515 Authentication failed: Authentication cookie did not match expected value.\r\n", True),
    ("null", [b'AUTHENTICATE "anything"\r\n', b"SETEVENTS \r\n"], b"250 OK\r\n<dispatch>", False),
    ("null", [b"AUTHENTICATE\r\n"], b"250 OK\r\n", False),
    # Not captured from tor but read from control_auth.c (tor_parse_long(arg, 10, 0, LONG_MAX)): a version
    # of thousands of digits, one past LONG_MAX, or digits Python's int() takes but strtol does not is
    # "513 No such version" (and a close before authentication), not an exception that drops the connection.
    ("both", [b"PROTOCOLINFO " + b"1" * 5000 + b"\r\n"], b'513 No such version "' + b"1" * 5000 + b'"\r\n', True),
    ("both", [b"PROTOCOLINFO 9223372036854775808\r\n"], b'513 No such version "9223372036854775808"\r\n', True),
    ("both", ["PROTOCOLINFO １\r\n".encode()], b'513 No such version "\\357\\274\\221"\r\n', True),
    ("both", [b"PROTOCOLINFO +0009223372036854775807\r\n"], PROTOCOLINFO_BOTH, False),
    ("both", [b"AUTHENTICATE 78\n", b"PROTOCOLINFO 1 " + b"2" * 5000 + b"\r\n", b"PROTOCOLINFO 1\r\n"],
     b"250 OK\r\n" + b'513 No such version "' + b"2" * 5000 + b'"\r\n' + PROTOCOLINFO_BOTH, False),
]

CONFIGS = {
    "both": dict(cookie=True, password=True),
    "password": dict(cookie=False, password=True),
    "cookie": dict(cookie=True, password=False),
    "null": dict(cookie=False, password=False),
}


class TestAuthenticatorAgainstTor:
    @pytest.mark.parametrize(("config", "lines", "expected", "closed"), TOR_CAPTURED)
    def test_replies_match_tor(self, config, lines, expected, closed):
        authenticator = make_authenticator(**CONFIGS[config])
        assert run(authenticator, lines) == (expected, closed)

    def test_safecookie_flow(self):
        authenticator = make_authenticator()
        client_nonce = bytes(range(32))
        out, closed = run(authenticator, [b"AUTHCHALLENGE SAFECOOKIE " + client_nonce.hex().encode() + b"\r\n"])
        assert not closed
        server_hash = independent_hmac(stem.connection.SERVER_HASH_CONSTANT, COOKIE + client_nonce + SERVER_NONCE)
        assert out == (
            f"250 AUTHCHALLENGE SERVERHASH={server_hash.hex().upper()} SERVERNONCE={SERVER_NONCE.hex().upper()}\r\n"
        ).encode()
        # A challenge is pending: no second AUTHCHALLENGE or PROTOCOLINFO before AUTHENTICATE.
        assert not authenticator.is_allowed(ControlCommand("AUTHCHALLENGE", "SAFECOOKIE 00"))
        assert not authenticator.is_allowed(ControlCommand("PROTOCOLINFO", "1"))
        client_hash = independent_hmac(stem.connection.CLIENT_HASH_CONSTANT, COOKIE + client_nonce + SERVER_NONCE)
        assert run(authenticator, [b"AUTHENTICATE " + client_hash.hex().encode() + b"\r\n"]) == (b"250 OK\r\n", False)
        assert authenticator.authenticated

    def test_quoted_client_nonce_is_used_as_is(self):
        authenticator = make_authenticator()
        out, _ = run(authenticator, [b'AUTHCHALLENGE SAFECOOKIE "hello"\r\n'])
        expected = independent_hmac(stem.connection.SERVER_HASH_CONSTANT, COOKIE + b"hello" + SERVER_NONCE)
        assert expected.hex().upper().encode() in out

    @pytest.mark.parametrize(
        ("answer", "error"),
        [
            (b"0011", b"Wrong length for safe cookie response."),
            (b"00" * 32, b"Safe cookie response did not match expected value."),
            (COOKIE.hex().encode(), b"Safe cookie response did not match expected value."),
            (b'"x"', b"Wrong length for safe cookie response."),
        ],
    )
    def test_after_a_challenge_only_the_safecookie_answer_counts(self, answer, error):
        authenticator = make_authenticator()
        run(authenticator, [b"AUTHCHALLENGE SAFECOOKIE 00\r\n"])
        assert run(authenticator, [b"AUTHENTICATE " + answer + b"\r\n"]) == (
            b"515 Authentication failed: " + error + b"\r\n",
            True,
        )
        assert not authenticator.authenticated

    def test_gate(self):
        authenticator = make_authenticator()
        assert PRE_AUTH_COMMANDS == {"PROTOCOLINFO", "AUTHCHALLENGE", "AUTHENTICATE", "QUIT"}
        assert not authenticator.is_allowed(ControlCommand("SETEVENTS", ""))
        assert authenticator.is_allowed(ControlCommand("QUIT", ""))
        run(authenticator, [b'AUTHENTICATE "x"\r\n'])
        assert authenticator.is_allowed(ControlCommand("SETEVENTS", ""))
        assert authenticator.handle(ControlCommand("SETEVENTS", "")) is None
        assert authenticator.handle(ControlCommand("LOADCONF", "", b"x\n")) is None

    def test_methods(self):
        assert make_authenticator().methods == ("COOKIE", "SAFECOOKIE", "HASHEDPASSWORD")
        assert make_authenticator(cookie=False).methods == ("HASHEDPASSWORD",)
        assert make_authenticator(password=False).methods == ("COOKIE", "SAFECOOKIE")
        assert make_authenticator(cookie=False, password=False).methods == ("NULL",)

    def test_configuration_errors(self):
        with pytest.raises(HashedPasswordFormatError):
            Authenticator(tor_version="0.4.9.11", hashed_passwords=["16:nothex"])
        with pytest.raises(ValueError):
            Authenticator(tor_version="0.4.9.11", cookie=COOKIE)
        with pytest.raises(ValueError):
            Authenticator(tor_version="0.4.9.11", cookie=b"short", cookie_path="/x")


class TestStemParsesReplies:
    def test_protocolinfo(self):
        authenticator = make_authenticator()
        out, _ = run(authenticator, [b"PROTOCOLINFO 1\r\n"])
        message = stem.socket.recv_message(io.BytesIO(out))
        stem.response.convert("PROTOCOLINFO", message)
        assert message.protocol_version == 1
        assert str(message.tor_version) == "0.4.9.11"
        assert message.cookie_path == COOKIE_PATH
        assert set(message.auth_methods) == {
            stem.connection.AuthMethod.COOKIE,
            stem.connection.AuthMethod.SAFECOOKIE,
            stem.connection.AuthMethod.PASSWORD,
        }

    def test_cookie_path_with_quotes_survives_escaping(self):
        authenticator = Authenticator(tor_version="0.4.9.11", cookie=COOKIE, cookie_path='/tmp/we"ird dir/cookie')
        message = stem.socket.recv_message(io.BytesIO(authenticator.handle(ControlCommand("PROTOCOLINFO", "1")).reply))
        stem.response.convert("PROTOCOLINFO", message)
        assert message.cookie_path == '/tmp/we"ird dir/cookie'

    def test_authchallenge(self):
        authenticator = make_authenticator()
        out, _ = run(authenticator, [b"AUTHCHALLENGE SAFECOOKIE " + b"ab" * 32 + b"\r\n"])
        message = stem.socket.recv_message(io.BytesIO(out))
        stem.response.convert("AUTHCHALLENGE", message)
        assert message.server_nonce == SERVER_NONCE
        assert message.server_hash == safecookie_server_hash(COOKIE, b"\xab" * 32, SERVER_NONCE)


class _LoopbackControlPort:
    """A tiny threaded control port on 127.0.0.1 that runs the reader and an Authenticator,
    so stem's own authentication code can be pointed at it."""

    def __init__(self, make):
        self._make = make
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.authenticated = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                self._session(connection)

    def _session(self, connection):
        connection.settimeout(10)
        reader = ControlLineReader()
        authenticator = self._make()
        while True:
            try:
                data = connection.recv(4096)
            except OSError:
                return
            if not data:
                return
            for command in reader.feed(data):
                outcome = authenticator.handle(command)
                if outcome is None:
                    connection.sendall(b"250 OK\r\n")
                    continue
                if authenticator.authenticated:
                    self.authenticated.append(True)  # before replying: stem returns on the reply
                connection.sendall(outcome.reply)
                if outcome.close:
                    return

    def close(self):
        self.listener.close()


@pytest.fixture
def cookie_file(tmp_path):
    path = tmp_path / "control_auth_cookie"
    write_cookie_file(path, COOKIE)
    return str(path)


class TestStemAuthenticatesAgainstOppy:
    def _connect(self, make):
        server = _LoopbackControlPort(make)
        control = stem.socket.ControlPort(port=server.port)
        return server, control

    @pytest.mark.parametrize("method", ["null", "password", "cookie", "safecookie", "auto"])
    def test_stem_methods(self, method, cookie_file):
        def make():
            return Authenticator(
                tor_version="0.4.9.11",
                cookie=None if method in ("null", "password") else COOKIE,
                cookie_path=None if method in ("null", "password") else cookie_file,
                hashed_passwords=[TOR_HASH_OF_X] if method in ("password", "auto") else [],
            )

        server, control = self._connect(make)
        try:
            if method == "null":
                stem.connection.authenticate_none(control)
            elif method == "password":
                stem.connection.authenticate_password(control, "x")
            elif method == "cookie":
                stem.connection.authenticate_cookie(control, cookie_file)
            elif method == "safecookie":
                stem.connection.authenticate_safecookie(control, cookie_file)
            else:
                stem.connection.authenticate(control, password="x")
            assert server.authenticated
        finally:
            control.close()
            server.close()

    def test_stem_sees_a_wrong_password(self):
        server, control = self._connect(lambda: make_authenticator(cookie=False))
        try:
            with pytest.raises(stem.connection.IncorrectPassword):
                stem.connection.authenticate_password(control, "wrong")
            assert not server.authenticated
        finally:
            control.close()
            server.close()
