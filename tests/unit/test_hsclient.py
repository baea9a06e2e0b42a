"""The onion-service client's pure helpers, on a descriptor the private network's C tor service published
(tests/unit/data/onion_service): the relay an introduction point names, and the descriptor ID of a fetch;
which streams a rendezvous connection takes (the ports' isolation flags, as tor's circuit_is_acceptable); the
waits, as tor's."""

from __future__ import annotations

import base64
import dataclasses
import random

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from oppy.cell.commands import EndReason
from oppy.cell.relay import LinkSpecifierType
from oppy.circuit.isolation import ClientProtocol, IsolationValues, StreamIsolation, isolation_flags
from oppy.circuit.congestion import CongestionParams
from oppy.circuit.manager import CircuitManager
from oppy.directory.client import DirectoryStatusError
from oppy.hs.address import parse_onion_address
from oppy.hs.cache import IntroFailure
from oppy.hs.descriptor import SecondLayer, decode_descriptor
from oppy.hs.errors import InvalidDescriptor
from oppy.hs.hashring import fetch_ring
from oppy.hs.keys import blinded_public_key
from oppy.hs.timeperiod import consensus_time_period
from oppy.hsclient.client import (
    DIR_CONNECTION_MAX_STALL,
    PENDING_STREAMS_RETRY_INTERVAL,
    TESTING_DIR_CONNECTION_MAX_STALL,
    OnionServiceClient,
    ServiceConnection,
    descriptor_id,
    introduce_ack_timeout,
    relay_target_for_introduction_point,
    check_flow_control,
    rendezvous2_timeout,
    rendezvous_congestion_control,
    rendezvous_established_timeout,
    _RendezvousFailed,
)
from oppy.path.chooser import PathChooser
from oppy.path.selection import NoPathError
from oppy.socks.messages import Socks5Reply
from tests.unit.test_hs_descriptor import CAPTURE, DATA, NOW, PERIOD, RELAY_FINGERPRINTS
from tests.unit.test_hs_hashring import _hsfetch_capture


def captured_descriptor():
    identity = parse_onion_address(CAPTURE["plain"]["address"]).identity_key
    data = (DATA / CAPTURE["plain"]["descriptor"]).read_bytes()
    return decode_descriptor(data, identity, blinded_public_key(identity, PERIOD), NOW)


def captured_introduction_points():
    return captured_descriptor().introduction_points


def test_an_introduction_point_is_extended_to_by_its_link_specifiers_and_ntor_key():
    points = captured_introduction_points()
    assert points
    for point in points:
        target = relay_target_for_introduction_point(point)
        specifiers = {spec.spec_type: spec.data for spec in point.link_specifiers}
        assert target.fingerprint in RELAY_FINGERPRINTS
        assert target.rsa_id == specifiers[LinkSpecifierType.LEGACY_ID]
        assert target.ed25519_id == specifiers[LinkSpecifierType.ED25519_ID]
        assert (target.address, target.ntor_onion_key) == ("127.0.0.1", point.onion_key)
        assert 19000 <= target.or_port < 19100  # the private network's ORPorts


def test_the_descriptor_id_is_the_blinded_key_in_unpadded_base64():
    blinded = bytes(range(32))
    ident = descriptor_id(blinded)
    assert "=" not in ident and len(ident) == 43
    assert base64.b64decode(ident + "=") == blinded


# ------------------------------------------------------------------------------------------------ isolation

SERVICE = parse_onion_address("pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion")
OTHER_SERVICE = parse_onion_address("sp3k262uwy4r2k3ycr5awluarykdpag6a7y33jxop4cs2lu5uz5sseqd.onion")
DEFAULT = ("IsolateSOCKSAuth", "IsolateClientAddr")
DEST_PORT = DEFAULT + ("IsolateDestPort",)
NO_SOCKS_AUTH = ("IsolateClientAddr",)


def onion_stream(port=80, flags=DEFAULT, credentials=(b"", b""), epoch=0,
                 client="127.0.0.1", group=-4, address=SERVICE):
    isolation = StreamIsolation(isolation_flags(frozenset(flags)), group, ClientProtocol.SOCKS5, client,
                                *credentials)
    return IsolationValues.of(isolation, address.hostname, port, epoch)


def connection_with(*streams):
    connection = ServiceConnection(SERVICE, running=True)
    for stream in streams:
        connection.isolation.add(stream, attached=True)
    return connection


@pytest.mark.parametrize(("first", "second", "shared"), [
    # The default flags: same credentials, client, session group and epoch share a rendezvous circuit,
    # whatever the port; other credentials, a NEWNYM, another client address or port's group do not.
    (onion_stream(), onion_stream(port=443), True),
    (onion_stream(), onion_stream(credentials=(b"alice", b"x")), False),
    (onion_stream(), onion_stream(epoch=1), False),
    (onion_stream(), onion_stream(client="127.0.0.2"), False),
    (onion_stream(), onion_stream(group=-5), False),
    # IsolateDestPort: a stream to the service's other port gets another rendezvous circuit.
    (onion_stream(flags=DEST_PORT), onion_stream(port=443, flags=DEST_PORT), False),
    (onion_stream(flags=DEST_PORT), onion_stream(flags=DEST_PORT), True),
    # NoIsolateSOCKSAuth: credentials no longer part them.
    (onion_stream(flags=NO_SOCKS_AUTH), onion_stream(credentials=(b"alice", b"x"), flags=NO_SOCKS_AUTH), True),
])
def test_a_rendezvous_connection_takes_the_streams_its_isolation_allows(first, second, shared):
    connection = connection_with(first)
    assert connection.takes(SERVICE.label, first)
    assert connection.takes(SERVICE.label, second) is shared


def test_a_rendezvous_connection_serves_one_service_while_it_connects_or_is_joined():
    first = onion_stream()
    connection = connection_with(first)
    assert not connection.takes(OTHER_SERVICE.label, onion_stream(address=OTHER_SERVICE))
    connection.running = False  # failed, or its rendezvous circuit closed: no new stream waits for it
    assert not connection.ready and not connection.takes(SERVICE.label, first)


def test_onion_service_waits_scale_the_circuit_build_timeout_as_tors_circuit_expire_building():
    # tor's initial CBT (cbtinitialtimeout, 60 s): RENDEZVOUS_ESTABLISHED within 60 s, INTRODUCE_ACK within
    # 60 * 14/6 + 1 = 141 s, RENDEZVOUS2 within 60 * 3 + 1 = 181 s after the ack.
    assert rendezvous_established_timeout(60.0) == 60.0
    assert introduce_ack_timeout(60.0) == 141.0
    assert rendezvous2_timeout(60.0) == 181.0
    # A learned CBT of 1.5 s.
    assert introduce_ack_timeout(1.5) == 4.5
    assert rendezvous2_timeout(1.5) == 5.5


def test_an_hsdir_may_stall_as_long_as_tors_testing_dir_connection_max_stall():
    client = OnionServiceClient(CircuitManager(links=None, paths=None, reactor=Clock()), testing_network=True)
    assert client.directory.timeout == TESTING_DIR_CONNECTION_MAX_STALL == 30.0
    client = OnionServiceClient(CircuitManager(links=None, paths=None, reactor=Clock()))
    assert client.directory.timeout == DIR_CONNECTION_MAX_STALL == 300.0


# ------------------------------------------------------------------------------------- congestion control

def with_flow_control(descriptor, flow_control, single_onion_service=False):
    second: SecondLayer = dataclasses.replace(descriptor.second_layer, flow_control=flow_control,
                                              single_onion_service=single_onion_service)
    return dataclasses.replace(descriptor, second_layer=second)


def test_the_captured_service_is_asked_for_congestion_control_with_its_sendme_inc():
    # The C tor 0.4.9 service's descriptor says "flow-control 1-2 31".
    descriptor = captured_descriptor()
    params = CongestionParams()
    onion = params.for_onion_service({})
    check_flow_control(descriptor, params)
    assert rendezvous_congestion_control(descriptor, params, onion) == (onion, 31)
    # A single onion service's rendezvous circuit takes the exit thresholds (tor CC_PATH_ONION_SOS).
    single = with_flow_control(descriptor, ("1-2", 31), single_onion_service=True)
    assert rendezvous_congestion_control(single, params, onion) == (params, 31)


@pytest.mark.parametrize("flow_control", [None, ("1", 31), ("3-5", 31), ("1-x", 31)])
def test_no_request_without_flowctrl_2_in_the_descriptor(flow_control):
    descriptor = with_flow_control(captured_descriptor(), flow_control)
    params = CongestionParams()
    assert rendezvous_congestion_control(descriptor, params, params.for_onion_service({})) is None


def test_no_request_when_the_consensus_has_congestion_control_off():
    params = CongestionParams.from_consensus({"cc_alg": 0})
    assert rendezvous_congestion_control(captured_descriptor(), params, params.for_onion_service({})) is None


@pytest.mark.parametrize("consensus_sendme_inc, valid", [(30, True), (32, True), (29, False), (33, False)])
def test_a_sendme_inc_more_than_one_from_the_consensus_s_makes_the_descriptor_invalid(consensus_sendme_inc, valid):
    params = CongestionParams.from_consensus({"cc_sendme_inc": consensus_sendme_inc})
    descriptor = captured_descriptor()
    if valid:
        check_flow_control(descriptor, params)
    else:
        with pytest.raises(InvalidDescriptor, match="sendme_inc 31"):
            check_flow_control(descriptor, params)


# ------------------------------------------------------------------------------------------ F7 or F2

@pytest.mark.parametrize("failures, usable, timed_out", [
    ([], 3, False),
    (["timeout", "timeout", "timeout"], 0, True),                     # F7
    (["timeout", "timeout", "generic"], 0, False),                    # F2: one was refused
    (["timeout+generic", "timeout", "timeout"], 0, True),             # a timeout stays a timeout
    (["timeout", "timeout", "unreachable"], 1, False),                # still usable: tried again
    (["timeout", "timeout", "unreachable*5"], 0, False),              # tor MAX_INTRO_POINT_REACHABILITY_FAILURES
])
def test_f7_only_when_every_introduction_point_of_the_descriptor_timed_out(failures, usable, timed_out):
    """tor intro_points_all_timed_out over the failure cache, for every point of the descriptor."""
    client = OnionServiceClient(CircuitManager(links=None, paths=None, reactor=Clock()))
    descriptor = captured_descriptor()
    address = parse_onion_address(CAPTURE["plain"]["address"])
    for point, noted in zip(descriptor.introduction_points, failures):
        for kind in noted.split("+"):
            kind, _, times = kind.partition("*")
            for _ in range(int(times or 1)):
                client.cache.note_intro_failure(address.identity_key, point.auth_key, IntroFailure(kind))
    assert len(client._usable_points(address, descriptor)) == usable
    assert client._all_timed_out(address, descriptor) is timed_out


# ------------------------------------------------------------------------------- HSDir requests (tor hs_pick_hsdir)

HSFETCH_ADDRESS = parse_onion_address("3eqe6bz7i7fffkn55didvjh7szwyhpkcwnbwujeo4alm5xqv62nbssyd.onion")


def manager_on(netdir, clock):
    paths = PathChooser()
    paths.set_netdir(netdir)
    return CircuitManager(links=None, paths=paths, reactor=clock)


def fetching_client(netdir, answers=None):
    """A client on the captured network whose HSDir fetches are answered by `answers` (the HSDir -> a
    Deferred; default 404 at once) instead of a circuit, with one stream waiting for HSFETCH_ADDRESS; the
    HSDirs asked, in order, and the Clock."""
    clock = Clock()
    client = OnionServiceClient(manager_on(netdir, clock), testing_network=True,
                                wallclock=lambda: NOW + clock.seconds(), rng=random.Random(1))
    asked = []

    def fetch_from(hsdir, ident):
        asked.append(hsdir)
        if answers is not None:
            return answers(hsdir)
        return defer.fail(DirectoryStatusError("404 Not found", 404))

    client._fetch_from = fetch_from
    connection = ServiceConnection(HSFETCH_ADDRESS, waiting=["a stream"], running=True)
    client._connections.append(connection)
    return client, connection, asked, clock


def failure_of(deferred):
    failures = []
    deferred.addErrback(failures.append)
    assert failures, "the Deferred did not fail"
    return failures[0].value


def test_each_responsible_hsdir_is_asked_once_then_f0_and_the_requests_are_forgotten():
    _, netdir = _hsfetch_capture("hsfetch.json")
    client, connection, asked, _ = fetching_client(netdir)
    responsible = fetch_ring(netdir, testing_network=True).responsible(
        blinded_public_key(HSFETCH_ADDRESS.identity_key, consensus_time_period(netdir.consensus, True)))
    error = failure_of(client._descriptor(connection, netdir))
    assert sorted(asked) == sorted(responsible) and len(responsible) > 1
    assert (error.reason, error.code) == (EndReason.RESOLVEFAILED, Socks5Reply.ONION_DESCRIPTOR_NOT_FOUND)
    # tor hs_client_refetch_hsdesc: HS_CLIENT_FETCH_NO_HSDIRS purges the service's requests, so the next
    # stream asks them all again.
    ident = client._descriptor_id(HSFETCH_ADDRESS, netdir)
    assert all(client.hsdir_requests.last_request(hsdir, ident) is None for hsdir in responsible)
    failure_of(client._descriptor(connection, netdir))
    assert len(asked) == 2 * len(responsible)


def test_a_fetch_skips_the_hsdirs_asked_within_the_requery_period():
    _, netdir = _hsfetch_capture("hsfetch.json")
    client, connection, asked, clock = fetching_client(netdir)
    ident = client._descriptor_id(HSFETCH_ADDRESS, netdir)
    responsible = fetch_ring(netdir, testing_network=True).responsible(
        blinded_public_key(HSFETCH_ADDRESS.identity_key, consensus_time_period(netdir.consensus, True)))
    lately = client.hsdir_requests.pick(responsible, ident, NOW, random.Random(0))
    clock.advance(client.hsdir_requests.requery_period)   # still "lately" (tor: last + period >= now)
    failure_of(client._descriptor(connection, netdir))
    assert lately not in asked and sorted(asked + [lately]) == sorted(responsible)


def test_newnym_forgets_the_hsdir_requests():
    _, netdir = _hsfetch_capture("hsfetch.json")
    client, _, _, _ = fetching_client(netdir)
    ident = client._descriptor_id(HSFETCH_ADDRESS, netdir)
    hsdir = fetch_ring(netdir, testing_network=True).relays[0]
    client.hsdir_requests.pick([hsdir], ident, NOW, random.Random(0))
    client.purge_state()
    assert client.hsdir_requests.last_request(hsdir, ident) is None


def test_connections_to_a_service_share_the_fetch_under_way():
    """tor can_client_refetch_desc: HS_CLIENT_FETCH_PENDING, no second fetch for the service; every waiting
    stream gets its outcome."""
    _, netdir = _hsfetch_capture("hsfetch.json")
    pending = []
    client, connection, asked, _ = fetching_client(netdir, lambda hsdir: pending.append(defer.Deferred())
                                                   or pending[-1])
    other = ServiceConnection(HSFETCH_ADDRESS, waiting=["another stream"], running=True)
    client._connections.append(other)
    first, second = client._descriptor(connection, netdir), client._descriptor(other, netdir)
    assert len(asked) == 1
    while pending:
        pending.pop().errback(DirectoryStatusError("404 Not found", 404))
    assert failure_of(first).code == failure_of(second).code == Socks5Reply.ONION_DESCRIPTOR_NOT_FOUND
    assert len(asked) == len(set(asked))


# ------------------------------------------------------------------------------- rendezvous lost: try again

def reaching_client(introduce_answers, fetched=None):
    """A client with the captured descriptor, as just fetched (when the Deferred `fetched` fires, if given),
    whose introductions answer, in turn, from `introduce_answers` (an exception or the joined circuit); the
    calls' `established` arguments and the Clock."""
    _, netdir = _hsfetch_capture("hsfetch.json")
    clock = Clock()
    client = OnionServiceClient(manager_on(netdir, clock), testing_network=True, wallclock=lambda: NOW)
    address = parse_onion_address(CAPTURE["plain"]["address"])
    descriptor = captured_descriptor()
    fetched = fetched if fetched is not None else defer.succeed(None)
    client._descriptor = lambda connection, netdir, cached=True: fetched.addCallback(lambda _: (descriptor, True))
    calls = []

    def introduce(connection, point, subcredential, netdir, established, congestion):
        calls.append(established)
        answer = introduce_answers.pop(0)
        return defer.fail(answer) if isinstance(answer, Exception) else defer.succeed(answer)

    client._introduce = introduce
    connection = ServiceConnection(address, waiting=["a stream"], running=True)
    client._connections.append(connection)
    return client, connection, calls, clock, netdir


def test_a_lost_rendezvous_is_tried_again_with_a_new_circuit_while_a_stream_waits():
    """tor: the streams stay pending after INTRODUCE_ACK ("pending-join circ ... Stalling"); once the
    rendezvous circuit is gone (c_rend_ready_cutoff), the next pass launches a new one and introduces again."""
    client, connection, calls, clock, netdir = reaching_client([_RendezvousFailed("no RENDEZVOUS2 in time"),
                                                                "joined"])
    ident = client._descriptor_id(connection.address, netdir)
    client.hsdir_requests.pick(fetch_ring(netdir, testing_network=True).relays, ident, NOW, random.Random(0))
    reached = client._reach(connection)
    assert calls == [None] and not reached.called
    clock.advance(PENDING_STREAMS_RETRY_INTERVAL)
    assert calls == [None, None]          # a new rendezvous circuit, not the lost one
    assert reached.result == "joined"
    # tor note_connection_attempt_succeeded: the service's HSDir requests are forgotten.
    assert client.hsdir_requests.pick(fetch_ring(netdir, testing_network=True).relays, ident, NOW,
                                      random.Random(0)) is not None
    # The introduction point that acknowledged is not blamed.
    assert len(client._usable_points(connection.address, captured_descriptor())) == 3


def test_the_attempt_stops_once_no_stream_waits_and_never_answers_f3():
    client, connection, calls, clock, _ = reaching_client([_RendezvousFailed("no RENDEZVOUS2 in time")])
    reached = client._reach(connection)
    connection.waiting.clear()            # SocksTimeout ended the stream (END TIMEOUT, "TTL expired")
    clock.advance(PENDING_STREAMS_RETRY_INTERVAL)
    error = failure_of(reached)
    assert (error.reason, error.code) == (EndReason.TIMEOUT, 0) and calls == [None]


def test_no_path_for_a_rendezvous_circuit_leaves_the_streams_waiting_not_f3():
    """tor circuit_get_open_circ_or_launch: a circuit that cannot be launched is "delaying", tried again on
    each pass over the pending streams until SocksTimeout."""
    client, connection, _, clock, _ = reaching_client([])
    tries = []

    def no_path(purpose, target=None):
        tries.append(purpose)
        raise NoPathError("every relay excluded")

    client.manager.paths.choose_onion_service_path = no_path
    waiting = client._rendezvous_circuit(connection)
    assert not waiting.called and len(tries) == 1
    clock.advance(PENDING_STREAMS_RETRY_INTERVAL)
    assert not waiting.called and len(tries) == 2
    connection.waiting.clear()            # SocksTimeout ended the stream (END TIMEOUT, "TTL expired")
    clock.advance(PENDING_STREAMS_RETRY_INTERVAL)
    error = failure_of(waiting)
    assert (error.reason, error.code) == (EndReason.TIMEOUT, 0) and len(tries) == 2


def test_the_streams_count_socks_timeout_from_the_descriptor_s_arrival():
    """tor client_desc_has_arrived -> mark_conn_as_waiting_for_circuit resets the stream's timestamp_created."""
    fetched = defer.Deferred()
    client, connection, calls, clock, _ = reaching_client(["joined"], fetched)
    expired = []
    connection.deadlines[1] = clock.callLater(client.manager.unattached_timeout, expired.append, 1)
    client._reach(connection)
    clock.advance(50)
    fetched.callback(None)
    assert connection.deadlines[1].getTime() == 50 + client.manager.unattached_timeout
