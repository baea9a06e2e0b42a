"""The DNS wire format (RFC 1035 section 4) as a DNSPort needs it: queries in, responses out. Pure functions.

A query is parsed into its header and questions (names may use compression pointers, RFC 1035 4.1.4); its answer
and authority sections are ignored, and so is EDNS's OPT record (RFC 6891), as tor's evdns server does.
A response echoes the query's id, its RD bit and its questions, sets QR and RA, and carries A, AAAA or PTR
records.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum

# RFC 1035 4.1.1: ID, flags, QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT.
HEADER = struct.Struct("!HHHHHH")
# RFC 1035 4.1.1 flag bits.
FLAG_QR = 0x8000
OPCODE_MASK = 0x7800
FLAG_RD = 0x0100
FLAG_RA = 0x0080
RCODE_MASK = 0x000F
# RFC 1035 2.3.4: labels of at most 63 octets, names of at most 255.
MAX_LABEL_LEN = 63
MAX_NAME_LEN = 255
# RFC 1035 4.1.4: a length byte with the two top bits set starts a pointer.
POINTER_MARK = 0xC0
# The most pointers followed in one name: more is a loop.
MAX_POINTERS = 32
# RFC 1035 3.2.4: the Internet class.
CLASS_IN = 1
# RFC 3596: the reverse-lookup domains of IPv4 and IPv6 addresses.
IPV4_REVERSE_SUFFIX = ".in-addr.arpa"
IPV6_REVERSE_SUFFIX = ".ip6.arpa"


class RecordType(IntEnum):
    """RFC 1035 3.2.2 and RFC 3596: the query types a DNSPort answers."""

    A = 1
    PTR = 12
    AAAA = 28


class Rcode(IntEnum):
    """RFC 1035 4.1.1 RCODE."""

    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5


class DnsFormatError(ValueError):
    """A packet that is not a DNS query this server can read."""


@dataclass(frozen=True, slots=True)
class Question:
    name: str  # as the client spelled it (case kept: clients use 0x20 case games), without the final dot
    qtype: int
    qclass: int


@dataclass(frozen=True, slots=True)
class Query:
    ident: int
    flags: int
    questions: tuple[Question, ...]
    question_bytes: bytes  # the question section as sent, echoed in the response


@dataclass(frozen=True, slots=True)
class Record:
    """One answer: a name, a type (A, AAAA, PTR), a TTL and the value (an address, or a name for PTR)."""

    name: str
    rtype: RecordType
    ttl: int
    value: ipaddress.IPv4Address | ipaddress.IPv6Address | str


def _read_name(packet: bytes, offset: int) -> tuple[str, int]:
    """The name at `offset` and the offset just past it (past the first pointer, if any)."""
    labels: list[str] = []
    end = None
    length_so_far = 0
    for _ in range(MAX_POINTERS + MAX_NAME_LEN):
        if offset >= len(packet):
            raise DnsFormatError("name runs past the end of the packet")
        length = packet[offset]
        if length & POINTER_MARK == POINTER_MARK:
            if offset + 1 >= len(packet):
                raise DnsFormatError("truncated compression pointer")
            if end is None:
                end = offset + 2
            target = ((length & ~POINTER_MARK) << 8) | packet[offset + 1]
            if target >= offset:
                raise DnsFormatError("compression pointer does not point backwards")
            offset = target
            continue
        if length & POINTER_MARK:
            raise DnsFormatError(f"unknown label type {length:#04x}")
        offset += 1
        if length == 0:
            break
        label = packet[offset : offset + length]
        if len(label) != length:
            raise DnsFormatError("label runs past the end of the packet")
        length_so_far += length + 1
        if length_so_far > MAX_NAME_LEN:
            raise DnsFormatError("name longer than 255 octets")
        try:
            text = label.decode("ascii")
        except UnicodeDecodeError:
            raise DnsFormatError("name is not ASCII") from None
        if "." in text or not text.isprintable():
            raise DnsFormatError("label holds a dot or a control character")
        labels.append(text)
        offset += length
    else:
        raise DnsFormatError("compression loop")
    return ".".join(labels), offset if end is None else end


def parse_query(packet: bytes) -> Query:
    """A query's header and questions; DnsFormatError for anything else (a response, a truncated packet)."""
    if len(packet) < HEADER.size:
        raise DnsFormatError("shorter than a DNS header")
    ident, flags, qdcount, _, _, _ = HEADER.unpack_from(packet)
    if flags & FLAG_QR:
        raise DnsFormatError("a response, not a query")
    offset = HEADER.size
    questions = []
    for _ in range(qdcount):
        name, offset = _read_name(packet, offset)
        if offset + 4 > len(packet):
            raise DnsFormatError("truncated question")
        qtype, qclass = struct.unpack_from("!HH", packet, offset)
        offset += 4
        questions.append(Question(name, qtype, qclass))
    return Query(ident, flags, tuple(questions), bytes(packet[HEADER.size:offset]))


def encode_name(name: str) -> bytes:
    """A name in wire form (no compression); DnsFormatError if a label or the name is too long."""
    labels = [label for label in name.rstrip(".").split(".") if label] if name.strip(".") else []
    try:
        encoded = b"".join(bytes((len(label),)) + label.encode("ascii") for label in labels) + b"\x00"
    except UnicodeEncodeError:
        raise DnsFormatError(f"name {name!r} is not ASCII") from None
    if any(len(label) > MAX_LABEL_LEN for label in labels) or len(encoded) > MAX_NAME_LEN:
        raise DnsFormatError(f"name {name!r} does not fit in DNS")
    return encoded


def _rdata(record: Record) -> bytes:
    if record.rtype is RecordType.PTR:
        return encode_name(str(record.value))
    return record.value.packed


def encode_response(query: Query, rcode: int, records: list[Record] = ()) -> bytes:
    """The response to `query`: its id, opcode and RD echoed, QR and RA set, its questions and `records`."""
    flags = FLAG_QR | FLAG_RA | (query.flags & (OPCODE_MASK | FLAG_RD)) | (rcode & RCODE_MASK)
    answers = b""
    for record in records:
        rdata = _rdata(record)
        answers += encode_name(record.name) + struct.pack("!HHIH", record.rtype, CLASS_IN, record.ttl,
                                                          len(rdata)) + rdata
    return HEADER.pack(query.ident, flags, len(query.questions), len(records), 0, 0) + query.question_bytes + answers


def reverse_name_address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a PTR question's name asks about (``4.3.2.1.in-addr.arpa``, nibbles ``.ip6.arpa``), or None."""
    lowered = name.lower().rstrip(".")
    try:
        if lowered.endswith(IPV4_REVERSE_SUFFIX):
            octets = lowered[: -len(IPV4_REVERSE_SUFFIX)].split(".")
            if len(octets) != 4 or not all(o.isdigit() and len(o) <= 3 for o in octets):
                return None
            return ipaddress.IPv4Address(".".join(reversed(octets)))
        if lowered.endswith(IPV6_REVERSE_SUFFIX):
            nibbles = lowered[: -len(IPV6_REVERSE_SUFFIX)].split(".")
            if len(nibbles) != 32 or not all(len(n) == 1 and n in "0123456789abcdef" for n in nibbles):
                return None
            return ipaddress.IPv6Address(int("".join(reversed(nibbles)), 16))
    except ValueError:
        return None
    return None
