"""Consensus parameters (dir-spec "params"), each with tor's default and bounds.

tor reads each parameter with networkstatus_get_param(ns, name, default, min, max): absent, the default; out of
[min, max], clamped (with a warning). The subsystems that read them (padding, congestion control) keep a table
of `ConsensusParam`s with tor's values.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import NamedTuple

log = logging.getLogger(__name__)


class ConsensusParam(NamedTuple):
    """A consensus parameter with tor's default and bounds (dir-spec "params"; tor networkstatus_get_param)."""

    name: str
    default: int
    low: int
    high: int

    def read(self, params: Mapping[str, int], low: int | None = None) -> int:
        """The consensus's value (the default when it has none) clamped into [low, high] as tor clamps it;
        `low` replaces the table's lower bound (a parameter that may not fall below another one)."""
        low = self.low if low is None else low
        value = params.get(self.name, self.default)
        clamped = min(max(value, low), self.high)
        if clamped != value:
            log.info("Consensus parameter %s=%d is out of range [%d, %d]; using %d.", self.name, value, low,
                     self.high, clamped)
        return clamped
