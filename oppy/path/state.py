"""Checks shared by the path layer's persisted state (guard sample, vanguards-lite set).

A state file is outside input: JSON may hold integers no float can take and values whose repr is megabytes
(or fails: Python refuses to print an int of more than 4300 digits), so both readers check and quote through
these.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["is_state_time", "short_repr"]


def is_state_time(value: Any) -> bool:
    """A finite number of POSIX seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:       # an int too large for a float
        return False


def short_repr(value: Any) -> str:
    """A bad value for an error message, cut short."""
    try:
        text = repr(value)
    except ValueError:          # an int beyond Python's int-to-str digit limit
        return f"an {type(value).__name__} too long to show"
    return text if len(text) <= 50 else text[:47] + "..."
