"""Building circuits with Twisted: get a link to the first hop, run the sans-IO build, time it out."""

from __future__ import annotations

import logging

from twisted.internet import defer, reactor as default_reactor

from oppy.cell.commands import DestroyReason
from oppy.circuit.circuit import Circuit, CircuitError
from oppy.link.relay import RelayTarget

log = logging.getLogger(__name__)

# path-spec "Learning when to give up on circuit construction": C tor starts at 60 s before it has learned
# an adaptive timeout; oppy keeps a fixed, configurable one.
DEFAULT_CIRCUIT_BUILD_TIMEOUT = 60.0


class CircuitBuildError(CircuitError):
    """A circuit could not be built; the message names the hop and the cause."""


def build_circuit(links, path: list[RelayTarget], timeout: float = DEFAULT_CIRCUIT_BUILD_TIMEOUT,
                  reactor=None, on_extended=None) -> defer.Deferred:
    """A Deferred that fires with an open `Circuit` through `path`, or fails with CircuitBuildError."""
    reactor = reactor or default_reactor
    result: defer.Deferred = defer.Deferred()
    guard = path[0]

    def link_failed(failure):
        result.errback(CircuitBuildError(f"hop 1 ({guard.describe()}): {failure.getErrorMessage()}", hop=0))

    def link_opened(channel):
        try:
            circuit = Circuit(channel, path)
        except Exception as exc:  # no free circuit id, a hop without an ntor key
            result.errback(CircuitBuildError(str(exc)))
            return

        def timed_out():
            hop = circuit.hops_built
            circuit.close(DestroyReason.TIMEOUT, f"timed out after {timeout:.0f}s waiting for hop {hop + 1} "
                                                 f"({path[hop].describe()})")

        timer = reactor.callLater(timeout, timed_out)

        def built(circuit):
            timer.cancel()
            circuit.on_closed = lambda circuit, error: None
            result.callback(circuit)

        def closed(circuit, error):
            if timer.active():
                timer.cancel()
            if not result.called:
                result.errback(CircuitBuildError(str(error), error.reason, error.remote, error.hop))

        circuit.on_built = built
        circuit.on_closed = closed
        if on_extended is not None:
            circuit.on_extended = on_extended
        try:
            circuit.start()
        except CircuitError as exc:
            circuit.close(DestroyReason.INTERNAL, str(exc))

    links.get(guard).addCallbacks(link_opened, link_failed)
    return result
