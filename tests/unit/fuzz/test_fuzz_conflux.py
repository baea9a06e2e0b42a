"""Fuzz targets for conflux (oppy/circuit/conflux.py): the exit's LINKED and SWITCH bodies and a scripted
stream of multiplexed cells and SWITCHes across two legs.

A body decodes to a value or ConfluxError; whatever order the legs' cells arrive in, the receiver delivers a
sequence number at most once, in order, or stops with ConfluxError.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from oppy.circuit.congestion import CongestionParams, VegasController
from oppy.circuit.conflux import (
    OOO_CELL_COST,
    ConfluxError,
    ConfluxLeg,
    ConfluxLink,
    ConfluxSet,
    decode_switch,
    encode_switch,
)
from tests.unit.fuzz.budget import FUZZ
from tests.unit.fuzz.strategies import mutated

LINK_SEEDS = (ConfluxLink(bytes(32), 0, 0).encode(), ConfluxLink(bytes(range(32)), 5, 2**64 - 1, 1).encode())


@FUZZ
@given(body=st.one_of(st.binary(max_size=80), mutated(LINK_SEEDS)))
def test_link_bodies_decode_or_raise_conflux_error(body):
    try:
        link = ConfluxLink.decode(body)
    except ConfluxError:
        return
    assert ConfluxLink.decode(link.encode()) == link


@FUZZ
@given(body=st.binary(max_size=8))
def test_switch_bodies_decode_or_raise_conflux_error(body):
    try:
        assert 0 <= decode_switch(body) < 2**32
    except ConfluxError:
        pass


@FUZZ
@given(events=st.lists(st.tuples(st.sampled_from("ab"), st.one_of(st.none(), st.integers(0, 5))),
                       max_size=60))
def test_received_cells_come_out_in_order_once(events):
    conflux = ConfluxSet(bytes(32), max_ooo_bytes=20 * 514)
    legs = {name: ConfluxLeg(name, VegasController(CongestionParams(), 31), 1) for name in "ab"}
    for leg in legs.values():
        conflux.add_leg(leg)
    delivered: list[int] = []
    try:
        for name, switch in events:
            leg = legs[name]
            if switch is None:
                delivered.extend(conflux.cell_received(leg, leg.last_seq_recv + 1))
            else:
                conflux.switch_received(leg, encode_switch(switch))
    except ConfluxError:
        pass
    assert delivered == list(range(1, len(delivered) + 1))


def _feed_run(conflux: ConfluxSet, leg: ConfluxLeg, items: list[int], delivered: list[int]) -> None:
    """A run of cells as ConfluxTunnel.leg_cells takes it: numbered at once, the ones in sequence (and what
    they free) delivered, the rest queued as one item."""
    in_order = conflux.run_received(leg, len(items))
    if in_order:
        delivered += items[:in_order]
        for queued in conflux.dequeue():
            delivered += queued
    if in_order < len(items):
        conflux.enqueue(leg, len(items) - in_order, items[in_order:])


@FUZZ
@given(events=st.lists(st.tuples(st.sampled_from("ab"), st.one_of(st.none(), st.integers(0, 8)), st.integers(1, 6)),
                       max_size=40),
       limit=st.integers(1, 25))
def test_runs_of_cells_give_what_the_cells_give_one_at_a_time(events, limit):
    """Each event is a SWITCH (its relative number) or a run of cells on a leg, fed to one set as runs and to
    another cell by cell: the same numbers come out, the queues hold the same, and an error (a number seen
    twice or at or below the delivered, a full queue) comes on the same event, of the same kind."""
    worlds = []
    for _ in range(2):
        conflux = ConfluxSet(bytes(32), max_ooo_bytes=limit * OOO_CELL_COST)
        legs = {name: ConfluxLeg(name, VegasController(CongestionParams(), 31), 1) for name in "ab"}
        for leg in legs.values():
            conflux.add_leg(leg)
        worlds.append((conflux, legs))
    (runs, run_legs), (singles, single_legs) = worlds
    from_runs: list[int] = []
    from_singles: list[int] = []
    for name, switch, count in events:
        outcomes = []
        for conflux, legs, delivered, by_run in ((runs, run_legs, from_runs, True),
                                                 (singles, single_legs, from_singles, False)):
            leg = legs[name]
            try:
                if switch is not None:
                    conflux.switch_received(leg, encode_switch(switch))
                else:
                    items = list(range(leg.last_seq_recv + 1, leg.last_seq_recv + 1 + count))
                    if by_run:
                        _feed_run(conflux, leg, items, delivered)
                    else:
                        for item in items:
                            delivered += conflux.cell_received(leg, item)
            except ConfluxError as exc:
                outcomes.append(type(exc))
            else:
                outcomes.append(None)
        assert from_runs == from_singles
        assert outcomes[0] == outcomes[1]
        if outcomes[0] is not None:
            break
        assert runs.queued_bytes == singles.queued_bytes <= limit * OOO_CELL_COST
        assert runs.last_seq_delivered == singles.last_seq_delivered
    assert from_runs == list(range(1, len(from_runs) + 1))
