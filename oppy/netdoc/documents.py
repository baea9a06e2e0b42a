"""Compact records parsed from directory documents (sans-IO: bytes in, records out).

Three documents matter to a client (dir-spec: consensus-formats,
computing-microdescriptors, creating-key-certificates):

* the microdesc-flavoured consensus -> :class:`Consensus` of :class:`RelayRecord`;
* microdescriptors -> :class:`MicrodescRecord` (keys, family, exit policy summary);
* authority key certificates -> :class:`KeyCertificate` (checked in ``verify.py``).

The parsers are our own line parsers rather than stem objects: a full
7000-relay consensus must be read in a fraction of a second and kept in a few
MiB. They keep only what oppy needs, share identical flag sets, protocol lists
and port policies between relays, and raise only their own
:class:`~oppy.netdoc.errors.DocumentParseError` subclasses on bad input.
Times are POSIX seconds (UTC) throughout.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from bisect import bisect_right
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from random import Random
from types import MappingProxyType

from oppy.netdoc.errors import (
    CertificateParseError,
    ConsensusParseError,
    DocumentParseError,
    MicrodescriptorParseError,
)
from oppy.netdoc.fields import decode_base64, parse_decimal, parse_hex_digest, parse_time, read_object

__all__ = [
    "PortPolicy",
    "REJECT_ALL_PORTS",
    "RelayRecord",
    "DirSource",
    "SharedRandomValue",
    "ConsensusHeader",
    "Consensus",
    "MicrodescRecord",
    "MicrodescBatch",
    "KeyCertificate",
    "parse_protocols",
    "parse_port_policy",
    "parse_consensus_header",
    "parse_consensus",
    "parse_shared_random_value",
    "parse_microdescriptor",
    "parse_microdescriptors",
    "microdesc_digest",
    "parse_key_certificates",
    "parse_ipv4",
    "pem_object",
    "signed_ascii_lines",
    "consensus_refresh_time",
    "CONSENSUS_FLAVOR_MICRODESC",
    "CONSENSUS_FLAVOR_NS",
]

#: Flavour names on the ``network-status-version 3 <flavour>`` line
#: (dir-spec consensus-formats; an absent flavour means "ns").
CONSENSUS_FLAVOR_MICRODESC = "microdesc"
CONSENSUS_FLAVOR_NS = "ns"

#: Highest protocol version tor accepts on ``pr``/``*-protocols`` lines
#: (tor ``protover.c`` MAX_PROTOCOL_VERSION).
MAX_PROTOCOL_VERSION = 63
#: Length of an RSA identity digest (SHA-1) and of a Curve25519/Ed25519 key.
RSA_ID_LEN = 20
CURVE25519_KEY_LEN = 32
ED25519_KEY_LEN = 32
#: TCP port range of a PortList (dir-spec consensus-formats, "p" line).
MIN_PORT = 1
MAX_PORT = 65535

#: Shared empty set for absent flag/family lines (``frozenset()`` is not a singleton).
_NO_STRINGS: frozenset[str] = frozenset()
_PORT_RANGE_RE = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?\Z")
_IPV4_RE = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\Z")
#: A line that starts a microdescriptor or its annotations (tor
#: ``find_start_of_next_microdesc``).
_MICRODESC_BOUNDARY_RE = re.compile(rb"^(?:@|onion-key)", re.M)
_CERT_START_RE = re.compile(rb"^dir-key-certificate-version", re.M)


# --------------------------------------------------------------------------
# small field parsers


def _b64encode_unpadded(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def parse_ipv4(text: str, error: type[DocumentParseError], what: str) -> str:
    match = _IPV4_RE.match(text)
    if match is None or any(int(octet) > 255 for octet in match.groups()):
        raise error(f"bad IPv4 address {text!r} in {what}")
    return text


def _parse_or_address(text: str, error: type[DocumentParseError], what: str) -> tuple[str, int]:
    """Parse an ``a`` line argument, ``[IPv6]:port`` or ``IPv4:port``."""
    host, colon, port_text = text.rpartition(":")
    if not colon:
        raise error(f"missing port in address {text!r} in {what}")
    port = parse_decimal(port_text, error, what, MIN_PORT, MAX_PORT)
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1])), port
        except ValueError:
            raise error(f"bad IPv6 address {host!r} in {what}") from None
    return parse_ipv4(host, error, what), port


def parse_protocols(text: str, error: type[DocumentParseError] = DocumentParseError
                    ) -> Mapping[str, frozenset[int]]:
    """Parse a protocol list (``Link=1-5 Relay=1-4 LinkAuth=1,3``) into name -> versions."""
    result: dict[str, frozenset[int]] = {}
    for entry in text.split():
        name, eq, ranges = entry.partition("=")
        if not eq or not name:
            raise error(f"bad protocol entry {entry!r}")
        versions: set[int] = set()
        if ranges:
            for item in ranges.split(","):
                low_text, dash, high_text = item.partition("-")
                low = parse_decimal(low_text, error, f"protocol {name}", 0, MAX_PROTOCOL_VERSION)
                high = (parse_decimal(high_text, error, f"protocol {name}", 0, MAX_PROTOCOL_VERSION)
                        if dash else low)
                if high < low:
                    raise error(f"bad protocol range {item!r} for {name}")
                versions.update(range(low, high + 1))
        if name in result:
            raise error(f"protocol {name!r} listed twice")
        result[name] = frozenset(versions)
    return MappingProxyType(result)


# --------------------------------------------------------------------------
# exit policy summaries


class PortPolicy:
    """An exit-policy summary: ``accept``/``reject`` a list of port ranges.

    It answers "might this exit accept a connection to port P at an unknown
    address?" (path-spec "Choosing an exit"), which is what microdescriptors
    and the ``p`` line summarise.
    """

    __slots__ = ("accept", "ranges", "_starts", "_ends")

    def __init__(self, accept: bool, ranges: tuple[tuple[int, int], ...]):
        merged: list[list[int]] = []
        for low, high in sorted(ranges):
            if merged and low <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], high)
            else:
                merged.append([low, high])
        self.accept = accept
        self.ranges = tuple((low, high) for low, high in merged)
        self._starts = tuple(low for low, _ in self.ranges)
        self._ends = tuple(high for _, high in self.ranges)

    def allows_port(self, port: int) -> bool:
        """True if the policy accepts ``port`` (for some address)."""
        index = bisect_right(self._starts, port) - 1
        listed = index >= 0 and port <= self._ends[index]
        return listed if self.accept else not listed

    def allows_any_port(self) -> bool:
        """True unless the policy is equivalent to ``reject 1-65535``."""
        if self.accept:
            return bool(self.ranges)
        return self.ranges != ((MIN_PORT, MAX_PORT),)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PortPolicy):
            return NotImplemented
        return (self.accept, self.ranges) == (other.accept, other.ranges)

    def __hash__(self) -> int:
        return hash((self.accept, self.ranges))

    def __str__(self) -> str:
        ports = ",".join(str(low) if low == high else f"{low}-{high}" for low, high in self.ranges)
        return f"{'accept' if self.accept else 'reject'} {ports}"

    def __repr__(self) -> str:
        return f"PortPolicy({str(self)!r})"


#: A missing ``p``/``p6`` line means "reject everything" (dir-spec
#: computing-microdescriptors).
REJECT_ALL_PORTS = PortPolicy(False, ((MIN_PORT, MAX_PORT),))


def parse_port_policy(text: str, error: type[DocumentParseError] = DocumentParseError) -> PortPolicy:
    """Parse ``accept|reject PortList`` (dir-spec consensus-formats, ``p`` line)."""
    parts = text.split()
    if len(parts) != 2 or parts[0] not in ("accept", "reject"):
        raise error(f"bad port policy {text!r}: expected 'accept|reject PortList'")
    ranges = []
    for item in parts[1].split(","):
        match = _PORT_RANGE_RE.match(item)
        if match is None:
            raise error(f"bad port range {item!r} in policy {text!r}")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if not MIN_PORT <= low <= high <= MAX_PORT:
            raise error(f"bad port range {item!r} in policy {text!r}")
        ranges.append((low, high))
    return PortPolicy(parts[0] == "accept", tuple(ranges))


# --------------------------------------------------------------------------
# consensus


@dataclass(frozen=True, slots=True)
class RelayRecord:
    """What oppy keeps of one consensus router entry (``r``/``a``/``s``/``pr``/``w``/``m``)."""

    nickname: str
    rsa_id: bytes
    address: str
    or_port: int
    dir_port: int
    ipv6_or_addresses: tuple[tuple[str, int], ...]
    flags: frozenset[str]
    #: Consensus weight from ``w Bandwidth=`` (kilobytes/s); None if no ``w`` line.
    bandwidth: int | None
    unmeasured: bool
    protocols: Mapping[str, frozenset[int]]
    #: Unpadded base64 SHA-256 of the microdescriptor (``m`` line); None in an ns consensus.
    microdesc_digest: str | None

    @property
    def fingerprint(self) -> str:
        """RSA identity as 40 upper-case hex digits."""
        return self.rsa_id.hex().upper()

    def supports_protocol(self, name: str, version: int) -> bool:
        return version in self.protocols.get(name, ())


@dataclass(frozen=True, slots=True)
class DirSource:
    """A ``dir-source`` line: one authority that voted on the consensus."""

    nickname: str
    v3ident: str
    hostname: str
    address: str
    dir_port: int
    or_port: int


@dataclass(frozen=True, slots=True)
class SharedRandomValue:
    """A ``shared-rand-current-value`` / ``shared-rand-previous-value`` line (srv-spec, rend-spec-v3
    2.3 [PUB-SHAREDRANDOM]): how many authorities revealed, and the 32-byte value."""

    num_reveals: int
    value: bytes


#: srv-spec: an SRV is 32 bytes, 44 characters of padded base64 (tor SR_SRV_VALUE_BASE64_LEN).
SHARED_RANDOM_VALUE_LEN = 32
SHARED_RANDOM_VALUE_BASE64_LEN = 44


def parse_shared_random_value(args: list[str], error: type[DocumentParseError] = DocumentParseError
                              ) -> SharedRandomValue | None:
    """``NUM_REVEALS VALUE``; the wrong number of arguments is an error (tor's tokenizer rule EQ(2)),
    a value that does not decode is ignored as tor's ``sr_parse_srv`` ignores it (None: absent)."""
    if len(args) != 2:
        raise error(f"shared random value line needs 2 arguments, got {len(args)}")
    try:
        num_reveals = parse_decimal(args[0], error, "shared random value reveals", 0, 2**64 - 1)
        if len(args[1]) != SHARED_RANDOM_VALUE_BASE64_LEN:
            return None
        value = decode_base64(args[1], error, "shared random value")
    except DocumentParseError:
        return None
    return SharedRandomValue(num_reveals, value) if len(value) == SHARED_RANDOM_VALUE_LEN else None


@dataclass(frozen=True, slots=True)
class ConsensusHeader:
    """The preamble of a consensus: what is needed to check and schedule it."""

    flavor: str
    consensus_method: int | None
    valid_after: int
    fresh_until: int
    valid_until: int
    known_flags: tuple[str, ...]
    params: Mapping[str, int]
    recommended_client_protocols: Mapping[str, frozenset[int]]
    required_client_protocols: Mapping[str, frozenset[int]]
    recommended_relay_protocols: Mapping[str, frozenset[int]]
    required_relay_protocols: Mapping[str, frozenset[int]]
    dir_sources: tuple[DirSource, ...]
    #: The shared random values (None when the consensus lists none, as on a young test network).
    shared_random_current: SharedRandomValue | None = field(default=None, kw_only=True)
    shared_random_previous: SharedRandomValue | None = field(default=None, kw_only=True)


@dataclass(frozen=True, slots=True)
class Consensus(ConsensusHeader):
    """A parsed consensus: header fields, footer weights and the relays."""

    bandwidth_weights: Mapping[str, int]
    relays: tuple[RelayRecord, ...]
    _by_id: dict[bytes, RelayRecord] = field(default_factory=dict, init=False, repr=False, compare=False)
    #: dir-spec 3.4.1 "client-versions": the comma-separated tor versions the authorities recommend to
    #: clients, as written ("" when the line is empty or absent); GETINFO status/version/recommended.
    client_versions: str = ""

    def relay_by_id(self, rsa_id: bytes) -> RelayRecord | None:
        """Look a relay up by its 20-byte RSA identity."""
        if not self._by_id and self.relays:
            self._by_id.update((relay.rsa_id, relay) for relay in self.relays)
        return self._by_id.get(rsa_id)

    def relay_by_fingerprint(self, fingerprint: str) -> RelayRecord | None:
        """Look a relay up by its hex fingerprint (with or without ``$``)."""
        try:
            rsa_id = bytes.fromhex(fingerprint.lstrip("$"))
        except ValueError:
            return None
        return self.relay_by_id(rsa_id)

    def microdesc_digests(self) -> frozenset[str]:
        """Every microdescriptor digest the consensus lists."""
        return frozenset(r.microdesc_digest for r in self.relays if r.microdesc_digest is not None)

    def param(self, name: str, default: int, low: int | None = None, high: int | None = None) -> int:
        """A consensus parameter, clamped to [low, high] like tor's networkstatus_get_param."""
        value = self.params.get(name, default)
        if low is not None and value < low:
            value = low
        if high is not None and value > high:
            value = high
        return value


def _decode(data: bytes, error: type[DocumentParseError], what: str) -> str:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise error(f"{what} must be bytes, not {type(data).__name__}")
    # Directory documents are ASCII except free-text lines (contact, platform);
    # latin-1 maps every byte and so never fails.
    return bytes(data).decode("latin-1")


def _parse_kv_ints(args: list[str], error: type[DocumentParseError], what: str) -> dict[str, int]:
    result: dict[str, int] = {}
    for entry in args:
        key, eq, value = entry.partition("=")
        if not eq or not key:
            raise error(f"bad {what} entry {entry!r}")
        # tor keeps int32 values (networkstatus_parse_param / bandwidth-weights).
        result[key] = parse_decimal(value, error, f"{what} {key}", -(2**31), 2**31 - 1)
    return result


def _header_from_lines(lines: list[str]) -> ConsensusHeader:
    error = ConsensusParseError
    if not lines or not lines[0].startswith("network-status-version "):
        raise error("consensus does not start with 'network-status-version'")
    version_args = lines[0].split()[1:]
    if not version_args or version_args[0] != "3":
        raise error(f"unsupported network-status-version {lines[0]!r}")
    flavor = version_args[1] if len(version_args) > 1 else CONSENSUS_FLAVOR_NS
    seen: dict[str, list[str]] = {}
    dir_sources = []
    for line in lines[1:]:
        keyword, _, rest = line.partition(" ")
        if keyword == "dir-source":
            parts = rest.split()
            if len(parts) != 6:
                raise error(f"bad dir-source line {line[:80]!r}")
            dir_sources.append(DirSource(
                nickname=parts[0],
                v3ident=parse_hex_digest(parts[1], error, "dir-source identity"),
                hostname=parts[2],
                address=parse_ipv4(parts[3], error, "dir-source"),
                dir_port=parse_decimal(parts[4], error, "dir-source dirport", 0, MAX_PORT),
                or_port=parse_decimal(parts[5], error, "dir-source orport", 0, MAX_PORT),
            ))
        elif keyword in _SINGLE_HEADER_KEYWORDS:
            if keyword in seen:
                raise error(f"consensus header has more than one {keyword!r} line")
            seen[keyword] = rest.split()
    vote_status = seen.get("vote-status")
    if vote_status != ["consensus"]:
        raise error(f"vote-status is {vote_status!r}, not 'consensus'")
    times = {}
    for keyword in ("valid-after", "fresh-until", "valid-until"):
        if keyword not in seen:
            raise error(f"consensus header lacks {keyword!r}")
        times[keyword] = parse_time(" ".join(seen[keyword]), error)
    if not times["valid-after"] < times["fresh-until"] <= times["valid-until"]:
        raise error("consensus times are out of order (need valid-after < fresh-until <= valid-until)")
    method_args = seen.get("consensus-method")
    method = None
    if method_args is not None:
        if len(method_args) != 1:
            raise error(f"bad consensus-method {method_args!r}")
        method = parse_decimal(method_args[0], error, "consensus-method", 1)

    def protocols(keyword: str) -> Mapping[str, frozenset[int]]:
        return parse_protocols(" ".join(seen.get(keyword, ())), error)

    return ConsensusHeader(
        flavor=flavor,
        consensus_method=method,
        valid_after=times["valid-after"],
        fresh_until=times["fresh-until"],
        valid_until=times["valid-until"],
        known_flags=tuple(seen.get("known-flags", ())),
        params=MappingProxyType(_parse_kv_ints(seen.get("params", []), error, "params")),
        recommended_client_protocols=protocols("recommended-client-protocols"),
        required_client_protocols=protocols("required-client-protocols"),
        recommended_relay_protocols=protocols("recommended-relay-protocols"),
        required_relay_protocols=protocols("required-relay-protocols"),
        dir_sources=tuple(dir_sources),
        shared_random_current=_shared_random(seen, "shared-rand-current-value"),
        shared_random_previous=_shared_random(seen, "shared-rand-previous-value"),
    )


def _shared_random(seen: dict[str, list[str]], keyword: str) -> SharedRandomValue | None:
    args = seen.get(keyword)
    return None if args is None else parse_shared_random_value(args, ConsensusParseError)


_SINGLE_HEADER_KEYWORDS = frozenset({
    "vote-status", "consensus-method", "valid-after", "fresh-until", "valid-until",
    "known-flags", "params", "recommended-client-protocols", "required-client-protocols",
    "recommended-relay-protocols", "required-relay-protocols",
    "shared-rand-current-value", "shared-rand-previous-value",
})


#: How much of a consensus :func:`_split_lines` splits at once (a few hundred router entries).
_SPLIT_PIECE_LEN = 64 * 1024


def _split_consensus(data: bytes) -> tuple[str, int, int]:
    """Return (text, offset of the first router line, offset of the footer)."""
    text = _decode(data, ConsensusParseError, "consensus")
    footer = _find_line_start_text(text, "directory-footer")
    if footer < 0:
        footer = _find_line_start_text(text, "directory-signature")
    if footer < 0:
        raise ConsensusParseError("consensus has no 'directory-footer' or 'directory-signature'")
    first_router = _find_line_start_text(text, "r ", 0)
    if first_router < 0 or first_router > footer:
        first_router = footer
    return text, first_router, footer


def _split_lines(text: str, start: int, end: int) -> Iterator[str]:
    """``text[start:end].split("\\n")``, a piece at a time: the whole router section of a public consensus
    split at once held a copy of it and all its 50,000 lines together (4.5 MiB more at the peak)."""
    while True:
        cut = text.find("\n", start + _SPLIT_PIECE_LEN, end) if start + _SPLIT_PIECE_LEN < end else -1
        if cut < 0:
            yield from text[start:end].split("\n")
            return
        yield from text[start:cut].split("\n")
        start = cut + 1


def _find_line_start_text(text: str, keyword: str, start: int = 0) -> int:
    if text.startswith(keyword, start):
        return start
    index = text.find("\n" + keyword, start)
    return -1 if index < 0 else index + 1


def parse_consensus_header(data: bytes) -> ConsensusHeader:
    """Parse only the preamble of a consensus (cheap: the router entries are skipped)."""
    text, first_router, _ = _split_consensus(data)
    return _header_from_lines(text[:first_router].split("\n"))


def parse_consensus(data: bytes) -> Consensus:
    """Parse a v3 consensus (microdesc or ns flavour) into a :class:`Consensus`.

    This does not check signatures: call :func:`oppy.netdoc.verify.verify_consensus`
    on the same bytes first.
    """
    text, first_router, footer = _split_consensus(data)
    header = _header_from_lines(text[:first_router].split("\n"))
    relays = _parse_router_entries(_split_lines(text, first_router, footer), header.flavor)
    weights: dict[str, int] = {}
    for line in text[footer:].split("\n"):
        if line.startswith("directory-signature"):
            break
        if line.startswith("bandwidth-weights"):
            weights = _parse_kv_ints(line.split()[1:], ConsensusParseError, "bandwidth-weights")
    header_fields = {name: getattr(header, name) for name in ConsensusHeader.__dataclass_fields__}
    return Consensus(**header_fields, bandwidth_weights=MappingProxyType(weights), relays=tuple(relays),
                     client_versions=_client_versions(text[:first_router]))


def _client_versions(header_text: str) -> str:
    """The value of the header's ``client-versions`` line (dir-spec 3.4.1), or "" without one."""
    start = _find_line_start_text(header_text, "client-versions")
    if start < 0:
        return ""
    line = header_text[start:].partition("\n")[0]
    keyword, _, value = line.partition(" ")
    return value.strip() if keyword == "client-versions" else ""


def _parse_router_entries(lines: Iterable[str], flavor: str) -> list[RelayRecord]:
    """Parse the router-status entries; identical flag/protocol lines share one object."""
    error = ConsensusParseError
    r_fields = 8 if flavor == CONSENSUS_FLAVOR_MICRODESC else 9
    flag_sets: dict[str, frozenset[str]] = {}
    protocol_sets: dict[str, Mapping[str, frozenset[int]]] = {}
    empty_protocols: Mapping[str, frozenset[int]] = MappingProxyType({})
    relays: list[RelayRecord] = []
    append = relays.append
    current: list | None = None   # [nickname, rsa_id, address, or_port, dir_port, ...]
    ipv6: list[tuple[str, int]] = []
    flags: frozenset[str] = _NO_STRINGS
    bandwidth: int | None = None
    unmeasured = False
    protocols = empty_protocols
    digest: str | None = None

    def finish() -> None:
        append(RelayRecord(current[0], current[1], current[2], current[3], current[4],
                           tuple(ipv6), flags, bandwidth, unmeasured, protocols, digest))

    for line in lines:
        keyword, _, rest = line.partition(" ")
        if keyword == "r":
            if current is not None:
                finish()
            parts = rest.split(" ")
            if len(parts) != r_fields - 1:
                raise error(f"bad router line {line!r}: expected {r_fields} fields")
            rsa_id = decode_base64(parts[1], error, "router identity")
            if len(rsa_id) != RSA_ID_LEN:
                raise error(f"router identity in {line!r} is not {RSA_ID_LEN} bytes")
            # parts[-5:-3] are the publication date and time: not needed by a client.
            current = [
                parts[0],
                rsa_id,
                parse_ipv4(parts[-3], error, "router line"),
                parse_decimal(parts[-2], error, "router ORPort", 0, MAX_PORT),
                parse_decimal(parts[-1], error, "router DirPort", 0, MAX_PORT),
            ]
            ipv6 = []
            flags = _NO_STRINGS
            bandwidth = None
            unmeasured = False
            protocols = empty_protocols
            digest = None
        elif current is None:
            if line.strip():
                raise error(f"unexpected line {line!r} before the first router entry")
        elif keyword == "s":
            interned = flag_sets.get(rest)
            if interned is None:
                interned = flag_sets[rest] = frozenset(rest.split())
            flags = interned
        elif keyword == "m":
            digest_text = rest.strip()
            if len(decode_base64(digest_text, error, "m line")) != 32:
                raise error(f"microdescriptor digest {digest_text!r} is not 32 bytes")
            digest = digest_text.rstrip("=")
        elif keyword == "a":
            ipv6.append(_parse_or_address(rest.strip(), error, "a line"))
        elif keyword == "w":
            for entry in rest.split():
                key, _, value = entry.partition("=")
                if key == "Bandwidth":
                    bandwidth = parse_decimal(value, error, "w Bandwidth", 0, 2**32 - 1)
                elif key == "Unmeasured":
                    unmeasured = value == "1"
        elif keyword == "pr":
            interned_protocols = protocol_sets.get(rest)
            if interned_protocols is None:
                interned_protocols = protocol_sets[rest] = parse_protocols(rest, error)
            protocols = interned_protocols
        # "v", "p" (ns flavour), "id" and unknown lines: not needed by a client.
    if current is not None:
        finish()
    return relays


def consensus_refresh_time(consensus: Consensus | ConsensusHeader, rng: Random) -> float:
    """When to fetch the next consensus (dir-spec client-operation 5.1).

    Uniformly random in ``[A, A + 7/8 (valid-until - A)]`` where
    ``A = fresh-until + 3/4 (fresh-until - valid-after)``.
    """
    interval = consensus.fresh_until - consensus.valid_after
    start = consensus.fresh_until + interval * 3 / 4
    end = start + (consensus.valid_until - start) * 7 / 8
    if end < start:          # a consensus with a very short validity window
        end = start
    return rng.uniform(start, end)


# --------------------------------------------------------------------------
# microdescriptors


@dataclass(frozen=True, slots=True)
class MicrodescRecord:
    """What oppy keeps of one microdescriptor."""

    #: Unpadded base64 SHA-256 of the text from ``onion-key`` to the end.
    digest: str
    ntor_onion_key: bytes
    ed25519_id: bytes | None
    ipv6_or_addresses: tuple[tuple[str, int], ...]
    #: ``family`` members given as ``$FINGERPRINT`` (upper-case hex, no ``$``).
    family: frozenset[str]
    #: ``family-ids`` entries (happy families, tor 0.4.9), kept verbatim.
    family_ids: frozenset[str]
    exit_policy: PortPolicy
    exit_policy_v6: PortPolicy
    #: ``family`` members given as a nickname, lower-cased: tor matches them against a
    #: relay's nickname, ignoring case (``nodefamily_contains_nickname``).
    family_nicknames: frozenset[str] = _NO_STRINGS


@dataclass(slots=True)
class MicrodescBatch:
    """The outcome of parsing a batch of microdescriptors."""

    #: digest -> record, for each well-formed microdescriptor that was wanted.
    microdescs: dict[str, MicrodescRecord]
    #: digest -> reason, for each wanted microdescriptor that was malformed.
    invalid: dict[str, str]
    #: How many microdescriptors were dropped because nobody asked for them.
    unrequested: int


def microdesc_digest(body: bytes) -> str:
    """Unpadded base64 SHA-256 of a microdescriptor body (the consensus ``m`` value)."""
    return _b64encode_unpadded(hashlib.sha256(body).digest())


def split_microdescriptor_chunks(data: bytes) -> Iterator[bytes]:
    """Yield each chunk of concatenated microdescriptors: a body (from ``onion-key`` up to the next
    annotation or ``onion-key`` line, exactly what its digest covers; tor ``microdescs_parse_from_string``)
    or an ``@`` annotation line that precedes one."""
    boundaries = [match.start() for match in _MICRODESC_BOUNDARY_RE.finditer(data)]
    boundaries.append(len(data))
    for index in range(len(boundaries) - 1):
        yield data[boundaries[index]:boundaries[index + 1]]


def _split_microdescs(data: bytes) -> Iterator[bytes]:
    """Yield each microdescriptor body, annotations left out."""
    return (chunk for chunk in split_microdescriptor_chunks(data) if chunk.startswith(b"onion-key"))


def parse_microdescriptors(data: bytes, wanted: Collection[str] | None = None) -> MicrodescBatch:
    """Parse concatenated microdescriptors (a fetch reply or a cache file).

    Microdescriptors whose digest is not in ``wanted`` are dropped unparsed
    (dir-spec client-operation: discard anything not requested); ``wanted=None``
    keeps all. A malformed one is reported in ``invalid`` rather than failing
    the whole batch, as tor does.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MicrodescriptorParseError(f"microdescriptors must be bytes, not {type(data).__name__}")
    data = bytes(data)
    batch = MicrodescBatch({}, {}, 0)
    cache: dict[tuple[str, str], object] = {}
    # Each record keeps the string it was asked for (the consensus entry's), not a copy of it: on the public
    # network the copies held about 0.7 MiB.
    asked = None if wanted is None else {digest: digest for digest in wanted}
    for body in _split_microdescs(data):
        digest = microdesc_digest(body)
        if asked is not None:
            digest = asked.get(digest)
            if digest is None:
                batch.unrequested += 1
                continue
        try:
            batch.microdescs[digest] = _parse_microdesc_body(body, digest, cache)
        except MicrodescriptorParseError as exc:
            batch.invalid[digest] = str(exc)
    return batch


def parse_microdescriptor(body: bytes) -> MicrodescRecord:
    """Parse one microdescriptor starting at ``onion-key`` (annotations not allowed)."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise MicrodescriptorParseError(f"microdescriptor must be bytes, not {type(body).__name__}")
    body = bytes(body)
    if not body.startswith(b"onion-key"):
        raise MicrodescriptorParseError("microdescriptor does not start with 'onion-key'")
    return _parse_microdesc_body(body, microdesc_digest(body), {})


#: A relay nickname (dir-spec "nickname": 1-19 alphanumerics; tor ``is_legal_nickname``).
_NICKNAME_RE = re.compile(r"[A-Za-z0-9]{1,19}\Z")
#: An identity as a family member: optional ``$``, 40 hex digits, optionally ``=nick`` or
#: ``~nick`` with a legal nickname (tor ``is_legal_hexdigest``).
_FAMILY_FINGERPRINT_RE = re.compile(r"\$?([0-9A-Fa-f]{40})(?:[=~][A-Za-z0-9]{1,19})?\Z")


def _parse_family(rest: str, cache: dict) -> tuple[frozenset[str], frozenset[str]]:
    """The members of a family line as (fingerprints, lower-cased nicknames), as tor's
    ``nodefamily_from_members`` reads them; a member that is neither is dropped.

    Member strings are shared through ``cache``: a family's relays list each other."""
    fingerprints = set()
    nicknames = set()
    for member in rest.split():
        if _NICKNAME_RE.match(member):
            nickname = member.lower()
            nicknames.add(cache.setdefault(("nickname", nickname), nickname))
            continue
        match = _FAMILY_FINGERPRINT_RE.match(member)
        if match is not None:
            hex_id = match.group(1).upper()
            fingerprints.add(cache.setdefault(("member", hex_id), hex_id))
    return frozenset(fingerprints), frozenset(nicknames)


def _parse_microdesc_body(body: bytes, digest: str, cache: dict[tuple[str, str], object]
                          ) -> MicrodescRecord:
    """Parse one microdescriptor body. ``cache`` shares identical family and
    policy lines between the microdescriptors of one batch."""
    error = MicrodescriptorParseError
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise error(f"microdescriptor {digest} is not ASCII") from None
    first_end = text.find("\n")
    if first_end < 0:
        first_end = len(text)
    if text[:first_end].split(" ", 1)[0] != "onion-key":
        raise error(f"microdescriptor {digest} does not start with 'onion-key'")
    rest_start = first_end + 1
    if text.startswith("-----BEGIN ", rest_start):
        # The legacy TAP onion key object: unused since TAP is gone (proposal 350).
        end_marker = text.find("\n-----END ", rest_start)
        if end_marker < 0:
            raise error(f"microdescriptor {digest}: unterminated onion-key object")
        after = text.find("\n", end_marker + 1)
        rest_start = len(text) if after < 0 else after + 1
    ntor_key = None
    ed25519_id = None
    ipv6: list[tuple[str, int]] = []
    family: frozenset[str] = _NO_STRINGS
    family_nicknames: frozenset[str] = _NO_STRINGS
    family_ids: frozenset[str] = _NO_STRINGS
    policy = REJECT_ALL_PORTS
    policy_v6 = REJECT_ALL_PORTS
    seen: set[str] = set()
    for line in text[rest_start:].split("\n"):
        keyword, _, rest = line.partition(" ")
        if keyword in _MICRODESC_ONCE_KEYWORDS:
            if keyword in seen:
                raise error(f"microdescriptor {digest} has more than one {keyword!r} line")
            seen.add(keyword)
        if keyword == "ntor-onion-key":
            args = rest.split()
            if not args:
                raise error(f"microdescriptor {digest}: empty ntor-onion-key")
            ntor_key = decode_base64(args[0], error, "ntor-onion-key")
            if len(ntor_key) != CURVE25519_KEY_LEN:
                raise error(f"microdescriptor {digest}: ntor-onion-key is not {CURVE25519_KEY_LEN} bytes")
        elif keyword == "id":
            args = rest.split()
            if len(args) < 2:
                raise error(f"microdescriptor {digest}: bad id line {line!r}")
            if args[0] == "ed25519":
                if ed25519_id is not None:
                    raise error(f"microdescriptor {digest} has more than one ed25519 id")
                ed25519_id = decode_base64(args[1], error, "id ed25519")
                if len(ed25519_id) != ED25519_KEY_LEN:
                    raise error(f"microdescriptor {digest}: ed25519 id is not {ED25519_KEY_LEN} bytes")
        elif keyword == "a":
            ipv6.append(_parse_or_address(rest.strip(), error, "a line"))
        elif keyword == "family":
            members = cache.get(("family", rest))
            if members is None:
                members = cache[("family", rest)] = _parse_family(rest, cache)
            family, family_nicknames = members  # type: ignore[misc]
        elif keyword == "family-ids":
            family_ids = cache.get(("family-ids", rest))  # type: ignore[assignment]
            if family_ids is None:
                family_ids = cache[("family-ids", rest)] = frozenset(rest.split())
        elif keyword == "p" or keyword == "p6":
            parsed = cache.get(("p", rest))
            if parsed is None:
                parsed = cache[("p", rest)] = parse_port_policy(rest, error)
            if keyword == "p":
                policy = parsed  # type: ignore[assignment]
            else:
                policy_v6 = parsed  # type: ignore[assignment]
        elif keyword == "onion-key" or line.startswith("-----"):
            raise error(f"microdescriptor {digest}: unexpected line {line[:60]!r}")
        # Unknown keywords are ignored (dir-spec: "clients MUST ignore").
    if ntor_key is None:
        raise error(f"microdescriptor {digest} has no ntor-onion-key")
    return MicrodescRecord(digest, ntor_key, ed25519_id, tuple(ipv6), family, family_ids,
                           policy, policy_v6, family_nicknames)


_MICRODESC_ONCE_KEYWORDS = frozenset({"ntor-onion-key", "family", "family-ids", "p", "p6"})


# --------------------------------------------------------------------------
# authority key certificates


@dataclass(frozen=True, slots=True)
class KeyCertificate:
    """An authority key certificate (dir-spec creating-key-certificates), unverified."""

    #: v3 identity: hex SHA-1 of the identity key as the certificate claims it.
    fingerprint: str
    address: str | None
    published: int
    expires: int
    #: DER (PKCS#1 RSAPublicKey) of the long-term identity key.
    identity_key_der: bytes
    #: DER (PKCS#1 RSAPublicKey) of the medium-term signing key.
    signing_key_der: bytes
    crosscert: bytes
    certification: bytes
    #: The bytes the identity key signs: ``dir-key-certificate-version`` through
    #: ``dir-key-certification\n``.
    signed_text: bytes

    @property
    def signing_key_digest(self) -> str:
        """Hex SHA-1 of the signing key's DER, as named on ``directory-signature`` lines."""
        return hashlib.sha1(self.signing_key_der).hexdigest().upper()


def pem_object(lines: list[str], index: int, expected: tuple[str, ...], error: type[DocumentParseError],
              what: str) -> tuple[bytes, int]:
    """Read the PEM object of one of the ``expected`` types at ``lines[index]``; return (bytes, index
    after END)."""
    if index >= len(lines):
        raise error(f"{what}: missing object")
    if lines[index] not in {f"-----BEGIN {kind}-----" for kind in expected}:
        raise error(f"{what}: expected -----BEGIN {expected[0]}-----, got {lines[index][:60]!r}")
    _, data, index = read_object(lines, index, error, what)
    return data, index


_CERT_KEYWORDS_ONCE = (
    "fingerprint", "dir-key-published", "dir-key-expires", "dir-identity-key",
    "dir-signing-key", "dir-key-crosscert", "dir-key-certification",
)


def parse_key_certificates(data: bytes) -> list[KeyCertificate]:
    """Parse one or more concatenated authority key certificates.

    CRLF line ends (certificates cached by tor on Windows) are read as LF,
    the form in which the certificates were signed.
    """
    error = CertificateParseError
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise error(f"certificates must be bytes, not {type(data).__name__}")
    data = bytes(data).replace(b"\r\n", b"\n")
    starts = [match.start() for match in _CERT_START_RE.finditer(data)]
    if not starts:
        raise error("no 'dir-key-certificate-version' line found")
    if data[:starts[0]].strip():
        raise error("unexpected data before the first key certificate")
    starts.append(len(data))
    return [_parse_key_certificate(data[starts[i]:starts[i + 1]]) for i in range(len(starts) - 1)]


def signed_ascii_lines(data: bytes, marker: bytes, error: type[DocumentParseError], what: str
                       ) -> tuple[bytes, list[str]]:
    """(the signed part: ``data`` up to and including ``marker``, the keyword line of its signature; the
    lines of ``data``), for a document signed by one key, which must be ASCII."""
    cut = data.find(marker)
    if cut < 0:
        raise error(f"{what} has no {marker.strip().decode()!r} line")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise error(f"{what} is not ASCII") from None
    return data[:cut + len(marker)], text.split("\n")


def _parse_key_certificate(chunk: bytes) -> KeyCertificate:
    error = CertificateParseError
    signed_text, lines = signed_ascii_lines(chunk, b"\ndir-key-certification\n", error, "key certificate")
    if lines[0] != "dir-key-certificate-version 3":
        raise error(f"unsupported key certificate version line {lines[0]!r}")
    values: dict[str, object] = {}
    address = None
    index = 1
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.strip():
            continue
        keyword, _, rest = line.partition(" ")
        if keyword in values:
            raise error(f"key certificate has more than one {keyword!r} line")
        if keyword == "fingerprint":
            values[keyword] = parse_hex_digest(rest.strip(), error, "key certificate fingerprint")
        elif keyword in ("dir-key-published", "dir-key-expires"):
            values[keyword] = parse_time(rest.strip(), error)
        elif keyword in ("dir-identity-key", "dir-signing-key"):
            values[keyword], index = pem_object(lines, index, ("RSA PUBLIC KEY",), error, keyword)
        elif keyword == "dir-key-crosscert":
            values[keyword], index = pem_object(lines, index, ("ID SIGNATURE", "SIGNATURE"), error, keyword)
        elif keyword == "dir-key-certification":
            values[keyword], index = pem_object(lines, index, ("SIGNATURE",), error, keyword)
            if any(rest_line.strip() for rest_line in lines[index:]):
                raise error("data after the key certificate's dir-key-certification")
            break
        elif keyword == "dir-address":
            address = rest.strip()
        elif line.startswith("-----"):
            raise error(f"unexpected object line {line[:60]!r} in key certificate")
    missing = [keyword for keyword in _CERT_KEYWORDS_ONCE if keyword not in values]
    if missing:
        raise error(f"key certificate lacks {', '.join(missing)}")
    return KeyCertificate(
        fingerprint=values["fingerprint"],            # type: ignore[arg-type]
        address=address,
        published=values["dir-key-published"],        # type: ignore[arg-type]
        expires=values["dir-key-expires"],            # type: ignore[arg-type]
        identity_key_der=values["dir-identity-key"],  # type: ignore[arg-type]
        signing_key_der=values["dir-signing-key"],    # type: ignore[arg-type]
        crosscert=values["dir-key-crosscert"],        # type: ignore[arg-type]
        certification=values["dir-key-certification"],  # type: ignore[arg-type]
        signed_text=signed_text,
    )
