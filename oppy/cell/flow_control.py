"""SENDME flow control (tor-spec §7 "Flow control"): the windows every circuit and stream keeps.

Both levels work alike: the package window counts the DATA cells we may still send and grows by one increment
per SENDME received; the deliver window counts the DATA cells the other side may still send us and we owe a
SENDME (which grows it by one increment) once it has fallen by one increment. Only the numbers differ, so
each level is one `SendmeWindow` built from its constants.
"""

from __future__ import annotations

# tor-spec §7.3 "Circuit-level flow control": windows start at 1000 DATA cells, a SENDME is worth 100.
CIRCWINDOW_START = 1000
CIRCWINDOW_INCREMENT = 100
# tor-spec §7.4 "Stream-level flow control": windows start at 500 DATA cells, a SENDME is worth 50.
STREAMWINDOW_START = 500
STREAMWINDOW_INCREMENT = 50
# A window no stream exhausts (2^62 cells): streams of congestion-controlled circuits.
UNBOUNDED_WINDOW = 1 << 62


class SendmeWindow:
    """The package and deliver windows of one circuit or one stream.

    The attributes are plain ints read and written on the per-cell path; `sendme_threshold` is the deliver
    window at or below which a SENDME is owed (start - increment, tor-spec §7.3/§7.4).
    """

    __slots__ = ("start", "increment", "sendme_threshold", "package", "deliver")

    def __init__(self, start: int, increment: int) -> None:
        self.start = start
        self.increment = increment
        self.sendme_threshold = start - increment
        self.package = start
        self.deliver = start

    def __repr__(self) -> str:
        return f"<SendmeWindow package={self.package} deliver={self.deliver} of {self.start}>"

    @classmethod
    def for_circuit(cls) -> "SendmeWindow":
        return cls(CIRCWINDOW_START, CIRCWINDOW_INCREMENT)

    @classmethod
    def for_stream(cls) -> "SendmeWindow":
        return cls(STREAMWINDOW_START, STREAMWINDOW_INCREMENT)

    @classmethod
    def unbounded(cls) -> "SendmeWindow":
        """A stream on a congestion-controlled circuit (prop 324 §4): no window limits it, no SENDME is owed
        (the threshold is never reached) and one received is more than was ever owed."""
        return cls(UNBOUNDED_WINDOW, UNBOUNDED_WINDOW)

    @property
    def sendme_due(self) -> bool:
        """We owe the other side a SENDME."""
        return self.deliver <= self.sendme_threshold

    def sendme_sent(self) -> None:
        self.deliver += self.increment

    def sendme_received(self) -> bool:
        """Open the package window by one increment; False when that is more than was ever owed."""
        self.package += self.increment
        return self.package <= self.start
