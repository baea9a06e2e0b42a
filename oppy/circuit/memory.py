"""MaxMemInQueues, sans IO: how many bytes oppy's queues hold, and which circuits go when that is too many.

C tor counts the bytes in its cell queues and connection buffers (relay.c `cell_queues_check_size`); once
they reach MaxMemInQueues it closes circuits, those whose queued data is oldest first, until the total is
back under 90% of the limit (circuitlist.c `circuits_handle_oom`). oppy queues data in its streams (the
send buffer waiting for the windows, the receive queue waiting for the local client) and in each link's
outgoing queue. The streams report their changes to a `MemoryTracker` once per read or write, never per
cell; the links' queues are added in when the streams' total grows. Closing a circuit frees what its
streams hold; a link's queue goes out to the relay on its own (as tor frees no OR connection's buffer).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Iterable, NamedTuple, Protocol

from oppy.cell.commands import DestroyReason, EndReason
from oppy.logs import notice

log = logging.getLogger(__name__)

ONE_MEGABYTE = 1 << 20
ONE_GIGABYTE = 1 << 30
# config.c compute_real_max_mem_in_queues: "MaxMemInQueues must be at least 256 MB for now".
MIN_MAX_MEM_IN_QUEUES = ONE_GIGABYTE // 4
# config.h MAX_DEFAULT_MEMORY_QUEUE_SIZE (64-bit platforms): the most tor chooses by itself.
MAX_DEFAULT_MEMORY_QUEUE_SIZE = 8 * ONE_GIGABYTE
# config.c RAM_IS_VERY_LARGE: with this much RAM or more tor takes 40% of it by default, below that 75%.
VERY_LARGE_RAM = 8 * ONE_GIGABYTE
# circuitlist.c FRACTION_OF_DATA_TO_RETAIN_ON_OOM: the OOM handler frees queues down to this share.
FRACTION_OF_DATA_TO_RETAIN_ON_OOM = 0.90


def max_mem_in_queues(configured: int, total_memory: int | None, testing_tor_network: bool = False
                      ) -> tuple[int, str | None]:
    """The limit for a configured MaxMemInQueues (config.c `compute_real_max_mem_in_queues`), and a warning
    to log when the value was raised.

    0 means "choose": 40% of the RAM from 8 GB on, else 75%, between 256 MB and 8 GB (8 GB when the RAM is
    unknown). tor raises a smaller value to 256 MB; oppy keeps it on a TestingTorNetwork, so that a test
    can reach the limit.
    """
    if configured == 0:
        if total_memory is None:
            return MAX_DEFAULT_MEMORY_QUEUE_SIZE, None
        share = total_memory // 5 * 2 if total_memory >= VERY_LARGE_RAM else total_memory // 4 * 3
        return min(max(share, MIN_MAX_MEM_IN_QUEUES), MAX_DEFAULT_MEMORY_QUEUE_SIZE), None
    if configured < MIN_MAX_MEM_IN_QUEUES and not testing_tor_network:
        return MIN_MAX_MEM_IN_QUEUES, ("MaxMemInQueues must be at least 256 MB for now. Ideally, have it as "
                                       "large as you can afford.")
    return configured, None


def total_system_memory() -> int | None:
    """The machine's RAM in bytes (None where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


class QueuedCircuit(Protocol):
    """What the tracker closes (`oppy.circuit.circuit.Circuit`): its streams by id."""

    circ_id: int
    streams: dict[int, "QueueHolder"]

    def close(self, reason: int = DestroyReason.FINISHED, message: str = "closed") -> None: ...


class QueueHolder(Protocol):
    """What the tracker needs of a stream (`oppy.stream.stream.Stream`)."""

    circuit: QueuedCircuit | None

    @property
    def queued_bytes(self) -> int: ...

    @property
    def oldest_queued(self) -> float | None: ...

    def abandon(self, reason: int, message: str) -> None: ...


class CircuitQueues(NamedTuple):
    """What one circuit's streams hold: `queued` bytes, the oldest of them queued at `oldest`."""

    circuit: QueuedCircuit
    queued: int
    oldest: float
    streams: tuple[QueueHolder, ...]


def choose_victims(holdings: Iterable[CircuitQueues], to_recover: int) -> list[CircuitQueues]:
    """The circuits to close to free `to_recover` bytes: the one whose oldest queued byte is oldest first
    (circuits_handle_oom sorts by the age of the oldest queued cell or buffer chunk), the one holding more
    first among equals, until enough is freed. A circuit holding nothing is never chosen: closing it would
    free nothing."""
    victims = []
    recovered = 0
    for holding in sorted((h for h in holdings if h.queued > 0), key=lambda h: (h.oldest, -h.queued)):
        if recovered >= to_recover:
            break
        victims.append(holding)
        recovered += holding.queued
    return victims


def _megabytes(count: int) -> str:
    return f"{count / ONE_MEGABYTE:.1f} MB"


class MemoryTracker:
    """The `QueueAccount` of every client stream: the bytes they hold in total, and the out-of-memory
    handler that runs when the total with the links' queues reaches `max_bytes`."""

    def __init__(self, max_bytes: int, *, clock: Callable[[], float] = time.monotonic,
                 queued_in_links: Callable[[], int] = lambda: 0) -> None:
        self.max_bytes = max_bytes
        self.clock = clock
        self.queued_in_links = queued_in_links
        self.queued_in_streams = 0
        self.circuits_closed = 0
        self._holding: set[QueueHolder] = set()  # the streams holding anything
        self._handling = False

    @property
    def low_threshold(self) -> int:
        """Where the out-of-memory handler stops (90% of the limit)."""
        return int(self.max_bytes * FRACTION_OF_DATA_TO_RETAIN_ON_OOM)

    def queued_changed(self, stream: QueueHolder, delta: int) -> None:
        self.queued_in_streams += delta
        if stream.queued_bytes:
            self._holding.add(stream)
        else:
            self._holding.discard(stream)
        if delta > 0 and not self._handling:
            total = self.queued_in_streams + self.queued_in_links()
            if total >= self.max_bytes:
                self._out_of_memory(total)

    def holdings(self) -> list[CircuitQueues]:
        """What each circuit and its streams hold (streams waiting for a circuit belong to none). A holder
        that is its own circuit (a conflux set's out-of-order queue) adds its bytes and, having no
        `oldest_queued`, no age, and is no stream of it."""
        by_circuit: dict[QueuedCircuit, list[QueueHolder]] = {}
        for holder in self._holding:
            if holder.circuit is not None:
                by_circuit.setdefault(holder.circuit, []).append(holder)
        now = self.clock()
        return [CircuitQueues(circuit, sum(holder.queued_bytes for holder in holders),
                              min((holder.oldest_queued for holder in holders
                                   if holder.oldest_queued is not None), default=now),
                              tuple(holder for holder in holders if holder is not circuit))
                for circuit, holders in by_circuit.items()]

    def _out_of_memory(self, total: int) -> None:
        """circuits_handle_oom: close the circuits with the oldest queued data until the total is back
        under the low threshold; one line for each."""
        self._handling = True
        try:
            now = self.clock()
            message = (f"out of memory for queues: {_megabytes(total)} queued reached MaxMemInQueues "
                       f"({_megabytes(self.max_bytes)})")
            for victim in choose_victims(self.holdings(), total - self.low_threshold):
                circuit = victim.circuit
                streams = list(circuit.streams.values())
                notice(log, "We're low on memory (%s queued, MaxMemInQueues is %s): closing circuit %#x, "
                       "which held %d bytes in %d of its %d stream(s), the oldest queued %.1f s ago",
                       _megabytes(total), _megabytes(self.max_bytes), circuit.circ_id, victim.queued,
                       len(victim.streams), len(streams), now - victim.oldest)
                # Every stream on it is dropped, also one holding nothing here: what the application's
                # connection still buffers goes too, and it learns of the cut.
                for stream in streams:
                    stream.abandon(EndReason.RESOURCELIMIT, message)
                circuit.close(DestroyReason.RESOURCELIMIT, message)
                self.circuits_closed += 1
        finally:
            self._handling = False
