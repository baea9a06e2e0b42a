"""Bridge lines: ``Bridge [transport] IP:PORT [fingerprint] [k=v ...]``, as tor reads them.

A bridge is a relay the consensus does not list; a client that cannot reach the public network reaches it
directly (or through a pluggable transport named by ``transport``, which gets the ``k=v`` arguments).
References: tor(1) ``Bridge``; C tor ``app/config/config.c`` parse_bridge_line and
validate_transport_socks_arguments, ``lib/string/util_string.c`` string_is_C_identifier,
``lib/encoding/keyval.c`` string_is_key_value; pt-spec 3.5 (arguments packed for the transport's SOCKS).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from oppy.config.values import ConfigError, parse_decimal, shortened, split_words
from oppy.pt.protocol import is_transport_name
from oppy.pt.socks5 import MAX_SOCKS5_AUTH_SIZE_TOTAL, encode_arguments

__all__ = [
    "BridgeLine",
    "DEFAULT_BRIDGE_PORT",
    "is_transport_name",
    "parse_bridge_line",
]

# config.c parse_bridge_line: tor_addr_port_parse(..., 443): a bridge address without a port means 443.
DEFAULT_BRIDGE_PORT = 443
# crypto_digest.h HEX_DIGEST_LEN: an RSA identity fingerprint is 40 hex digits (20 bytes).
_FINGERPRINT_HEX_LEN = 40
_HEX = re.compile(r"[0-9A-Fa-f]*")
_MAX_PORT = 65535


@dataclass(frozen=True)
class BridgeLine:
    """One Bridge line. ``fingerprint`` is the bridge's RSA identity digest (20 bytes) when the line gives
    one; ``args`` are the ``k=v`` arguments for the transport, in order; ``value`` is the text as written,
    given back by GETCONF."""

    transport: str | None
    address: str
    port: int
    fingerprint: bytes | None = None
    args: tuple[tuple[str, str], ...] = ()
    value: str = ""

    @property
    def addrport(self) -> str:
        """``IP:PORT``, an IPv6 address in brackets."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    def to_line(self) -> str:
        """The line in tor's canonical form (what a Bridge line written from scratch looks like)."""
        words = [self.transport] if self.transport else []
        words.append(self.addrport)
        if self.fingerprint is not None:
            words.append(self.fingerprint.hex().upper())
        words.extend(f"{key}={value}" for key, value in self.args)
        return " ".join(words)


def _bad(value: str, reason: str) -> ConfigError:
    return ConfigError(f"Could not parse Bridge '{shortened(value)}': {reason}", option="Bridge", value=value)


def _parse_addrport(value: str, text: str) -> tuple[str, int]:
    """address.c tor_addr_port_parse: ``IPv4[:PORT]`` or ``[IPv6][:PORT]``; no host names (a bridge is
    reached without asking a resolver)."""
    host, port_text = text, None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise _bad(value, f"unterminated IPv6 address in '{shortened(text)}'")
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise _bad(value, f"could not parse address '{shortened(text)}'")
            port_text = rest[1:]
        version = 6
    else:
        if text.count(":") == 1:
            host, port_text = text.split(":")
        version = 4
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise _bad(value, f"'{shortened(host)}' is not an IP address") from None
    if address.version != version:
        raise _bad(value, f"an IPv6 address goes in brackets ('[{address}]:PORT')" if version == 4
                   else f"only an IPv6 address goes in brackets (write '{address}:PORT')")
    if port_text is None:
        return str(address), DEFAULT_BRIDGE_PORT
    port = parse_decimal(port_text, 1, _MAX_PORT)
    if port is None:
        raise _bad(value, f"port '{shortened(port_text, 10)}' out of range (1-{_MAX_PORT})")
    return str(address), port


def _parse_fingerprint(value: str, text: str) -> bytes:
    digits = text[1:] if text.startswith("$") else text
    if len(digits) != _FINGERPRINT_HEX_LEN or not _HEX.fullmatch(digits):
        raise _bad(value, f"the fingerprint '{shortened(text)}' is not {_FINGERPRINT_HEX_LEN} hex digits")
    return bytes.fromhex(digits)


def _parse_arg(value: str, word: str) -> tuple[str, str]:
    """keyval.c string_is_key_value: ``key=value`` with a non-empty key (the value may be empty)."""
    key, equals, argument = word.partition("=")
    if not equals or not key:
        raise _bad(value, f"'{shortened(word)}' is not a k=v argument")
    return key, argument


def parse_bridge_line(value: str) -> BridgeLine:
    """A Bridge option's value (config.c parse_bridge_line). A first word that is a C identifier names
    the transport; the word after the address is the fingerprint unless it is a ``k=v`` argument (with a
    transport); without a transport the rest of the line is the fingerprint, which may be written in
    groups of four as tor prints it. Raises ConfigError naming the line."""
    words = split_words(value)
    if not words:
        raise _bad(value, "too few arguments (expected [transport] IP:PORT [fingerprint] [k=v ...])")
    transport = None
    if is_transport_name(words[0]):
        transport, words = words[0], words[1:]
        if not words:
            raise _bad(value, f"no address after the transport name '{shortened(transport)}'")
    address, port = _parse_addrport(value, words[0])
    rest = words[1:]
    fingerprint = None
    args: tuple[tuple[str, str], ...] = ()
    if transport is None:
        if rest:
            if any("=" in word for word in rest):
                raise _bad(value, "k=v arguments are for a pluggable transport (name one before the address)")
            fingerprint = _parse_fingerprint(value, "".join(rest))
    else:
        if rest and "=" not in rest[0]:
            fingerprint = _parse_fingerprint(value, rest[0])
            rest = rest[1:]
        args = tuple(_parse_arg(value, word) for word in rest)
        # The transport gets them in its SOCKS5 username and password, packed as pt-spec 3.5 says (oppy.pt).
        packed = len(encode_arguments(args))
        if packed > MAX_SOCKS5_AUTH_SIZE_TOTAL:
            raise _bad(value, f"the k=v arguments make {packed} bytes; a transport takes at most "
                              f"{MAX_SOCKS5_AUTH_SIZE_TOTAL}")
    return BridgeLine(transport, address, port, fingerprint, args, value)
