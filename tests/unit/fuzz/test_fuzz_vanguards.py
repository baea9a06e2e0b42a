"""Fuzz target for the persisted vanguards-lite state, which is read back from a file on disk.

Any JSON value, valid states, and valid states with one value replaced by any JSON value or one key
added must either load or raise VanguardsStateError; what loads must write back the same and survive a
maintenance on a network (which drops what it does not list and brings far expiries back).
"""

from __future__ import annotations

import random

from hypothesis import given, strategies as st

from oppy.path.selection import PathSelector
from oppy.path.vanguards import VanguardsLite, VanguardsStateError

from tests.unit.fuzz.budget import FUZZ
from tests.unit.test_path_selection import make_consensus, make_microdesc, make_relay

NOW = 1_700_000_000.0
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
#: Numbers that a float() or math.isfinite() cannot take, or only just.
EXTREME = st.sampled_from([10**400, -(10**400), 2**1024, 10**5000, 1e308, -1e308, -0.0, float("nan"),
                           float("-inf"), "F" * 100_000])
ENTRY = st.fixed_dictionaries({"fingerprint": st.integers(1, 40).map(lambda i: f"{i:040X}"),
                               "expires_at": st.floats(NOW - 1e7, NOW + 1e9) | st.integers(0, 2**62)})
STATE = st.fixed_dictionaries({"version": st.just(1),
                               "layer2": st.lists(ENTRY, max_size=6, unique_by=lambda entry: entry["fingerprint"])})


@st.composite
def mutated_states(draw) -> dict:
    """A valid state with one value (the version, the list, an entry or one of its fields) replaced,
    or one key added."""
    state = draw(STATE)
    entries = state["layer2"]
    place = draw(st.sampled_from(["version", "layer2", "entry", "field", "key"] if entries else ["version", "key"]))
    value = draw(st.one_of(EXTREME, JSON))
    if place in ("version", "layer2"):
        state[place] = value
    elif place == "entry":
        entries[draw(st.integers(0, len(entries) - 1))] = value
    elif place == "field":
        entries[draw(st.integers(0, len(entries) - 1))][draw(st.sampled_from(["fingerprint", "expires_at"]))] = value
    else:
        target = draw(st.sampled_from([state] + entries))
        target[draw(st.text(max_size=8))] = value
    return state

def network() -> PathSelector:
    relays = [make_relay(i, "Running Valid Fast Stable") for i in range(1, 4)]
    return PathSelector(make_consensus(relays), {f"md{i}": make_microdesc(i) for i in range(1, 4)})


SELECTOR = network()


@FUZZ
@given(st.one_of(JSON, STATE, mutated_states()))
def test_any_state_loads_or_raises_vanguards_state_error(state):
    try:
        vanguards = VanguardsLite.from_dict(state, rng=random.Random(1))
    except VanguardsStateError:
        return
    written = vanguards.to_dict()
    assert VanguardsLite.from_dict(written).to_dict() == written
    vanguards.update_from_consensus(SELECTOR, NOW)
    assert len(vanguards.guards) >= 3
    assert all(guard.expires_at <= NOW + 12 * 86400 for guard in vanguards.guards)
