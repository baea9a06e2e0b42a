"""Building circuits with Twisted: get a link to the first hop, run the sans-IO build, time it out."""

from __future__ import annotations

import logging

from twisted.internet import defer, reactor as default_reactor

from oppy.cell.commands import DestroyReason
from oppy.circuit.circuit import Circuit, CircuitError, CircuitOwner, CircuitState
from oppy.netdoc.relay import RelayTarget

log = logging.getLogger(__name__)

# path-spec "Learning when to give up on circuit construction": C tor starts at 60 s before it has learned
# an adaptive timeout; oppy keeps a fixed, configurable one.
DEFAULT_CIRCUIT_BUILD_TIMEOUT = 60.0


class CircuitBuildError(CircuitError):
    """A circuit could not be built; the message names the hop and the cause."""


class _NoOwner:
    """The owner of a circuit nobody follows after its build (the Deferred is all its caller wants)."""

    def circuit_extended(self, circuit: Circuit) -> None:
        pass

    def circuit_built(self, circuit: Circuit) -> None:
        pass

    def circuit_closed(self, circuit: Circuit, error: CircuitError) -> None:
        pass


class _CircuitBuild:
    """The circuit's owner while it is built: the build's Deferred fires with the circuit, or fails when the
    circuit closes before it is built; every other event goes on to `owner`.

    The build times out through `Deferred.addTimeout`: cancelling the Deferred closes the circuit."""

    def __init__(self, owner: CircuitOwner, reactor, timeout: float) -> None:
        self.owner = owner
        self.reactor = reactor
        self.timeout = timeout
        self.circuit: Circuit | None = None
        self.started = 0.0
        self.result: defer.Deferred = defer.Deferred(canceller=self._cancel)

    def start(self, circuit: Circuit) -> None:
        self.circuit = circuit
        self.started = self.reactor.seconds()
        self.result.addTimeout(self.timeout, self.reactor)
        try:
            circuit.start()
        except CircuitError as exc:
            circuit.close(DestroyReason.INTERNAL, str(exc))

    def _cancel(self, _: defer.Deferred) -> None:
        circuit = self.circuit
        if circuit is None:
            return  # still waiting for the link: the Deferred fails with CancelledError
        hop = circuit.hops_built
        waited = self.reactor.seconds() - self.started
        what = f"timed out after {self.timeout:.0f}s" if waited >= self.timeout else "cancelled"
        circuit.close(DestroyReason.TIMEOUT, f"{what} waiting for hop {hop + 1} ({circuit.path[hop].describe()})")

    def circuit_extended(self, circuit: Circuit) -> None:
        self.owner.circuit_extended(circuit)

    def circuit_built(self, circuit: Circuit) -> None:
        self.result.callback(circuit)
        if circuit.state is CircuitState.OPEN:  # whoever waited on the Deferred may have closed it
            self.owner.circuit_built(circuit)

    def circuit_closed(self, circuit: Circuit, error: CircuitError) -> None:
        if self.result.called:
            self.owner.circuit_closed(circuit, error)
        else:
            self.result.errback(CircuitBuildError(str(error), error.reason, error.remote, error.hop))


def build_circuit(links, path: list[RelayTarget], timeout: float = DEFAULT_CIRCUIT_BUILD_TIMEOUT,
                  reactor=None, owner: CircuitOwner | None = None) -> defer.Deferred:
    """A Deferred that fires with an open `Circuit` through `path`, or fails with CircuitBuildError.

    `owner` hears of the circuit: each hop extended, the build (after the Deferred fired) and, once built, its
    close. The timeout runs from the moment the link to the first hop is open; cancelling the Deferred gives
    the build up.
    """
    reactor = reactor or default_reactor
    build = _CircuitBuild(owner or _NoOwner(), reactor, timeout)
    guard = path[0]

    def link_failed(failure):
        if not build.result.called:
            build.result.errback(CircuitBuildError(f"hop 1 ({guard.describe()}): {failure.getErrorMessage()}",
                                                   hop=0))

    def link_opened(channel):
        if build.result.called:
            return  # cancelled while the link was opening
        try:
            circuit = Circuit(channel, path, build)
        except Exception as exc:  # no free circuit id
            build.result.errback(CircuitBuildError(str(exc)))
            return
        build.start(circuit)

    links.get(guard).addCallbacks(link_opened, link_failed)
    return build.result
