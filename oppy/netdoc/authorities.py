"""Directory authorities and fallback directories: records and torrc-line parsers.

The syntax follows C tor's ``parse_dir_authority_line`` and
``parse_dir_fallback_line`` (``src/app/config/config.c``)::

    DirAuthority [NICK] [flags...] IPV4:DIRPORT FINGERPRINT
        flags: orport=N  v3ident=HEX40  ipv6=[ADDR]:PORT  weight=W
               bridge  no-v2  hs  no-hs  upload=/download=/vote=...
        FINGERPRINT may be written in space-separated groups.
    FallbackDir ADDR[:DIRPORT] orport=N id=HEX40 [ipv6=[ADDR]:PORT] [weight=W]

The built-in lists are tor 0.4.9's (see :mod:`oppy.netdoc.builtin_dirs`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from oppy.netdoc.builtin_dirs import AUTHORITY_LINES, FALLBACK_DIR_LINES
from oppy.netdoc.errors import AuthorityLineError
from oppy.netdoc.fields import parse_decimal, parse_fixed_point, parse_hex_digest

__all__ = [
    "DirAuthority",
    "FallbackDir",
    "parse_dir_authority_line",
    "parse_fallback_dir_line",
    "DEFAULT_AUTHORITIES",
    "DEFAULT_FALLBACK_DIRS",
    "v3_authorities",
]

#: A relay nickname: 1-19 ASCII letters or digits (tor-spec, "nickname";
#: tor ``is_legal_nickname``).
_NICKNAME_RE = re.compile(r"[A-Za-z0-9]{1,19}\Z")
#: TCP port range.
MIN_PORT = 1
MAX_PORT = 65535
#: Bare flags tor accepts on a DirAuthority line (``hs``/``no-hs``/``no-v2``
#: are obsolete and ignored by tor; ``bridge`` marks a bridge authority).
_BARE_AUTHORITY_FLAGS = frozenset({"bridge", "no-v2", "hs", "no-hs"})
#: Extra-dirport flags tor accepts (``upload=``, ``download=``, ``vote=``).
_EXTRA_DIRPORT_PREFIXES = ("upload=", "download=", "vote=")


@dataclass(frozen=True, slots=True)
class DirAuthority:
    """One directory authority as configured (default list or torrc)."""

    nickname: str | None
    #: v3 identity (hex, upper case) that signs consensuses; None for a
    #: bridge-only authority, which signs none.
    v3ident: str | None
    #: RSA identity fingerprint of the authority's relay (hex, upper case).
    fingerprint: str
    address: str
    dir_port: int
    or_port: int | None
    #: IPv6 ORPort address ``(address, port)``, if configured.
    ipv6: tuple[str, int] | None = None
    #: Bare flags and unparsed extra options from the line, lower case.
    flags: frozenset[str] = frozenset()
    weight: float = 1.0

    @property
    def is_v3_authority(self) -> bool:
        """True if this authority signs consensuses (has a v3ident)."""
        return self.v3ident is not None

    @property
    def is_bridge_authority(self) -> bool:
        return "bridge" in self.flags


@dataclass(frozen=True, slots=True)
class FallbackDir:
    """One fallback directory mirror: a relay clients may bootstrap from."""

    address: str
    or_port: int
    fingerprint: str
    #: Fallbacks no longer list a DirPort (tor fetches over BEGIN_DIR); 0 if absent.
    dir_port: int = 0
    ipv6: tuple[str, int] | None = None
    weight: float = 1.0
    nickname: str | None = None


def _parse_port(text: str, what: str, line: str) -> int:
    return parse_decimal(text, AuthorityLineError, f"{what} in line {line!r}", MIN_PORT, MAX_PORT)


def _parse_weight(text: str, line: str) -> float:
    return parse_fixed_point(text, AuthorityLineError, f"weight in line {line!r}")


def _parse_ipv6_addrport(text: str, line: str) -> tuple[str, int]:
    """Parse ``[ADDR]:PORT`` (the ``ipv6=`` option) into (address, port)."""
    if not text.startswith("[") or "]:" not in text:
        raise AuthorityLineError(f"bad ipv6 address:port {text!r} in line {line!r}")
    host, _, port = text[1:].partition("]:")
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        raise AuthorityLineError(f"bad ipv6 address {host!r} in line {line!r}") from None
    return str(address), _parse_port(port, "ipv6 port", line)


def _parse_ipv4(text: str, line: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise AuthorityLineError(f"invalid IPv4 address {text!r} in line {line!r}") from None


def _strip_keyword(line: str, keyword: str) -> list[str]:
    items = line.split()
    if items and items[0].lower() == keyword.lower():
        items = items[1:]
    return items


def parse_dir_authority_line(line: str) -> DirAuthority:
    """Parse the argument of a torrc ``DirAuthority`` line (keyword optional)."""
    if not isinstance(line, str):
        raise AuthorityLineError(f"DirAuthority line must be str, not {type(line).__name__}")
    items = _strip_keyword(line, "DirAuthority")
    if not items:
        raise AuthorityLineError("empty DirAuthority line")
    nickname = None
    if _NICKNAME_RE.match(items[0]):
        nickname = items.pop(0)
    or_port = None
    v3ident = None
    ipv6 = None
    weight = 1.0
    flags: set[str] = set()
    while items and not "0" <= items[0][0] <= "9":     # flags until the address (ASCII digits only)
        flag = items.pop(0)
        lowered = flag.lower()
        if lowered.startswith("orport="):
            or_port = _parse_port(flag[len("orport="):], "orport", line)
        elif lowered.startswith("v3ident="):
            v3ident = parse_hex_digest(flag[len("v3ident="):], AuthorityLineError, f"v3ident in line {line!r}")
        elif lowered.startswith("ipv6="):
            if ipv6 is not None:
                raise AuthorityLineError(f"more than one ipv6= option in line {line!r}")
            ipv6 = _parse_ipv6_addrport(flag[len("ipv6="):], line)
        elif flag.startswith("weight="):
            weight = _parse_weight(flag[len("weight="):], line)
        elif lowered in _BARE_AUTHORITY_FLAGS or lowered.startswith(_EXTRA_DIRPORT_PREFIXES):
            flags.add(lowered)
        else:
            raise AuthorityLineError(f"unrecognized flag {flag!r} in DirAuthority line {line!r}")
    if len(items) < 2:
        raise AuthorityLineError(f"DirAuthority line needs ADDRESS:DIRPORT FINGERPRINT: {line!r}")
    address_text, _, port_text = items[0].rpartition(":")
    if not address_text:
        raise AuthorityLineError(f"missing DirPort in DirAuthority address {items[0]!r}")
    address = _parse_ipv4(address_text, line)
    dir_port = _parse_port(port_text, "dirport", line)
    fingerprint = parse_hex_digest("".join(items[1:]), AuthorityLineError,
                                   f"DirAuthority fingerprint in line {line!r}")
    return DirAuthority(
        nickname=nickname,
        v3ident=v3ident,
        fingerprint=fingerprint,
        address=address,
        dir_port=dir_port,
        or_port=or_port,
        ipv6=ipv6,
        flags=frozenset(flags),
        weight=weight,
    )


def parse_fallback_dir_line(line: str, nickname: str | None = None) -> FallbackDir:
    """Parse the argument of a torrc ``FallbackDir`` line (keyword optional)."""
    if not isinstance(line, str):
        raise AuthorityLineError(f"FallbackDir line must be str, not {type(line).__name__}")
    positional: list[str] = []
    or_port = None
    fingerprint = None
    ipv6 = None
    weight = 1.0
    for item in _strip_keyword(line, "FallbackDir"):
        if "=" not in item:
            positional.append(item)
        elif item.startswith("orport="):
            or_port = _parse_port(item[len("orport="):], "orport", line)
        elif item.startswith("id="):
            fingerprint = parse_hex_digest(item[len("id="):], AuthorityLineError,
                                           f"id in FallbackDir line {line!r}")
        elif item.lower().startswith("ipv6="):
            if ipv6 is not None:
                raise AuthorityLineError(f"more than one ipv6= option in line {line!r}")
            ipv6 = _parse_ipv6_addrport(item[len("ipv6="):], line)
        elif item.startswith("weight="):
            weight = _parse_weight(item[len("weight="):], line)
        # tor ignores other key=value options here too.
    if len(positional) != 1:
        raise AuthorityLineError(f"FallbackDir line needs exactly one address: {line!r}")
    if fingerprint is None:
        raise AuthorityLineError(f"missing id= in FallbackDir line {line!r}")
    if or_port is None:
        raise AuthorityLineError(f"missing orport= in FallbackDir line {line!r}")
    address_text, colon, port_text = positional[0].rpartition(":")
    if colon:
        address = _parse_ipv4(address_text, line)
        dir_port = _parse_port(port_text, "dirport", line)
    else:
        address = _parse_ipv4(positional[0], line)
        dir_port = 0
    return FallbackDir(
        address=address,
        or_port=or_port,
        fingerprint=fingerprint,
        dir_port=dir_port,
        ipv6=ipv6,
        weight=weight,
        nickname=nickname,
    )


def v3_authorities(authorities: Iterable[DirAuthority]) -> tuple[DirAuthority, ...]:
    """The authorities that sign consensuses (those with a v3ident)."""
    return tuple(authority for authority in authorities if authority.v3ident is not None)


#: tor 0.4.9's default authorities (nine v3 authorities plus bridge authority Serge).
DEFAULT_AUTHORITIES: tuple[DirAuthority, ...] = tuple(
    parse_dir_authority_line(entry) for entry in AUTHORITY_LINES
)

#: tor 0.4.9's default fallback directory mirrors.
DEFAULT_FALLBACK_DIRS: tuple[FallbackDir, ...] = tuple(
    parse_fallback_dir_line(entry, nickname) for nickname, entry in FALLBACK_DIR_LINES
)
