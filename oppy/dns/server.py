"""The DNSPort: a UDP listener answering A, AAAA and PTR queries by resolving through Tor.

What to answer is decided by :func:`plan` (pure: a response now, or a name to resolve) and :func:`answer`
(pure: the response to the exit's RESOLVED answers); :class:`DnsPortProtocol` is the thin Twisted adapter that
opens the RESOLVE streams. tor's behaviour (dnsserv.c evdns_server_callback and dnsserv_resolved): the first
question of class IN and type A, AAAA or PTR is answered, none gives NOTIMP and no question an empty NOERROR;
an exit's "no such name" is NXDOMAIN and its transient error SERVFAIL; TTLs are at least 60 s; a .onion name
is never sent to an exit; with AutomapHostsOnResolve, names with an automap suffix get virtual addresses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from twisted.internet import protocol

from oppy.cell.relay import ResolvedAnswer, ResolvedType
from oppy.circuit.addressmap import AddressMap, AddressMapFull
from oppy.circuit.isolation import ClientProtocol, StreamIsolation
from oppy.dns.message import (
    CLASS_IN,
    DnsFormatError,
    Query,
    Question,
    Rcode,
    Record,
    RecordType,
    encode_response,
    parse_query,
    reverse_name_address,
)
from oppy.hs.address import is_onion_hostname
from oppy.logs import safe_address
from oppy.socks.messages import is_valid_hostname, parse_ip_address
from oppy.stream.stream import StreamEnd, StreamKind

log = logging.getLogger(__name__)

# dnsserv.c dnsserv_resolved: "if (ttl < 60) ttl = 60".
MIN_TTL = 60
_SUPPORTED_TYPES = frozenset(RecordType)


@dataclass(frozen=True, slots=True)
class Respond:
    """Send this response now."""

    response: bytes


@dataclass(frozen=True, slots=True)
class Resolve:
    """Resolve `target` (a name, or an address for PTR) through an exit, then :func:`answer` `question`."""

    question: Question
    kind: StreamKind
    target: str


def _records(question: Question, rtype: RecordType, values, ttl: int) -> list[Record]:
    return [Record(question.name, rtype, max(ttl, MIN_TTL), value) for value in values]


def plan(query: Query, addresses: AddressMap) -> Respond | Resolve:
    """What to do with a query: answer it at once, or resolve one name through Tor."""
    if not query.questions:
        return Respond(encode_response(query, Rcode.NOERROR))
    question = next((q for q in query.questions if q.qclass == CLASS_IN and q.qtype in _SUPPORTED_TYPES), None)
    if question is None:
        return Respond(encode_response(query, Rcode.NOTIMP))
    qtype = RecordType(question.qtype)
    name = question.name
    if qtype is RecordType.PTR:
        address = reverse_name_address(name)
        if address is None:
            return Respond(encode_response(query, Rcode.NXDOMAIN))
        virtual = addresses.name_of(address)
        if virtual is not None:
            return Respond(encode_response(query, Rcode.NOERROR, _records(question, qtype, [virtual], MIN_TTL)))
        return Resolve(question, StreamKind.RESOLVE_PTR, str(address))
    version = 4 if qtype is RecordType.A else 6
    literal = parse_ip_address(name)
    if literal is not None:
        records = _records(question, qtype, [literal], MIN_TTL) if literal.version == version else []
        return Respond(encode_response(query, Rcode.NOERROR, records))
    if addresses.should_automap(name):
        try:
            virtual_address = addresses.virtual_address(name, version)
        except AddressMapFull as exc:
            log.warning("Cannot automap %s: %s", safe_address(name), exc)
            return Respond(encode_response(query, Rcode.SERVFAIL))
        return Respond(encode_response(query, Rcode.NOERROR, _records(question, qtype, [virtual_address], MIN_TTL)))
    if is_onion_hostname(name) or not is_valid_hostname(name):
        return Respond(encode_response(query, Rcode.NXDOMAIN))
    return Resolve(question, StreamKind.RESOLVE, name)


def answer(query: Query, question: Question, answers: list[ResolvedAnswer]) -> bytes:
    """The response once the exit answered: the records of the question's type, NXDOMAIN for the exit's "no
    such name", SERVFAIL for its transient error (or no answer at all)."""
    qtype = RecordType(question.qtype)
    wanted = {RecordType.A: ResolvedType.IPV4, RecordType.AAAA: ResolvedType.IPV6,
              RecordType.PTR: ResolvedType.HOSTNAME}[qtype]
    records = [Record(question.name, qtype, max(a.ttl, MIN_TTL), a.value) for a in answers if a.answer_type == wanted]
    if records:
        try:
            return encode_response(query, Rcode.NOERROR, records)
        except DnsFormatError as exc:  # a PTR name no DNS message can carry
            log.info("Cannot answer a DNS query with the exit's answer: %s", exc)
            return encode_response(query, Rcode.SERVFAIL)
    if any(a.answer_type == ResolvedType.ERROR_NONTRANSIENT for a in answers):
        return encode_response(query, Rcode.NXDOMAIN)
    if not answers or any(a.answer_type == ResolvedType.ERROR_TRANSIENT for a in answers):
        return encode_response(query, Rcode.SERVFAIL)
    return encode_response(query, Rcode.NOERROR)  # the name exists, without an address of this family


class _PendingLookup:
    """The stream sink of one query's RESOLVE: it answers the client when the exit does."""

    def __init__(self, port: "DnsPortProtocol", query: Query, question: Question, client: tuple[str, int]) -> None:
        self.port, self.query, self.question, self.client = port, query, question, client
        self.answered = False

    def _send(self, response: bytes) -> None:
        if not self.answered:
            self.answered = True
            self.port.send(response, self.client)

    def stream_connected(self, stream) -> None:
        pass

    def stream_resolved(self, stream, answers: list[ResolvedAnswer]) -> None:
        self._send(answer(self.query, self.question, answers))

    def stream_data(self, stream, data: bytes) -> None:
        pass

    def stream_writable(self, stream, writable: bool) -> None:
        pass

    def stream_ended(self, stream, end: StreamEnd) -> None:
        # dnsserv_reject_request: a lookup that never got an answer (no circuit, timeouts) is SERVFAIL.
        self._send(encode_response(self.query, Rcode.SERVFAIL))


class DnsPortProtocol(protocol.DatagramProtocol):
    """One DNSPort's UDP socket."""

    def __init__(self, manager, addresses: AddressMap, isolation: StreamIsolation = StreamIsolation()) -> None:
        self.manager = manager
        self.addresses = addresses
        self.isolation = replace(isolation, protocol=ClientProtocol.DNS)
        self._malformed_logged = False

    def send(self, response: bytes, client: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.write(response, client)

    def datagramReceived(self, data: bytes, client: tuple[str, int]) -> None:  # noqa: N802 - Twisted's naming
        try:
            query = parse_query(data)
        except DnsFormatError as exc:
            # Dropped without an answer; one line (until a good query comes), not one per packet of a flood.
            if not self._malformed_logged:
                self._malformed_logged = True
                log.info("Dropping a malformed DNS packet from %s:%d: %s", client[0], client[1], exc)
            return
        self._malformed_logged = False
        action = plan(query, self.addresses)
        if isinstance(action, Respond):
            self.send(action.response, client)
            return
        sink = _PendingLookup(self, query, action.question, client)
        try:
            self.manager.open_stream(sink, action.target, 0, action.kind, source=f"{client[0]}:{client[1]}",
                                     isolation=replace(self.isolation, client_address=client[0]))
        except Exception as exc:
            log.warning("cannot resolve %s: %s", safe_address(action.target), exc)
            sink.stream_ended(None, None)
