"""Bandwidth weights: how much each relay counts for each place in a circuit (sans IO).

A relay's weight for a position is its consensus bandwidth times the factor the consensus's
``bandwidth-weights`` line gives its class (guard-only, middle-only, exit-only, guard+exit), with the
BEGIN_DIR multipliers for directory caches (dir-spec "bandwidth-weights", path-spec 2.2; C tor
``compute_weighted_bandwidths``). They live with the documents because both the path choice and the
"enough directory information" rule (the share of weighted paths with microdescriptors) read them.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from oppy.netdoc.documents import Consensus, RelayRecord

__all__ = [
    "Position",
    "bandwidth_weight_table",
    "relay_weight",
    "DEFAULT_BANDWIDTH_WEIGHT_SCALE",
    "DEFAULT_BANDWIDTH_KB",
]

#: Default of the ``bwweightscale`` consensus parameter (dir-spec param-spec).
DEFAULT_BANDWIDTH_WEIGHT_SCALE = 10000
#: Bandwidth assumed for an entry without a ``w`` line: C tor uses 30000 bytes/s
#: (``compute_weighted_bandwidths``); consensus bandwidths are in kilobytes/s.
DEFAULT_BANDWIDTH_KB = 30


class Position(enum.Enum):
    """A place in a circuit, or a directory fetch; each has its weights (path-spec 2.2)."""

    GUARD = "guard"
    MIDDLE = "middle"
    EXIT = "exit"
    #: A relay to fetch directory documents from with BEGIN_DIR.
    DIRECTORY = "directory"


#: Weight names by position for the classes (guard-only, middle-only, exit-only,
#: guard+exit), and the BEGIN_DIR multipliers (dir-spec "bandwidth-weights").
_POSITION_WEIGHTS = {
    Position.GUARD: ("Wgg", "Wgm", None, "Wgd"),
    Position.MIDDLE: ("Wmg", "Wmm", "Wme", "Wmd"),
    Position.EXIT: ("Weg", "Wem", "Wee", "Wed"),
    Position.DIRECTORY: ("Wbg", "Wbm", "Wbe", "Wbd"),
}
_DIR_MULTIPLIERS = ("Wgb", "Wmb", "Web", "Wdb")


def bandwidth_weight_table(consensus: Consensus, position: Position) -> tuple[float, ...]:
    """The 8 factors (Wg, Wm, We, Wd, Wgb, Wmb, Web, Wdb) for a position, divided by the scale.

    A missing or negative weight makes every factor 1.0 (path-spec 2.2; C tor
    ``compute_weighted_bandwidths``).
    """
    scale = consensus.param("bwweightscale", DEFAULT_BANDWIDTH_WEIGHT_SCALE, 1, 2**31 - 1)
    weights = consensus.bandwidth_weights
    names = _POSITION_WEIGHTS[position]
    values: list[float] = []
    for name in names:
        values.append(0.0 if name is None else float(weights.get(name, -1)))
    if position is Position.DIRECTORY:
        values.extend([float(scale)] * 4)
    else:
        values.extend(float(weights.get(name, -1)) for name in _DIR_MULTIPLIERS)
    if any(value < 0 for value in values):
        return (1.0,) * 8
    return tuple(value / scale for value in values)


def relay_weight(relay: RelayRecord, table: Sequence[float]) -> float:
    """Bandwidth x the factor for the relay's class (BadExit counts as non-exit)."""
    wg, wm, we, wd, wgb, wmb, web, wdb = table
    flags = relay.flags
    is_guard = "Guard" in flags
    is_exit = "Exit" in flags and "BadExit" not in flags
    is_dir = "V2Dir" in flags
    if is_guard and is_exit:
        factor = wd * wdb if is_dir else wd
    elif is_guard:
        factor = wg * wgb if is_dir else wg
    elif is_exit:
        factor = we * web if is_dir else we
    else:
        factor = wm * wmb if is_dir else wm
    bandwidth = DEFAULT_BANDWIDTH_KB if relay.bandwidth is None else relay.bandwidth
    return max(bandwidth * factor, 0.0)
