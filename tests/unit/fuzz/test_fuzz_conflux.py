"""Fuzz targets for conflux (oppy/circuit/conflux.py): the exit's LINKED and SWITCH bodies and a scripted
stream of multiplexed cells and SWITCHes across two legs.

A body decodes to a value or ConfluxError; whatever order the legs' cells arrive in, the receiver delivers a
sequence number at most once, in order, or stops with ConfluxError.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from oppy.circuit.congestion import CongestionParams, VegasController
from oppy.circuit.conflux import ConfluxError, ConfluxLeg, ConfluxLink, ConfluxSet, decode_switch, encode_switch
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
