"""The circuit manager's stream rules, with a fake clock and no network."""

from __future__ import annotations

from twisted.internet.task import Clock

from oppy.cell.commands import EndReason
from oppy.circuit.manager import MAX_RESOLVE_FAILURES, CircuitManager, ManagedCircuit, CircuitPurpose
from oppy.link.relay import RelayTarget
from oppy.stream.stream import StreamEnd, StreamState
from tests.support.streams import CollectingSink


def relay(name: str) -> RelayTarget:
    return RelayTarget(name, name.encode().ljust(20, b"\0"), "127.0.0.1", 1, bytes(32))


def manager_without_network(clock: Clock) -> CircuitManager:
    def no_path(port, exclude=frozenset()):
        raise RuntimeError("no path in this test")
    return CircuitManager(links=None, choose_path=no_path, reactor=clock, clock=clock.seconds,
                          unattached_timeout=120)


def test_a_stream_no_controller_attaches_expires_after_socks_timeout():
    clock = Clock()
    manager = manager_without_network(clock)
    manager.attach_automatically = False
    sink = CollectingSink()
    managed = manager.open_stream(sink, "example.test", 80)
    assert managed.awaiting_controller and not managed.stream.ended
    clock.advance(119)
    assert not managed.stream.ended
    clock.advance(2)
    assert managed.stream.ended and managed.stream.state is StreamState.FAILED
    assert sink.end.reason == EndReason.TIMEOUT and sink.end.before_connected
    sink.connected.addErrback(lambda failure: failure.trap(StreamEnd))


def test_without_a_path_the_application_hears_noroute():
    clock = Clock()
    manager = manager_without_network(clock)
    sink = CollectingSink()
    managed = manager.open_stream(sink, "example.test", 80)
    assert managed.stream.ended
    assert sink.end.reason == EndReason.NOROUTE
    sink.connected.addErrback(lambda failure: failure.trap(StreamEnd))


def test_retry_rules_follow_tor():
    clock = Clock()
    manager = manager_without_network(clock)
    sink = CollectingSink()
    manager.attach_automatically = False
    managed = manager.open_stream(sink, "example.test", 80)
    circuit = ManagedCircuit(1, [relay("g"), relay("m"), relay("x")], CircuitPurpose.GENERAL, 0, 0)
    managed.managed_circuit = circuit

    def end(reason):
        return StreamEnd("test", reason, remote=True, before_connected=True)

    managed.attempts = 1
    # Not retriable: the exit connected and was refused by the destination.
    assert manager._retry(managed, end(EndReason.CONNECTREFUSED)) is False
    # Exit policy: the exit is not asked again for this stream.
    assert manager._retry(managed, end(EndReason.EXITPOLICY)) is True
    assert relay("x").rsa_id in managed.excluded_exits
    # Resolve failures: retried on other circuits up to MAX_RESOLVE_FAILURES, the circuit retired.
    for _ in range(MAX_RESOLVE_FAILURES - 1):
        assert manager._retry(managed, end(EndReason.RESOLVEFAILED)) is True
    assert circuit.usable is False
    assert manager._retry(managed, end(EndReason.RESOLVEFAILED)) is False
    assert managed.last_end_reason == EndReason.RESOLVEFAILED
