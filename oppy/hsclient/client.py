"""The onion-service client (rend-spec-v3 2.2.4, 3 and 4; tor hs_client.c): from a `.onion` stream to a
rendezvous circuit joined to the service, and the streams attached to it.

For each service a :class:`ServiceConnection` runs, in order: the descriptor (cached, else fetched over
BEGIN_DIR from the responsible HSDirs on HS_CLIENT_HSDIR circuits, one after another in random order until
one has it), a rendezvous circuit (HS_CLIENT_REND: ESTABLISH_RENDEZVOUS, RENDEZVOUS_ESTABLISHED) and an
introduction circuit to one of the descriptor's introduction points (HS_CLIENT_INTRO: INTRODUCE1,
INTRODUCE_ACK), then RENDEZVOUS2 and the virtual hop; the next introduction point on failure. Streams wait
meanwhile and are attached once the circuit is joined; later streams to the service go on that circuit while it
is open, when their ports' isolation flags let them share it (tor's circuit_is_acceptable). Failures end the
waiting streams with tor's END reason and proposal 304's extended SOCKS code.

The waits are tor's: each circuit's answer within its purpose's share of the circuit build timeout
(circuituse.c circuit_expire_building), then the next introduction point; an HSDir within
TestingDirConnectionMaxStall, then the next one; and each stream gives up after SocksTimeout (END TIMEOUT),
the attempt stopping at its next step once no stream waits any more.

Every circuit is the circuit manager's; this client is the `OnionServiceCircuitUser` of those it launches
(their RENDEZVOUS_ESTABLISHED, INTRODUCE_ACK, RENDEZVOUS2 come to it) and the `StreamRouter` of `.onion`
streams.
"""

from __future__ import annotations

import base64
import logging
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from collections.abc import Mapping

from twisted.internet import defer, task
from twisted.python.failure import Failure

from oppy.cell.commands import DestroyReason, EndReason, RelayCommand
from oppy.cell.errors import CellParseError
from oppy.cell.onion_service import (
    REND_COOKIE_LEN,
    IntroduceAckStatus,
    decode_introduce_ack_body,
    decode_rendezvous2_body,
    encode_establish_rendezvous_body,
    encode_introduce1_head,
    encode_introduce_plaintext,
)
from oppy.cell.relay import LinkSpecifierType, link_specifiers_for_relay
from oppy.circuit.circuit import CircuitError
from oppy.circuit.congestion import CongestionParams, VegasController
from oppy.circuit.isolation import CircuitIsolation, IsolationValues, StreamIsolation
from oppy.circuit.manager import (
    CircuitClosed,
    CircuitManager,
    CircuitPurpose,
    ManagedCircuit,
    ManagedStream,
    ManagerEvent,
)
from oppy.crypto.errors import HandshakeError
from oppy.crypto.relay_crypto import Tor1Hop
from oppy.directory.client import DirectoryClient, DirectoryRequestError, DirectoryStatusError
from oppy.hs.address import OnionAddress, parse_onion_address
from oppy.hs.cache import HsDescriptorCache, IntroFailure
from oppy.hs.client_auth import ClientAuthKey
from oppy.hs.descriptor import HS_DESC_MAX_LEN, HsDescriptor, IntroductionPoint, decode_descriptor
from oppy.hs.errors import ClientAuthMissing, ClientAuthWrong, InvalidDescriptor
from oppy.hs.hashring import fetch_ring
from oppy.hs.hsdir_requests import HsDirRequests
from oppy.hs.keys import blinded_public_key
from oppy.hs.ntor import HsNtorClient
from oppy.hs.timeperiod import consensus_time_period
from oppy.netdoc.documents import DocumentParseError, parse_protocols
from oppy.netdoc.netdir import NetDir
from oppy.netdoc.relay import RelayTarget
from oppy.path.selection import NoPathError
from oppy.path.vanguards import OnionServicePurpose
from oppy.socks.messages import Socks5Reply

log = logging.getLogger(__name__)

__all__ = ["DescriptorEvent", "OnionServiceClient"]

#: rend-spec-v3 2.2.6 / dir-spec: a client fetches ``/tor/hs/3/<base64 blinded key>`` from an HSDir.
HSDIR_FETCH_PATH = "/tor/hs/3/"
#: How long an HSDir may take to answer: tor's TestingDirConnectionMaxStall (config.c, 5 minutes; testnet.inc:
#: 30 seconds under TestingTorNetwork), after which main.c run_connection_housekeeping expires the "wedged
#: directory conn" (the fetch fails and the next HSDir is asked).
DIR_CONNECTION_MAX_STALL = 300.0
TESTING_DIR_CONNECTION_MAX_STALL = 30.0
#: How soon a connection attempt tries again after its rendezvous circuit failed or was lost: tor's streams
#: stay pending and its once-a-second pass (circuituse.c circuit_build_needed_circs ->
#: connection_ap_rescan_and_attach_pending) launches a new rendezvous circuit for them.
PENDING_STREAMS_RETRY_INTERVAL = 1.0
#: protover.h PROTOVER_FLOWCTRL_CC: the FlowCtrl version that is congestion control (prop 324).
FLOWCTRL_CONGESTION_CONTROL = 2


# The waits for an answer on an onion-service circuit, from the circuit build timeout (CBT, seconds) as tor's
# circuituse.c circuit_expire_building scales it by the round trips of each purpose ("RTTs = 6h" for a 3-hop
# build). tor counts them from the circuit's timestamp_dirty, set when the cell that wants the answer went out.


def rendezvous_established_timeout(cbt: float) -> float:
    """C_ESTABLISH_REND, open, waiting for RENDEZVOUS_ESTABLISHED: the general cutoff, CBT."""
    return cbt


def introduce_ack_timeout(cbt: float) -> float:
    """C_INTRODUCE_ACK_WAIT, INTRODUCE1 sent: c_intro_cutoff, CBT * 14/6 + 1 s ("RTTs = 14h")."""
    return cbt * 14 / 6 + 1


def rendezvous2_timeout(cbt: float) -> float:
    """C_REND_READY_INTRO_ACKED, INTRODUCE_ACK received, waiting for RENDEZVOUS2: c_rend_ready_cutoff,
    CBT * 3 + 1 s (the service's 4-hop circuit to the rendezvous point and 7 hops back)."""
    return cbt * 3 + 1

#: control-spec "CIRC" HS_STATE values (tor circuit_purpose_to_controller_hs_state_string).
HSCI_CONNECTING = "HSCI_CONNECTING"
HSCI_INTRO_SENT = "HSCI_INTRO_SENT"
HSCI_DONE = "HSCI_DONE"
HSCR_CONNECTING = "HSCR_CONNECTING"
HSCR_ESTABLISHED_IDLE = "HSCR_ESTABLISHED_IDLE"
HSCR_ESTABLISHED_WAITING = "HSCR_ESTABLISHED_WAITING"
HSCR_JOINED = "HSCR_JOINED"


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class DescriptorEvent:
    """A descriptor fetch step, as the control port's HS_DESC event reports it (control-spec "HS_DESC";
    tor hs_control.c): REQUESTED, RECEIVED or FAILED (with REASON)."""

    action: str
    #: The service's address without ".onion".
    address: str
    hsdir: RelayTarget
    #: The blinded key in base64 (tor's descriptor ID for v3).
    descriptor_id: str
    reason: str | None = None
    #: The HSDir's fetch index on the hash ring (REQUESTED only, as tor's HSDIR_INDEX=).
    hsdir_index: bytes | None = None


DescriptorObserver = Callable[[DescriptorEvent], None]


# --------------------------------------------------------------------------- failures


class _ConnectFailed(Exception):
    """The service could not be reached: the waiting streams end with `reason` and proposal 304's `code`."""

    def __init__(self, message: str, reason: int, code: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.code = code


class _IntroductionFailed(Exception):
    """One introduction point did not work; `failure` is what the cache notes of it (tor
    hs_client_circuit_cleanup_on_free, handle_introduce_ack_bad), None for nothing. `rendezvous` is the
    established rendezvous circuit and its cookie, kept for the next introduction point."""

    def __init__(self, message: str, failure: IntroFailure | None, rendezvous: tuple | None = None) -> None:
        super().__init__(message)
        self.failure = failure
        self.rendezvous = rendezvous


class _RendezvousFailed(Exception):
    """The rendezvous circuit failed or was lost (no RENDEZVOUS2 in time, closed, a bad handshake): tor keeps
    the streams pending and tries again with a new rendezvous circuit and introduction."""


@dataclass(eq=False)
class ServiceConnection:
    """One rendezvous with a service: the streams waiting for it, its joined rendezvous circuit, and the
    isolation of every stream it took. tor's circuit_is_acceptable holds a rendezvous circuit to its streams'
    isolation (connection_edge_compatible_with_circuit) as any other: a service gets one connection per set
    of streams its ports' isolation flags let share a circuit."""

    address: OnionAddress
    waiting: list[ManagedStream] = field(default_factory=list)
    rendezvous: ManagedCircuit | None = None
    running: bool = False
    isolation: CircuitIsolation = field(default_factory=CircuitIsolation)
    #: Each waiting stream's SocksTimeout timer, by stream number.
    deadlines: dict[int, object] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        """Its rendezvous circuit is joined and takes another stream."""
        rendezvous = self.rendezvous
        return rendezvous is not None and rendezvous.is_open and rendezvous.usable \
            and rendezvous.circuit.has_stream_room

    def takes(self, label: str, stream: IsolationValues) -> bool:
        """A stream to service `label` with isolation values `stream` may go (or wait) here."""
        return self.address.label == label and (self.running or self.ready) and self.isolation.compatible(stream)

    def check_wanted(self) -> None:
        """Stop the attempt between its steps once every stream gave up waiting (SocksTimeout)."""
        if not self.waiting:
            raise _ConnectFailed("no stream waits for the service any more", EndReason.TIMEOUT, 0)


def descriptor_id(blinded_key: bytes) -> str:
    """tor ed25519_public_to_base64: base64 without its padding."""
    return base64.b64encode(blinded_key).decode("ascii").rstrip("=")


def check_flow_control(descriptor: HsDescriptor, params: CongestionParams) -> None:
    """tor desc_decode_encrypted_v3: a ``flow-control`` sendme_inc more than 1 from the consensus's
    cc_sendme_inc (congestion_control_validate_sendme_increment) makes the descriptor invalid (prop 324
    9.1: "they MUST reject the descriptor")."""
    flow_control = descriptor.second_layer.flow_control
    if flow_control is not None and not params.accepts_sendme_inc(flow_control[1]):
        raise InvalidDescriptor(f"flow-control sendme_inc {flow_control[1]} is more than 1 from the consensus's "
                                f"cc_sendme_inc {params.sendme_inc}")


def rendezvous_congestion_control(descriptor: HsDescriptor, params: CongestionParams,
                                  onion_params: CongestionParams) -> tuple[CongestionParams, int] | None:
    """What the rendezvous circuit's virtual hop runs if INTRODUCE1 asks the service for congestion control
    (tor setup_rendezvous_circ_congestion_control): when the consensus has it on and the descriptor's
    ``flow-control`` lists FlowCtrl=2 (hs_desc_supports_congestion_control), Vegas with the descriptor's
    sendme_inc and the onion-path parameters (the exit ones for a single onion service, CC_PATH_ONION_SOS);
    None: no request, fixed windows."""
    flow_control = descriptor.second_layer.flow_control
    if flow_control is None or not params.enabled:
        return None
    versions, sendme_inc = flow_control
    try:
        offered = parse_protocols(f"FlowCtrl={versions}").get("FlowCtrl", frozenset())
    except DocumentParseError:
        # protocol_list_supports_protocol: a version list it cannot parse supports nothing.
        return None
    if FLOWCTRL_CONGESTION_CONTROL not in offered:
        return None
    return (params if descriptor.second_layer.single_onion_service else onion_params), sendme_inc


def relay_target_for_introduction_point(point: IntroductionPoint, netdir: NetDir | None = None) -> RelayTarget:
    """The relay to extend to, from the descriptor's link specifiers and ntor key (tor
    hs_get_extend_info_from_lspecs); its nickname from the consensus when it is listed."""
    rsa_id = ed25519_id = address = None
    port = 0
    for spec in point.link_specifiers:
        if spec.spec_type == LinkSpecifierType.LEGACY_ID:
            rsa_id = bytes(spec.data)
        elif spec.spec_type == LinkSpecifierType.ED25519_ID:
            ed25519_id = bytes(spec.data)
        elif spec.spec_type == LinkSpecifierType.TLS_TCP_IPV4 and address is None:
            address = ".".join(str(b) for b in spec.data[:4])
            port = int.from_bytes(spec.data[4:6], "big")
    if rsa_id is None or address is None:
        raise InvalidDescriptor("an introduction point has no legacy identity or IPv4 link specifier")
    listed = netdir.relay_by_id(rsa_id) if netdir is not None else None
    return RelayTarget(listed.nickname if listed is not None else "", rsa_id, address, port, point.onion_key,
                       ed25519_id)


class OnionServiceClient:
    """Connects `.onion` streams to their services (see the module docstring)."""

    def __init__(self, manager: CircuitManager, *, client_keys: Mapping[bytes, ClientAuthKey] | None = None,
                 reactor=None, directory: DirectoryClient | None = None, testing_network: bool = False,
                 wallclock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 observers: Iterable[DescriptorObserver] = ()) -> None:
        self.manager = manager
        #: ClientOnionAuthDir's keys, by service identity key.
        self.client_keys = dict(client_keys or {})
        self.reactor = reactor or manager.reactor
        self.directory = directory or DirectoryClient(
            self.reactor, timeout=TESTING_DIR_CONNECTION_MAX_STALL if testing_network else DIR_CONNECTION_MAX_STALL)
        self.testing_network = testing_network
        self.wallclock = wallclock
        self.rng = rng or random.SystemRandom()
        self._observers: list[DescriptorObserver] = list(observers)
        # Streams isolated apart get their own connections, each with its rendezvous circuit.
        self._connections: list[ServiceConnection] = []
        self.cache = HsDescriptorCache(wallclock, testing_network)
        #: When each HSDir was last asked for each descriptor (tor's last_hid_serv_requests_).
        self.hsdir_requests = HsDirRequests(testing_network)
        # Descriptor fetches under way, by service identity key: the Deferreds of the attempts waiting for them.
        self._fetches: dict[bytes, list[defer.Deferred]] = {}
        # Counts purge_state calls: a fetch that began before one does not fill the purged cache.
        self._purges = 0
        # Messages awaited from a circuit's last hop: (circuit number, relay command) -> Deferred.
        self._awaited: dict[tuple[int, int], defer.Deferred] = {}
        manager.add_observer(self._manager_event)

    # ------------------------------------------------------------------------------ observers

    def add_observer(self, observer: DescriptorObserver) -> None:
        """Tell `observer` every descriptor fetch step from now on (the control port's HS_DESC)."""
        self._observers.append(observer)

    def remove_observer(self, observer: DescriptorObserver) -> None:
        self._observers = [known for known in self._observers if known != observer]

    def _notify(self, event: DescriptorEvent) -> None:
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:  # an observer's bug must not break connections
                log.exception("onion-service observer %r failed", observer)

    def purge_state(self) -> None:
        """NEWNYM (tor hs_client_purge_state): forget every descriptor, introduction point failure and HSDir
        request (hs_purge_last_hid_serv_requests), so
        that nothing learnt before links the new identity to the old; fetches under way no longer fill the
        cache. Rendezvous circuits are not reused across NEWNYM (the stream's NYM epoch isolates them)."""
        self._purges += 1
        self.cache.purge()
        self.hsdir_requests.purge()
        log.info("Hidden service client state has been purged.")

    # ------------------------------------------------------------------------------ streams

    def open_stream(self, sink, address: OnionAddress, port: int, isolation: StreamIsolation,
                    source: str | None = None) -> ManagedStream:
        """A stream to `address`:`port` isolated as its front door says (the SOCKS layer's
        `OnionServiceConnector`); the manager hands it to :meth:`attach_stream`."""
        return self.manager.open_stream(sink, address.hostname, port, isolation=isolation, source=source,
                                        router=self)

    def attach_stream(self, managed: ManagedStream) -> None:
        """StreamRouter: on a joined rendezvous circuit to the service that the stream's isolation (its port's
        flags, NEWNYM epoch) lets it share, or waiting for one being made, or for a new one."""
        address = parse_onion_address(managed.stream.host)
        # Connections that neither connect nor take streams any more are forgotten (their streams stay).
        self._connections = [known for known in self._connections if known.running or known.ready]
        connection = next((known for known in self._connections if known.takes(address.label, managed.isolation)),
                          None)
        if connection is None:
            connection = ServiceConnection(address)
            self._connections.append(connection)
        connection.isolation.add(managed.isolation, attached=True)
        if connection.ready:
            self.manager.attach_to(managed, connection.rendezvous)
            return
        connection.waiting.append(managed)
        # connection_edge.c connection_ap_expire_beginning: an onion stream not attached within SocksTimeout
        # of its creation (or of the descriptor's arrival, _descriptor_arrived) is given up with END reason
        # TIMEOUT (no retry); the attempt itself goes on.
        connection.deadlines[managed.number] = self.reactor.callLater(
            self.manager.unattached_timeout, self._stream_expired, connection, managed)
        if not connection.running:
            connection.running = True
            self._connect(connection)

    def _stream_expired(self, connection: ServiceConnection, managed: ManagedStream) -> None:
        connection.deadlines.pop(managed.number, None)
        if managed in connection.waiting:
            connection.waiting.remove(managed)
            log.info("Tried for %.0f seconds to get a connection to %s:%d. Giving up.",
                     self.manager.unattached_timeout, connection.address.hostname, managed.stream.port)
            if not managed.stream.ended:
                managed.stream.close(EndReason.TIMEOUT)

    @defer.inlineCallbacks
    def _connect(self, connection: ServiceConnection):
        label = connection.address.label
        reason, code = EndReason.MISC, 0
        try:
            rendezvous = yield self._reach(connection)
        except _ConnectFailed as failure:
            log.info("Closing %d streams for %s.onion: %s", len(connection.waiting), label, failure)
            rendezvous, reason, code = None, failure.reason, failure.code
        except Exception:
            log.exception("connecting to %s.onion failed", label)
            rendezvous = None
        connection.running = False
        waiting, connection.waiting = connection.waiting, []
        for timer in connection.deadlines.values():
            if timer.active():
                timer.cancel()
        connection.deadlines.clear()
        if rendezvous is None:
            if connection in self._connections:
                self._connections.remove(connection)
            for managed in waiting:
                managed.stream.close(reason, extended_error=code)
            return
        connection.rendezvous = rendezvous
        log.info("Connected to %s.onion on circuit %d: attaching %d streams", label, rendezvous.number,
                 len(waiting))
        for managed in waiting:
            if not managed.stream.ended:
                self.manager.attach_to(managed, rendezvous)

    @defer.inlineCallbacks
    def _reach(self, connection: ServiceConnection):
        """The descriptor, then its usable introduction points, one at random after the other (tor
        client_get_random_intro): the joined rendezvous circuit.

        As tor, the answer that no introduction point works comes only with a descriptor just fetched: when
        every point of a cached descriptor, or of one fetched before the introductions failed, is unusable,
        the descriptor is fetched again (hs_client_refetch_hsdesc; the service may have moved them), and if
        that one has none usable either the streams end, F7 when every point of it timed out
        (client_desc_has_arrived, socks_mark_introduction_failed), F2 otherwise. oppy fetches it again once
        per attempt, from the HSDirs not asked for it within the requery period (hs_pick_hsdir).

        A rendezvous that fails after the introduction (no RENDEZVOUS2 in time, the circuit lost) does not end
        the streams: a new rendezvous circuit and introduction follow while one waits (SocksTimeout).

        As tor's note_connection_attempt_succeeded, the HSDir requests for the service are forgotten once it is
        reached, or once a descriptor just fetched has no usable introduction point."""
        address = connection.address
        netdir = self.manager.paths.netdir
        if netdir is None:
            raise _ConnectFailed("no consensus yet", EndReason.RESOLVEFAILED, 0)
        descriptor, just_fetched = yield self._descriptor(connection, netdir)
        if just_fetched:
            self._descriptor_arrived(connection)
        refetched = False
        # tor close_or_reextend_intro_circ: the rendezvous circuit waits while the next introduction point
        # is tried; it is closed only when none is left.
        established = None
        try:
            while True:
                connection.check_wanted()
                points = self._usable_points(address, descriptor)
                if not points:
                    if just_fetched or refetched:
                        break
                    log.info("%s.onion: no usable introduction point; fetching the descriptor again", address.label)
                    descriptor, just_fetched = yield self._descriptor(connection, netdir, cached=False)
                    self._descriptor_arrived(connection)
                    refetched = True
                    continue
                congestion = rendezvous_congestion_control(descriptor, self.manager.congestion_params,
                                                           self.manager.onion_congestion_params)
                just_fetched = False
                point = self.rng.choice(points)
                try:
                    rendezvous = yield self._introduce(connection, point, descriptor.subcredential, netdir,
                                                       established, congestion)
                    self.hsdir_requests.purge_service(self._descriptor_id(address, netdir))
                    return rendezvous
                except _RendezvousFailed as failure:
                    # tor keeps the streams pending ("pending-join circ ... Stalling" in
                    # connection_ap_handshake_attach_circuit while RENDEZVOUS2 is awaited); once the rendezvous
                    # circuit is gone, its next pass launches a new one and introduces again, until SocksTimeout
                    # (END TIMEOUT). F3 is never answered for it: socks_mark_rend_circuit_timed_out marks only
                    # streams attached to the circuit, and none is before it is joined.
                    log.info("%s.onion: %s; trying again with a new rendezvous circuit", address.label, failure)
                    established = None
                    yield self._pause()
                except _IntroductionFailed as failure:
                    log.info("%s.onion: introduction point failed: %s", address.label, failure)
                    if failure.failure is not None:
                        self.cache.note_intro_failure(address.identity_key, point.auth_key, failure.failure)
                    established = failure.rendezvous
        except BaseException:
            if established is not None:
                self._close(established[0], "connection attempt given up")
            raise
        if established is not None:
            self._close(established[0], "introduction failed")
        self.hsdir_requests.purge_service(self._descriptor_id(address, netdir))
        if self._all_timed_out(address, descriptor):
            raise _ConnectFailed("every introduction point of the descriptor timed out", EndReason.RESOLVEFAILED,
                                 Socks5Reply.ONION_INTRO_TIMED_OUT)
        raise _ConnectFailed("no usable introduction point in the descriptor", EndReason.RESOLVEFAILED,
                             Socks5Reply.ONION_INTRO_FAILED)

    def _descriptor_arrived(self, connection: ServiceConnection) -> None:
        """tor client_desc_has_arrived -> mark_conn_as_waiting_for_circuit: the streams that waited for a
        descriptor fetch count their SocksTimeout from its arrival ("considered fresh")."""
        for timer in connection.deadlines.values():
            if timer.active():
                timer.reset(self.manager.unattached_timeout)

    def _usable_points(self, address: OnionAddress, descriptor: HsDescriptor) -> list[IntroductionPoint]:
        """tor intro_point_is_usable: the points with no failure noted that rules them out."""
        return [point for point in descriptor.introduction_points
                if (state := self.cache.intro_state(address.identity_key, point.auth_key)) is None or state.usable]

    def _all_timed_out(self, address: OnionAddress, descriptor: HsDescriptor) -> bool:
        """tor intro_points_all_timed_out: every introduction point of the descriptor has timed out (within
        the last INTRO_STATE_MAX_AGE), whatever else went wrong with it."""
        return all((state := self.cache.intro_state(address.identity_key, point.auth_key)) is not None
                   and state.timed_out for point in descriptor.introduction_points)

    # ------------------------------------------------------------------------------ descriptors

    @defer.inlineCallbacks
    def _descriptor(self, connection: ServiceConnection, netdir: NetDir, cached: bool = True):
        """The service's descriptor and whether it was fetched now: cached (tor's expiry rules) unless not
        `cached`, else fetched from a responsible HSDir."""
        address = connection.address
        descriptor = self.cache.lookup(address.identity_key, netdir.consensus) if cached else None
        if descriptor is not None:
            return descriptor, False
        waiters = self._fetches.get(address.identity_key)
        if waiters is not None:
            # tor can_client_refetch_desc: no second fetch while one for the service is under way
            # (HS_CLIENT_FETCH_PENDING); its outcome is every waiting stream's.
            waiter: defer.Deferred = defer.Deferred()
            waiters.append(waiter)
            descriptor = yield waiter
            return descriptor, True
        self._fetches[address.identity_key] = waiters = []
        try:
            descriptor = yield self._fetch_descriptor(address, netdir)
        except Exception:
            outcome = Failure()
            del self._fetches[address.identity_key]
            for waiter in waiters:
                waiter.errback(outcome)
            raise
        del self._fetches[address.identity_key]
        for waiter in waiters:
            waiter.callback(descriptor)
        return descriptor, True

    def _check_wanted(self, address: OnionAddress) -> None:
        """Stop a descriptor fetch between its steps once no stream of any connection to the service waits."""
        if not any(known.waiting for known in self._connections if known.address.label == address.label):
            raise _ConnectFailed("no stream waits for the service any more", EndReason.TIMEOUT, 0)

    def _descriptor_id(self, address: OnionAddress, netdir: NetDir) -> str:
        """The service's blinded key in the consensus's time period, in base64 (tor's req_key_str)."""
        period = consensus_time_period(netdir.consensus, self.testing_network)
        return descriptor_id(blinded_public_key(address.identity_key, period))

    @defer.inlineCallbacks
    def _fetch_descriptor(self, address: OnionAddress, netdir: NetDir):
        """The descriptor from the responsible HSDirs, asked one at a time as tor's hs_pick_hsdir picks them
        (at random among those not asked for it within the requery period), until one serves it."""
        period = consensus_time_period(netdir.consensus, self.testing_network)
        blinded = blinded_public_key(address.identity_key, period)
        purges = self._purges
        ring = fetch_ring(netdir, self.testing_network)
        hsdirs = ring.responsible(blinded)
        ident = descriptor_id(blinded)
        not_found = invalid = False
        while True:
            self._check_wanted(address)
            hsdir = self.hsdir_requests.pick(hsdirs, ident, self.wallclock(), self.rng)
            if hsdir is None:
                break
            self._notify(DescriptorEvent("REQUESTED", address.label, hsdir, ident,
                                         hsdir_index=ring.index_of(hsdir.rsa_id)))
            try:
                text = yield self._fetch_from(hsdir, ident)
            except DirectoryStatusError as exc:
                # tor client_dir_fetch_404 / _400 / _unexpected
                reason = {404: "NOT_FOUND", 400: "QUERY_REJECTED"}.get(exc.status, "UNEXPECTED")
                not_found = not_found or exc.status == 404
                self._notify(DescriptorEvent("FAILED", address.label, hsdir, ident, reason))
                continue
            except (DirectoryRequestError, CircuitError, NoPathError, defer.CancelledError) as exc:
                log.info("%s.onion: descriptor fetch from %s failed: %s", address.label, hsdir.describe(), exc)
                self._notify(DescriptorEvent("FAILED", address.label, hsdir, ident, "UNEXPECTED"))
                continue
            key = self.client_keys.get(address.identity_key)
            try:
                descriptor = decode_descriptor(text, address.identity_key, blinded, self.wallclock(),
                                               key.private_key if key is not None else None)
                check_flow_control(descriptor, self.manager.congestion_params)
            except (ClientAuthMissing, ClientAuthWrong) as exc:
                # tor client_desc_missing_bad_client_auth: RECEIVED, then END MISC with F4 / F5.
                self._notify(DescriptorEvent("RECEIVED", address.label, hsdir, ident))
                code = (Socks5Reply.ONION_CLIENT_AUTH_MISSING if isinstance(exc, ClientAuthMissing)
                        else Socks5Reply.ONION_CLIENT_AUTH_WRONG)
                log.warning("%s.onion: %s", address.label, exc)
                raise _ConnectFailed(str(exc), EndReason.MISC, code) from None
            except InvalidDescriptor as exc:
                log.warning("%s.onion: invalid descriptor from %s: %s", address.label, hsdir.describe(), exc)
                invalid = True
                self._notify(DescriptorEvent("FAILED", address.label, hsdir, ident, "BAD_DESC"))
                continue
            self._notify(DescriptorEvent("RECEIVED", address.label, hsdir, ident))
            if purges == self._purges:
                self.cache.store(address.identity_key, text, descriptor, netdir.consensus)
            return descriptor
        # tor hs_client_refetch_hsdesc: no HSDir left to ask (HS_CLIENT_FETCH_NO_HSDIRS) closes the waiting
        # streams, END RESOLVEFAILED (F0 if one answered 404, client_dir_fetch_404), and forgets the requests
        # for the service (purge_hid_serv_request) so that a later stream asks them again.
        self.hsdir_requests.purge_service(ident)
        code = (Socks5Reply.ONION_DESCRIPTOR_NOT_FOUND if not_found
                else Socks5Reply.ONION_DESCRIPTOR_INVALID if invalid else 0)
        raise _ConnectFailed(f"no descriptor from the {len(hsdirs)} responsible HSDirs (none left to ask)",
                             EndReason.RESOLVEFAILED, code)

    @defer.inlineCallbacks
    def _fetch_from(self, hsdir: RelayTarget, ident: str):
        """GET the descriptor over BEGIN_DIR on an HS_CLIENT_HSDIR circuit ending at `hsdir`."""
        path, guard = self.manager.paths.choose_onion_service_path(OnionServicePurpose.CLIENT_HSDIR, hsdir.rsa_id)
        managed = self.manager.launch(path=path + [hsdir], purpose=CircuitPurpose.HS_CLIENT_HSDIR, guard=guard)
        try:
            yield managed.when_built()
            response = yield self.directory.fetch_over_circuit(managed.circuit, HSDIR_FETCH_PATH + ident,
                                                               HS_DESC_MAX_LEN, relay=hsdir)
        finally:
            self._close(managed, "descriptor fetch done")
        return response.body

    # ------------------------------------------------------------------------------ introduction

    @defer.inlineCallbacks
    def _rendezvous_circuit(self, connection: ServiceConnection):
        """An HS_CLIENT_REND circuit on which RENDEZVOUS_ESTABLISHED arrived, and its cookie. As tor, a
        rendezvous circuit that fails or is not established in time is replaced by a new one while a stream
        waits (circuit_build_failed notes nothing for C_ESTABLISH_REND; the pending streams launch another),
        and so is one that cannot be launched for want of a path (circuit_get_open_circ_or_launch: "No safe
        circuit ... delaying", never F3)."""
        address = connection.address
        logged_no_path = False
        while True:
            connection.check_wanted()
            try:
                path, guard = self.manager.paths.choose_onion_service_path(OnionServicePurpose.CLIENT_REND)
            except NoPathError as exc:
                if not logged_no_path:
                    log.info("%s.onion: no path for a rendezvous circuit (%s); the streams wait", address.label,
                             exc)
                    logged_no_path = True
                yield self._pause()
                continue
            managed = self.manager.launch(path=path, purpose=CircuitPurpose.HS_CLIENT_REND, guard=guard,
                                          onion_service=self, hs_state=HSCR_CONNECTING)
            managed.rend_query = address.label
            cookie = os.urandom(REND_COOKIE_LEN)
            try:
                yield managed.when_built()
                established = self._await(managed, RelayCommand.RENDEZVOUS_ESTABLISHED,
                                          rendezvous_established_timeout(self._cbt()))
                managed.circuit.send_relay(RelayCommand.ESTABLISH_RENDEZVOUS, 0,
                                           encode_establish_rendezvous_body(cookie))
                yield established
            except (CircuitError, defer.TimeoutError) as exc:
                log.info("%s.onion: rendezvous circuit %d failed: %s; trying another", address.label,
                         managed.number, exc)
                self._close(managed, "rendezvous point did not answer",
                            DestroyReason.TIMEOUT if isinstance(exc, defer.TimeoutError) else DestroyReason.FINISHED)
                yield self._pause()
                continue
            self.manager.set_hs_state(managed, HSCR_ESTABLISHED_IDLE)
            return managed, cookie

    def _pause(self) -> defer.Deferred:
        """Wait for tor's next pass over the pending streams (PENDING_STREAMS_RETRY_INTERVAL)."""
        return task.deferLater(self.reactor, PENDING_STREAMS_RETRY_INTERVAL, lambda: None)

    @defer.inlineCallbacks
    def _introduce(self, connection: ServiceConnection, point: IntroductionPoint, service_subcredential: bytes,
                   netdir: NetDir, established: tuple | None, congestion: tuple[CongestionParams, int] | None):
        """Introduce through `point` with the `established` rendezvous circuit and cookie (if it is still
        open) or a fresh one, asking the service for congestion control when `congestion` (the parameters
        and sendme_inc of `rendezvous_congestion_control`); the circuit joined to the service."""
        address = connection.address
        if established is not None and not established[0].is_open:
            established = None
        try:
            target = relay_target_for_introduction_point(point, netdir)
            path, guard = self.manager.paths.choose_onion_service_path(OnionServicePurpose.CLIENT_INTRO,
                                                                       target.rsa_id)
        except (InvalidDescriptor, NoPathError) as exc:
            raise _IntroductionFailed(str(exc), IntroFailure.GENERIC, rendezvous=established) from None
        rendezvous_ready = defer.succeed(established) if established else self._rendezvous_circuit(connection)
        intro = self.manager.launch(path=path + [target], purpose=CircuitPurpose.HS_CLIENT_INTRO, guard=guard,
                                    onion_service=self, hs_state=HSCI_CONNECTING)
        intro.rend_query = address.label
        try:
            rendezvous, cookie = yield rendezvous_ready
        except _ConnectFailed:
            self._close(intro, "no rendezvous circuit")
            raise
        handshake = HsNtorClient(point.auth_key, point.enc_key, service_subcredential)
        joined = None
        try:
            try:
                yield intro.when_built()
            except CircuitError as exc:
                # hs_client_circuit_cleanup_on_free, C_INTRODUCING: a build that timed out notes nothing (the
                # point is tried again), one that failed otherwise counts as unreachable.
                timed_out = exc.reason == DestroyReason.TIMEOUT and not exc.remote
                raise _IntroductionFailed(f"introduction circuit failed: {exc}",
                                          None if timed_out else IntroFailure.UNREACHABLE) from None
            head = encode_introduce1_head(point.auth_key)
            point_of_rendezvous = rendezvous.path[-1]
            specifiers = link_specifiers_for_relay(point_of_rendezvous.rsa_id,
                                                   ipv4=(point_of_rendezvous.address, point_of_rendezvous.or_port),
                                                   ed25519_identity=point_of_rendezvous.ed25519_id)
            plaintext = encode_introduce_plaintext(cookie, point_of_rendezvous.ntor_onion_key, specifiers, len(head),
                                                   congestion_control=congestion is not None)
            # RENDEZVOUS2 may come before INTRODUCE_ACK: both are awaited before INTRODUCE1 goes out.
            # RENDEZVOUS2's clock starts at INTRODUCE_ACK (tor handle_introduce_ack_success sets the
            # rendezvous circuit's timestamp_dirty then).
            joined = self._await(rendezvous, RelayCommand.RENDEZVOUS2, None)
            acked = self._await(intro, RelayCommand.INTRODUCE_ACK, introduce_ack_timeout(self._cbt()))
            intro.circuit.send_relay(RelayCommand.INTRODUCE1, 0, head + handshake.encrypt_introduce(head, plaintext))
            self.manager.set_hs_state(intro, HSCI_INTRO_SENT)
            try:
                ack = decode_introduce_ack_body((yield acked))
            except defer.TimeoutError:
                # C_INTRODUCE_ACK_WAIT past c_intro_cutoff: the one failure that counts towards F7. tor's
                # circuit_expire_building closes the circuit with reason TIMEOUT, which no padding machine
                # holds open (circpad_marked_circuit_for_padding).
                self._close(intro, "no INTRODUCE_ACK in time", DestroyReason.TIMEOUT)
                raise _IntroductionFailed("no INTRODUCE_ACK in time", IntroFailure.TIMEOUT) from None
            except CircuitError as exc:
                # C_INTRODUCE_ACK_WAIT closed otherwise: unreachable.
                raise _IntroductionFailed(f"introduction circuit failed: {exc}", IntroFailure.UNREACHABLE) from None
            except CellParseError as exc:
                raise _IntroductionFailed(f"malformed INTRODUCE_ACK: {exc}", IntroFailure.GENERIC) from None
            if ack.status != IntroduceAckStatus.SUCCESS:
                # handle_introduce_ack_bad
                raise _IntroductionFailed(f"INTRODUCE_ACK status {ack.status}", IntroFailure.GENERIC)
            # tor handle_introduce_ack_success: the rendezvous circuit first, then the introduction circuit.
            self.manager.set_hs_state(rendezvous, HSCR_ESTABLISHED_WAITING)
            self.manager.set_hs_state(intro, HSCI_DONE)
            joined.addTimeout(rendezvous2_timeout(self._cbt()), self.reactor)
        except _IntroductionFailed as failure:
            if joined is not None:
                joined.addErrback(lambda _: None)
                joined.cancel()
            failure.rendezvous = (rendezvous, cookie)
            raise
        finally:
            self._close(intro, "introduction done")
        try:
            keys = handshake.complete(decode_rendezvous2_body((yield joined)))
        except (defer.TimeoutError, CircuitError, CellParseError, HandshakeError) as exc:
            # circuit_expire_building closes C_REND_READY_INTRO_ACKED past c_rend_ready_cutoff with reason
            # TIMEOUT; a bad RENDEZVOUS2 closes it too (handle_rendezvous2). The introduction point is not
            # blamed (hs_client_circuit_cleanup_on_free notes nothing for a rendezvous circuit).
            timed_out = isinstance(exc, defer.TimeoutError)
            self._close(rendezvous, "rendezvous failed", DestroyReason.TIMEOUT if timed_out else DestroyReason.FINISHED)
            raise _RendezvousFailed(f"rendezvous failed: {'no RENDEZVOUS2 in time' if timed_out else exc}") from None
        # The service set up congestion control when INTRODUCE1 asked for it (RENDEZVOUS2 does not say so).
        controller = VegasController(*congestion) if congestion is not None else None
        rendezvous.circuit.add_virtual_hop(Tor1Hop.for_onion_service(keys.df, keys.db, keys.kf, keys.kb), controller)
        if controller is not None:
            log.info("Circuit %d: congestion control (Vegas) with %s.onion, sendme_inc %d.", rendezvous.number,
                     address.label, controller.sendme_inc)
        else:
            log.info("Circuit %d: fixed windows with %s.onion.", rendezvous.number, address.label)
        self.manager.set_hs_state(rendezvous, HSCR_JOINED)
        return rendezvous

    # ------------------------------------------------------------------------------ circuit messages

    def _cbt(self) -> float:
        """The circuit build timeout now (learned, or CircuitBuildTimeout, or cbtinitialtimeout)."""
        return self.manager.build_times.timeout

    def _await(self, managed: ManagedCircuit, command: int, timeout: float | None) -> defer.Deferred:
        """A Deferred firing with the body of the next `command` from `managed`'s last hop; it fails with
        defer.TimeoutError after `timeout` (None: the caller adds one later), or with the CircuitError that
        closed the circuit."""
        key = (managed.number, command)
        waiter: defer.Deferred = defer.Deferred()
        self._awaited[key] = waiter

        def forget(result):
            if self._awaited.get(key) is waiter:
                del self._awaited[key]
            return result

        waiter.addBoth(forget)
        if timeout is not None:
            waiter.addTimeout(timeout, self.reactor)
        return waiter

    def onion_service_message(self, managed: ManagedCircuit, command: int, data: bytes) -> None:
        """OnionServiceCircuitUser: a message from the last hop of a circuit this client launched."""
        waiter = self._awaited.pop((managed.number, command), None)
        if waiter is None:
            log.info("circuit %d: unexpected %s; closing it", managed.number, RelayCommand(command).name)
            self._close(managed, "unexpected onion-service message", DestroyReason.PROTOCOL)
            return
        waiter.callback(bytes(data))

    def _manager_event(self, event: ManagerEvent) -> None:
        if isinstance(event, CircuitClosed) and event.purpose.is_onion_service:
            number = event.circuit.number
            for key in [key for key in self._awaited if key[0] == number]:
                self._awaited.pop(key).errback(event.circuit.error or CircuitError(f"circuit {number} closed"))
            self._connections = [connection for connection in self._connections
                                 if connection.rendezvous is not event.circuit or connection.running]

    @staticmethod
    def _close(managed: ManagedCircuit, why: str, reason: int = DestroyReason.FINISHED) -> None:
        if managed.circuit is not None and managed.circuit.is_open:
            managed.circuit.close(reason, why)
        else:
            managed.usable = False
            managed.close_requested = True
