"""Control-port authentication as tor does it: hashed passwords, the cookie, SAFECOOKIE.

The hashed-password format itself is :mod:`oppy.crypto.s2k`'s (the configuration checks it too).
References: control-spec "AUTHENTICATE", "PROTOCOLINFO", "AUTHCHALLENGE"; C tor control_auth.c and
control.c (which commands are allowed before authentication). Error texts are tor's, because
controllers show them to users.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterable

from oppy.config import parse_decimal
from oppy.crypto.s2k import decode_hashed_password, s2k_rfc2440
from oppy.control.codec import (
    ControlCommand,
    ControlSyntaxError,
    ascii_upper,
    bad_arguments_reply,
    parse_arguments,
    quote,
    reply,
)

__all__ = [
    "AUTH_COOKIE_LEN",
    "SAFECOOKIE_NONCE_LEN",
    "SAFECOOKIE_SERVER_TO_CONTROLLER_KEY",
    "SAFECOOKIE_CONTROLLER_TO_SERVER_KEY",
    "ControlAuthError",
    "CookieFileError",
    "generate_cookie",
    "write_cookie_file",
    "read_cookie_file",
    "safecookie_server_hash",
    "safecookie_client_hash",
    "AuthOutcome",
    "Authenticator",
    "PRE_AUTH_COMMANDS",
]

# control_auth.c AUTHENTICATION_COOKIE_LEN: the cookie file holds exactly 32 bytes.
AUTH_COOKIE_LEN = 32
# control_auth.c SAFECOOKIE_SERVER_NONCE_LEN (DIGEST256_LEN); stem sends 32-byte nonces too.
SAFECOOKIE_NONCE_LEN = 32
SAFECOOKIE_HASH_LEN = 32  # HMAC-SHA256
# control-spec "AUTHCHALLENGE": the HMAC keys of the two SAFECOOKIE hashes.
SAFECOOKIE_SERVER_TO_CONTROLLER_KEY = b"Tor safe cookie authentication server-to-controller hash"
SAFECOOKIE_CONTROLLER_TO_SERVER_KEY = b"Tor safe cookie authentication controller-to-server hash"
# tor creates the cookie file readable by its owner only (CookieAuthFileGroupReadable off).
COOKIE_FILE_MODE = 0o600

# control.c is_valid_initial_command: the only commands allowed before AUTHENTICATE succeeds.
PRE_AUTH_COMMANDS = frozenset({"PROTOCOLINFO", "AUTHCHALLENGE", "AUTHENTICATE", "QUIT"})

# control-spec "Replies".
_OK = 250
_BAD_SYNTAX = 512
_UNRECOGNIZED_ARGUMENT = 513
_AUTH_REQUIRED = 514
_BAD_AUTH = 515
_INTERNAL_ERROR = 551

_AUTH_FAILED_PREFIX = "Authentication failed: "
_MSG_AUTH_REQUIRED = "Authentication required."
_MSG_BAD_HEX_PASSWORD = (
    "Invalid hexadecimal encoding.  Maybe you tried a plain text password?  "
    "If so, the standard requires that you put it in double quotes."
)
_MSG_PASSWORD_MISMATCH_QUOTED = "Password did not match HashedControlPassword value from configuration"
_MSG_PASSWORD_MISMATCH_HEX = (
    "Password did not match HashedControlPassword value from configuration. "
    "Maybe you tried a plain text password? If so, the standard requires that you put it in double quotes."
)
_MSG_PASSWORD_OR_COOKIE = "Password did not match HashedControlPassword *or* authentication cookie."
_MSG_COOKIE_LENGTH = "Wrong length on authentication cookie."
_MSG_COOKIE_MISMATCH = "Authentication cookie did not match expected value."
_MSG_SAFECOOKIE_LENGTH = "Wrong length for safe cookie response."
_MSG_SAFECOOKIE_MISMATCH = "Safe cookie response did not match expected value."


class ControlAuthError(ValueError):
    """Base class of the authentication module's errors."""


class CookieFileError(ControlAuthError):
    """The cookie file is missing, unreadable or not exactly 32 bytes."""


# --------------------------------------------------------------------------- cookie


def generate_cookie() -> bytes:
    """A fresh random authentication cookie."""
    return os.urandom(AUTH_COOKIE_LEN)


def write_cookie_file(path: str | os.PathLike[str], cookie: bytes | None = None) -> bytes:
    """Write ``cookie`` (a new one if None) to ``path`` with mode 0600, atomically; return it."""
    if cookie is None:
        cookie = generate_cookie()
    if len(cookie) != AUTH_COOKIE_LEN:
        raise ValueError(f"a cookie is {AUTH_COOKIE_LEN} bytes")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temp_path = tempfile.mkstemp(prefix=".control_auth_cookie.", dir=directory)
    try:
        os.fchmod(descriptor, COOKIE_FILE_MODE)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(cookie)
        os.replace(temp_path, path)
    except BaseException:
        try:
            os.unlink(temp_path)
        except FileNotFoundError:
            pass
        raise
    return bytes(cookie)


def read_cookie_file(path: str | os.PathLike[str]) -> bytes:
    """The cookie in ``path``; stem, like tor, refuses a file that is not exactly 32 bytes."""
    try:
        with open(path, "rb") as handle:
            cookie = handle.read(AUTH_COOKIE_LEN + 1)
    except OSError as exc:
        raise CookieFileError(f"cannot read cookie file {os.fspath(path)!r}: {exc.strerror}") from None
    if len(cookie) != AUTH_COOKIE_LEN:
        raise CookieFileError(f"cookie file {os.fspath(path)!r} is not {AUTH_COOKIE_LEN} bytes")
    return cookie


# --------------------------------------------------------------------------- SAFECOOKIE


def safecookie_server_hash(cookie: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    """SERVERHASH of AUTHCHALLENGE: HMAC-SHA256(server-to-controller key, cookie||cnonce||snonce)."""
    return hmac.new(SAFECOOKIE_SERVER_TO_CONTROLLER_KEY, cookie + client_nonce + server_nonce, hashlib.sha256).digest()


def safecookie_client_hash(cookie: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    """What the controller must AUTHENTICATE with after AUTHCHALLENGE (controller-to-server key)."""
    return hmac.new(SAFECOOKIE_CONTROLLER_TO_SERVER_KEY, cookie + client_nonce + server_nonce, hashlib.sha256).digest()


# --------------------------------------------------------------------------- per-connection state


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    """What to send for an authentication-related command, and whether to close afterwards
    (tor closes after 514, 515 and most AUTHENTICATE/AUTHCHALLENGE argument errors)."""

    reply: bytes
    close: bool = False


def _hex_bytes(text: str) -> bytes | None:
    """tor's base16_decode: even length, hex digits only (either case)."""
    if len(text) % 2 or not all(char in "0123456789abcdefABCDEF" for char in text):
        return None
    return bytes.fromhex(text)


def _end(code: int, message: str, close: bool = False) -> AuthOutcome:
    return AuthOutcome(reply(code, [message]), close)


class Authenticator:
    """The authentication state of one control connection.

    Configure it with the cookie (COOKIE and SAFECOOKIE), hashed passwords (HASHEDPASSWORD),
    or neither (NULL). :meth:`handle` answers PROTOCOLINFO, AUTHCHALLENGE, AUTHENTICATE and QUIT
    at any time and refuses everything else before authentication; after authentication it
    returns None for the commands it does not own.
    """

    def __init__(
        self,
        *,
        tor_version: str,
        cookie: bytes | None = None,
        cookie_path: str | os.PathLike[str] | None = None,
        hashed_passwords: Iterable[str] = (),
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if cookie is not None and len(cookie) != AUTH_COOKIE_LEN:
            raise ValueError(f"a cookie is {AUTH_COOKIE_LEN} bytes")
        if cookie is not None and cookie_path is None:
            raise ValueError("cookie authentication needs the cookie file's path for PROTOCOLINFO")
        self._tor_version = tor_version
        self._cookie = None if cookie is None else bytes(cookie)
        self._cookie_path = None if cookie_path is None else os.path.abspath(os.fspath(cookie_path))
        self._hashed = tuple(decode_hashed_password(value) for value in hashed_passwords)
        self._random_bytes = random_bytes
        self._authenticated = False
        self._sent_protocolinfo = False
        self._safecookie_client_hash: bytes | None = None

    # ---------------------------------------------------------------- state

    @property
    def authenticated(self) -> bool:
        return self._authenticated

    @property
    def methods(self) -> tuple[str, ...]:
        """Auth methods in tor's PROTOCOLINFO order; NULL only when nothing is configured."""
        methods: list[str] = []
        if self._cookie is not None:
            methods += ["COOKIE", "SAFECOOKIE"]
        if self._hashed:
            methods.append("HASHEDPASSWORD")
        return tuple(methods) or ("NULL",)

    def is_allowed(self, command: ControlCommand) -> bool:
        """control.c is_valid_initial_command: may this command run in the current state?"""
        if self._authenticated:
            return True
        if command.data is not None:
            return False  # "+AUTHENTICATE" is not AUTHENTICATE to tor
        keyword = command.keyword
        if keyword == "PROTOCOLINFO":
            return not self._sent_protocolinfo and self._safecookie_client_hash is None
        if keyword == "AUTHCHALLENGE":
            return self._safecookie_client_hash is None
        return keyword in ("AUTHENTICATE", "QUIT")

    # ---------------------------------------------------------------- dispatch

    def handle(self, command: ControlCommand) -> AuthOutcome | None:
        """Answer ``command`` if it is this object's business, else None (only once
        authenticated: before that every other command gets 514 and a close)."""
        is_one_line = command.data is None
        if is_one_line and command.keyword == "QUIT":
            return _end(_OK, "closing connection", close=True)
        if not self.is_allowed(command):
            return _end(_AUTH_REQUIRED, _MSG_AUTH_REQUIRED, close=True)
        if not is_one_line:
            return None
        if command.keyword == "PROTOCOLINFO":
            return self._protocolinfo(command)
        if command.keyword == "AUTHCHALLENGE":
            return self._authchallenge(command)
        if command.keyword == "AUTHENTICATE":
            return self._authenticate(command)
        return None

    # ---------------------------------------------------------------- PROTOCOLINFO

    def protocolinfo_lines(self) -> list[str]:
        """The PROTOCOLINFO reply lines (without codes), as tor's handle_control_protocolinfo."""
        auth = "AUTH METHODS=" + ",".join(self.methods)
        if self._cookie_path is not None and self._cookie is not None:
            auth += " COOKIEFILE=" + quote(self._cookie_path)
        return ["PROTOCOLINFO 1", auth, "VERSION Tor=" + quote(self._tor_version), "OK"]

    def _protocolinfo(self, command: ControlCommand) -> AuthOutcome:
        self._sent_protocolinfo = True
        for version in parse_arguments(command.args).positional:
            if not _is_protocol_version(version):
                return _end(
                    _UNRECOGNIZED_ARGUMENT, f"No such version {quote(version)}", close=not self._authenticated
                )
        return AuthOutcome(reply(_OK, self.protocolinfo_lines()))

    # ---------------------------------------------------------------- AUTHCHALLENGE

    def _authchallenge(self, command: ControlCommand) -> AuthOutcome:
        try:
            args = parse_arguments(
                command.args, min_positional=1, max_positional=1, keywords=True, keyless=True, quoting="qstring"
            )
        except ControlSyntaxError as error:
            return AuthOutcome(bad_arguments_reply(command.keyword, error))
        if ascii_upper(args.positional[0]) != "SAFECOOKIE":
            return _end(_UNRECOGNIZED_ARGUMENT, "AUTHCHALLENGE only supports SAFECOOKIE authentication", close=True)
        if self._cookie is None:
            return _end(_BAD_AUTH, "Cookie authentication is disabled", close=True)
        if len(args.keywords) != 1:
            return _end(_BAD_SYNTAX, "Wrong number of arguments for AUTHCHALLENGE", close=True)
        nonce_argument = args.keywords[0]
        if nonce_argument.key is not None:
            return _end(_BAD_SYNTAX, "AUTHCHALLENGE does not accept keyword arguments.", close=True)
        assert nonce_argument.value is not None
        if '"' in command.args:
            client_nonce: bytes | None = nonce_argument.value.encode("utf-8", "surrogateescape")
        else:
            client_nonce = _hex_bytes(nonce_argument.value)
            if client_nonce is None:
                return _end(_UNRECOGNIZED_ARGUMENT, "Invalid base16 client nonce", close=True)
        server_nonce = self._random_bytes(SAFECOOKIE_NONCE_LEN)
        server_hash = safecookie_server_hash(self._cookie, client_nonce, server_nonce)
        self._safecookie_client_hash = safecookie_client_hash(self._cookie, client_nonce, server_nonce)
        text = f"AUTHCHALLENGE SERVERHASH={server_hash.hex().upper()} SERVERNONCE={server_nonce.hex().upper()}"
        return _end(_OK, text)

    # ---------------------------------------------------------------- AUTHENTICATE

    def _authenticate(self, command: ControlCommand) -> AuthOutcome:
        try:
            args = parse_arguments(command.args, max_positional=0, keywords=True, keyless=True, quoting="qstring")
        except ControlSyntaxError as error:
            return AuthOutcome(bad_arguments_reply(command.keyword, error))
        used_quoted_string = False
        if not args.keywords:
            secret = b""
        elif len(args.keywords) > 1:
            return _end(_BAD_SYNTAX, "Too many arguments to AUTHENTICATE.", close=True)
        elif args.keywords[0].key is not None:
            return _end(_BAD_SYNTAX, "AUTHENTICATE does not accept keyword arguments.", close=True)
        elif '"' in command.args:
            used_quoted_string = True
            secret = (args.keywords[0].value or "").encode("utf-8", "surrogateescape")
        else:
            decoded = _hex_bytes(args.keywords[0].value or "")
            if decoded is None:
                return _end(_INTERNAL_ERROR, _MSG_BAD_HEX_PASSWORD, close=True)
            secret = decoded
        failure = self._check_secret(secret, used_quoted_string)
        if failure is not None:
            return _end(_BAD_AUTH, _AUTH_FAILED_PREFIX + failure, close=True)
        self._authenticated = True
        return _end(_OK, "OK")

    def _check_secret(self, secret: bytes, used_quoted_string: bool) -> str | None:
        """tor's handle_control_authenticate decision: None on success, else the error text."""
        if self._safecookie_client_hash is not None:
            expected = self._safecookie_client_hash
            if len(secret) != SAFECOOKIE_HASH_LEN:
                return _MSG_SAFECOOKIE_LENGTH
            if not hmac.compare_digest(expected, secret):
                return _MSG_SAFECOOKIE_MISMATCH
            self._safecookie_client_hash = None
            return None
        if self._cookie is None and not self._hashed:
            return None  # NULL: anything goes
        if self._cookie is not None:
            if len(secret) == AUTH_COOKIE_LEN and hmac.compare_digest(self._cookie, secret):
                return None
            if not self._hashed:
                return _MSG_COOKIE_LENGTH if len(secret) != AUTH_COOKIE_LEN else _MSG_COOKIE_MISMATCH
        for specifier, expected in self._hashed:
            if hmac.compare_digest(s2k_rfc2440(secret, specifier), expected):
                return None
        if self._cookie is not None:
            return _MSG_PASSWORD_OR_COOKIE
        return _MSG_PASSWORD_MISMATCH_QUOTED if used_quoted_string else _MSG_PASSWORD_MISMATCH_HEX


# control_auth.c handle_control_protocolinfo: tor_parse_long(arg, 10, 0, LONG_MAX).
_MAX_PROTOCOL_VERSION = 2**63 - 1


def _is_protocol_version(text: str) -> bool:
    return parse_decimal(text, 0, _MAX_PROTOCOL_VERSION) is not None
