"""Building circuits with Twisted: get a link to the first hop, run the sans-IO build, time it out."""

from __future__ import annotations

import logging

from twisted.internet import defer, reactor as default_reactor

from oppy.cell.commands import DestroyReason
from oppy.circuit.build_timeout import BuildAttempt, TimeoutAction
from oppy.circuit.circuit import Circuit, CircuitError, CircuitOwner, CircuitState
from oppy.circuit.congestion import CongestionParams
from oppy.netdoc.relay import RelayTarget

log = logging.getLogger(__name__)

# path-spec 2.4.6 cbtinitialtimeout: the timeout of a build that no learned timeout governs.
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

    def onion_service_message(self, circuit: Circuit, command: int, data: bytes) -> None:
        pass


class _CircuitBuild:
    """The circuit's owner while it is built: the build's Deferred fires with the circuit, or fails when the
    circuit closes before it is built or times out; every other event goes on to `owner`.

    Without an `attempt` the circuit is closed at `timeout`. With one (the learned timeouts, path-spec 2.4.4)
    the attempt decides at its timeout: close the circuit, fail the build but leave the circuit building
    until the close timeout to measure its build time (its owner hears nothing more of it), or keep waiting
    for it until then because no circuit is open. Cancelling the Deferred closes the circuit."""

    def __init__(self, owner: CircuitOwner, reactor, timeout: float, attempt: BuildAttempt | None) -> None:
        self.owner = owner
        self.reactor = reactor
        self.attempt = attempt
        self.timeout = timeout
        self.circuit: Circuit | None = None
        self.started = 0.0
        self.result: defer.Deferred = defer.Deferred(canceller=self._cancel)
        self._deadline = None
        #: Timed out for its owner, and building on only to be measured.
        self.measuring = False
        #: Built and handed to the owner; built again only when a controller extends it.
        self.delivered = False

    def start(self, circuit: Circuit) -> None:
        self.circuit = circuit
        self.started = self.reactor.seconds()
        if self.attempt is not None:
            self.attempt.begin()
            self.timeout = self.attempt.timeout
        self._deadline = self.reactor.callLater(self.timeout, self._timed_out)
        try:
            circuit.start()
        except CircuitError as exc:
            circuit.close(DestroyReason.INTERNAL, str(exc))

    def _waiting_for(self) -> str:
        hop = self.circuit.hops_built
        return f"hop {hop + 1} ({self.circuit.path[hop].describe()})"

    def _timed_out(self) -> None:
        self._deadline = None
        circuit, attempt = self.circuit, self.attempt
        action = TimeoutAction.CLOSE if attempt is None else attempt.timed_out(circuit.hops_built > 0)
        what = f"timed out after {_seconds(self.timeout)} waiting for {self._waiting_for()}"
        if action is TimeoutAction.CLOSE:
            circuit.close(DestroyReason.TIMEOUT, what)
            return
        remaining = self.started + attempt.close_timeout - self.reactor.seconds()
        self._deadline = self.reactor.callLater(max(0.0, remaining), self._close_timed_out)
        if action is TimeoutAction.MEASURE:
            log.info("circuit %s %s; building on until %s to measure it", circuit, what,
                     _seconds(attempt.close_timeout))
            self.measuring = True
            self.result.errback(CircuitBuildError(what, DestroyReason.TIMEOUT, hop=circuit.hops_built))

    def _close_timed_out(self) -> None:
        self._deadline = None
        self.attempt.close_timed_out(self.circuit.hops_built > 0)
        self.circuit.close(DestroyReason.TIMEOUT, f"timed out after {_seconds(self.attempt.close_timeout)} "
                                                  f"waiting for {self._waiting_for()}")

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _cancel(self, _: defer.Deferred) -> None:
        if self.circuit is not None:  # else still waiting for the link: the Deferred fails with CancelledError
            self.circuit.close(DestroyReason.TIMEOUT, f"cancelled waiting for {self._waiting_for()}")

    def circuit_extended(self, circuit: Circuit) -> None:
        if not self.measuring:
            self.owner.circuit_extended(circuit)

    def circuit_built(self, circuit: Circuit) -> None:
        if self.delivered:  # built again: a controller extended it (EXTENDCIRCUIT); not a build to time
            self.owner.circuit_built(circuit)
            return
        self._stop_deadline()
        if self.attempt is not None:
            self.attempt.built()
        if self.measuring:  # circuitbuild.c: a measurement circuit is closed once built
            circuit.close(DestroyReason.FINISHED, "measured")
            return
        self.result.callback(circuit)
        self.delivered = True
        if circuit.state is CircuitState.OPEN:  # whoever waited on the Deferred may have closed it
            self.owner.circuit_built(circuit)

    def circuit_closed(self, circuit: Circuit, error: CircuitError) -> None:
        self._stop_deadline()
        if self.measuring:
            return
        if self.result.called:
            self.owner.circuit_closed(circuit, error)
        else:
            self.result.errback(CircuitBuildError(str(error), error.reason, error.remote, error.hop))

    def onion_service_message(self, circuit: Circuit, command: int, data: bytes) -> None:
        if not self.measuring:
            self.owner.onion_service_message(circuit, command, data)


def _seconds(value: float) -> str:
    return f"{round(value, 3):g}s"


def build_circuit(links, path: list[RelayTarget], timeout: float = DEFAULT_CIRCUIT_BUILD_TIMEOUT,
                  reactor=None, owner: CircuitOwner | None = None,
                  attempt: BuildAttempt | None = None, congestion: CongestionParams | None = None
                  ) -> defer.Deferred:
    """A Deferred that fires with an open `Circuit` through `path`, or fails with CircuitBuildError.

    `owner` hears of the circuit: each hop extended, the build (after the Deferred fired) and, once built, its
    close. The timeout runs from the moment the link to the first hop is open: `timeout`, or the learned
    timeouts of `attempt` (`CircuitBuildTimes.start_build`, which is then told how the build went).
    Cancelling the Deferred gives the build up. `congestion`: the consensus's congestion-control parameters, for
    a circuit whose exit may be asked for congestion control (`Circuit`).
    """
    reactor = reactor or default_reactor
    build = _CircuitBuild(owner or _NoOwner(), reactor, timeout, attempt)
    guard = path[0]

    def link_failed(failure):
        if not build.result.called:
            build.result.errback(CircuitBuildError(f"hop 1 ({guard.describe()}): {failure.getErrorMessage()}",
                                                   hop=0))

    def link_opened(channel):
        if build.result.called:
            return  # cancelled while the link was opening
        hops = path
        if not guard.rsa_id and channel.identity is not None:
            # A bridge dialled without an identity (its Bridge line gives none): the circuit names the one
            # its link proved, as tor's circuit learns it (connection_or_client_learned_peer_id).
            hops = [guard._replace(rsa_id=channel.identity.rsa_id), *path[1:]]
        try:
            circuit = Circuit(channel, hops, build, congestion=congestion)
        except Exception as exc:  # no free circuit id
            build.result.errback(CircuitBuildError(str(exc)))
            return
        build.start(circuit)

    links.get(guard).addCallbacks(link_opened, link_failed)
    return build.result
