"""Connection-level padding and the idle timeout of a link, sans IO.

padding-spec §2 "Connection-level padding", as C tor implements it (channelpadding.c, channel.c
`channel_do_open_actions`, mainloop.c `run_connection_housekeeping`): routers export a netflow record for a
TCP connection each time it has been idle for their "inactive flow timeout" (10 s at the least), so the
records of an idle-then-busy link tell when a client was active. A client therefore sends a PADDING cell on a
link it uses for full circuits whenever nothing was read or written on it for a random 1.5 to 9.5 s (the
consensus's `nf_ito_low` and `nf_ito_high`), and the guard does the same toward the client. On link protocol 5
both sides pad without asking; a client that wants less sends PADDING_NEGOTIATE STOP right after its NETINFO
(tor-spec §7.2, padding-spec §2.5).

`PaddingPolicy` is what every link pads by (the torrc options, read live, and the consensus parameters, which
the daemon hands in with `update_consensus_params`); `ChannelPadding` is one link's state. Nothing here keeps
time or runs a timer: the Twisted adapter (`oppy.link.connection`) records when it last read and wrote, calls
`housekeeping` once a second as tor does, and runs the short timer `housekeeping` asks for. Cells sent reset
nothing: the timer compares the link's last activity with the one its deadline was drawn from when it fires.
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from oppy.cell.link import PaddingNegotiateCommand, encode_padding_negotiate_body
from oppy.netdoc.params import ConsensusParam

log = logging.getLogger(__name__)

# tor-spec §7.2 "Link padding": channel padding and PADDING_NEGOTIATE come with link protocol 5
# (tor: MIN_LINK_PROTO_FOR_CHANNEL_PADDING).
MIN_LINK_VERSION_FOR_PADDING = 5
# tor mainloop.c: connection housekeeping runs once a second; a padding cell due within that second plus
# slack gets its own timer (channelpadding.c TOR_HOUSEKEEPING_CALLBACK_MSEC + _SLACK_MSEC).
HOUSEKEEPING_INTERVAL = 1.0
PADDING_TIMER_HORIZON = 1.1
# channelpadding.c: a deadline further away than the largest allowed timeout means the clock jumped: pad now.
MAX_PADDING_TIMEOUT_MS = 60000
# tor(1) KeepalivePeriod (default 5 minutes): a link nothing was written to for this long gets a PADDING
# cell, whatever ConnectionPadding says (mainloop.c run_connection_housekeeping).
KEEPALIVE_PERIOD = 300
# channelpadding.c channelpadding_get_channel_idle_timeout, CONNTIMEOUT_CLIENTS_BASE: a client's link with
# no circuits is closed after 180 s plus up to half that again (halved under ReducedConnectionPadding).
CLIENT_IDLE_TIMEOUT_BASE = 180


# padding-spec §2.6 "Consensus Parameters Governing Behavior", with the bounds of channelpadding.c
# channelpadding_new_consensus_params. `nf_ito_high` is at least `nf_ito_low`, `nf_ito_high_reduced` at least
# `nf_ito_low_reduced`: the table's `low` for them is raised to the value read for their partner.
NF_ITO_LOW = ConsensusParam("nf_ito_low", 1500, 0, 60000)
NF_ITO_HIGH = ConsensusParam("nf_ito_high", 9500, 0, 60000)
NF_ITO_LOW_REDUCED = ConsensusParam("nf_ito_low_reduced", 9000, 0, 60000)
NF_ITO_HIGH_REDUCED = ConsensusParam("nf_ito_high_reduced", 14000, 0, 60000)
NF_PAD_BEFORE_USAGE = ConsensusParam("nf_pad_before_usage", 1, 0, 1)
# What a client reads of the other padding parameters: nothing. `nf_pad_relays` and `nf_conntimeout_relays`
# govern links between relays; `nf_pad_single_onion` only single onion services (tor reads it only in
# HiddenServiceNonAnonymousMode); `nf_pad_tor2web` only Tor2webMode, which tor removed in 0.3.5; and
# `nf_conntimeout_clients` is the lifetime of predicted circuits (tor's CircuitsAvailableTimeout), not of
# links: an idle client link closes after CLIENT_IDLE_TIMEOUT_BASE whatever the consensus says.


@dataclass(frozen=True)
class PaddingParams:
    """The consensus's connection-padding parameters, in milliseconds (tor's defaults when it says nothing)."""

    ito_low_ms: int = NF_ITO_LOW.default
    ito_high_ms: int = NF_ITO_HIGH.default
    ito_low_reduced_ms: int = NF_ITO_LOW_REDUCED.default
    ito_high_reduced_ms: int = NF_ITO_HIGH_REDUCED.default
    # Pad links used for full circuits before any user traffic went over them.
    pad_before_usage: bool = bool(NF_PAD_BEFORE_USAGE.default)

    @classmethod
    def from_consensus(cls, params: Mapping[str, int]) -> "PaddingParams":
        """Read a consensus's `params` line, clamped as channelpadding_new_consensus_params does."""
        low = NF_ITO_LOW.read(params)
        low_reduced = NF_ITO_LOW_REDUCED.read(params)
        return cls(low, NF_ITO_HIGH.read(params, low), low_reduced,
                   NF_ITO_HIGH_REDUCED.read(params, low_reduced),
                   bool(NF_PAD_BEFORE_USAGE.read(params)))


class PaddingOptions(Protocol):
    """The torrc options padding obeys (`oppy.config.Config` has them, and SETCONF changes them in place)."""

    # ConnectionPadding: None is "auto" (pad where the link protocol has padding), True pads every link in
    # use, False pads none and asks the relay to stop.
    connection_padding: bool | None
    # ReducedConnectionPadding: pad less often, ask the relay to stop, close idle links sooner.
    reduced_connection_padding: bool


@dataclass
class ConnectionPaddingOptions:
    """PaddingOptions with tor's defaults (ConnectionPadding auto, ReducedConnectionPadding 0)."""

    connection_padding: bool | None = None
    reduced_connection_padding: bool = False


class PaddingPolicy:
    """What every link pads by: the torrc options and the consensus parameters, and the random source."""

    def __init__(self, options: PaddingOptions | None = None, params: PaddingParams = PaddingParams(),
                 rng: random.Random | None = None) -> None:
        self.options = options if options is not None else ConnectionPaddingOptions()
        self.params = params
        # tor draws its timeouts with crypto_rand_int: an observer must not predict when padding comes.
        self.rng = rng if rng is not None else random.SystemRandom()

    def update_consensus_params(self, params: Mapping[str, int]) -> None:
        """A new consensus is in use: its parameters apply to every link from now on."""
        self.params = PaddingParams.from_consensus(params)


class ChannelUsage(enum.IntEnum):
    """How far a link has been used (tor channel.h channel_usage_info_t); only links carrying full
    (multi-hop) circuits are padded, so the links of one-hop directory fetches are not."""

    NOT_USED_FOR_FULL_CIRCS = 0
    # A full circuit went over the link: oppy's mark is its first RELAY_EARLY (EXTEND2 goes in RELAY_EARLY,
    # which only multi-hop circuits send; a relay marks its links the same way, relay.c).
    USED_FOR_FULL_CIRCS = 1
    # ... and then a RELAY cell came back on it (relay.c circuit_update_channel_usage).
    USED_FOR_USER_TRAFFIC = 2


class Housekeeping(enum.Enum):
    """What the once-a-second housekeeping asks of the link's adapter."""

    NOTHING = "nothing"
    CLOSE_IDLE = "close the idle link"
    SEND_KEEPALIVE = "send a keepalive PADDING cell"
    SEND_PADDING = "send a PADDING cell now"
    SCHEDULE_PADDING = "start the padding timer"


class HousekeepingResult(NamedTuple):
    action: Housekeeping
    delay: float = 0.0  # SCHEDULE_PADDING: seconds until `padding_due` is asked


class ChannelPadding:
    """One link's padding state (tor's channel_t padding fields), the link's idle timeout included.

    The adapter sets `last_read` and `last_written` (its clock's seconds) as bytes come and go, from the
    handshake on; nothing else happens per cell.
    """

    def __init__(self, policy: PaddingPolicy) -> None:
        self.policy = policy
        # Padding is on for this link (link protocol 5, not turned off by ConnectionPadding 0): tor's
        # chan->padding_enabled. ReducedConnectionPadding sends STOP but leaves it on: we pad, the relay does not.
        self.enabled = False
        # Timeouts set on this link (ReducedConnectionPadding), 0 when the consensus's apply.
        self.timeout_low_ms = 0
        self.timeout_high_ms = 0
        self.usage = ChannelUsage.NOT_USED_FOR_FULL_CIRCS
        self.last_read = 0.0
        self.last_written = 0.0
        # When the link was last seen with a circuit (None: not checked yet), and how long it may then stay
        # open (drawn when it opens).
        self.last_had_circuits: float | None = None
        self.idle_timeout = 0
        self.padding_cells_sent = 0
        # The next padding deadline and the last activity it was drawn from (tor's next_padding_time,
        # which tor zeroes on every cell: here a deadline drawn from an older activity is simply stale).
        self._next_padding_at: float | None = None
        self._drawn_from = 0.0

    @property
    def last_activity(self) -> float:
        return max(self.last_read, self.last_written)

    # -------------------------------------------------------------------------------- negotiation

    def link_opened(self, link_version: int) -> bytes | None:
        """The link handshake is done: the PADDING_NEGOTIATE body to send right after our NETINFO, or None.

        tor channel_do_open_actions: ConnectionPadding 0 sends STOP and pads nothing; ReducedConnectionPadding
        sends STOP (the relay stops, we keep padding with the reduced timeouts). Otherwise nothing is sent:
        on link protocol 5 the relay pads by default, and a client that pads anyway sends no START.
        """
        options = self.policy.options
        self.enabled = link_version >= MIN_LINK_VERSION_FOR_PADDING
        self.idle_timeout = self._draw_idle_timeout()
        if not self.enabled and options.connection_padding is not True:
            return None
        if options.connection_padding is False:
            self.enabled = False
            return encode_padding_negotiate_body(PaddingNegotiateCommand.STOP)
        if options.reduced_connection_padding:
            params = self.policy.params
            self.timeout_low_ms, self.timeout_high_ms = params.ito_low_reduced_ms, params.ito_high_reduced_ms
            if self.enabled:
                return encode_padding_negotiate_body(PaddingNegotiateCommand.STOP)
        return None

    def _draw_idle_timeout(self) -> int:
        """Seconds a link with no circuits stays open: 180-269, halved with ReducedConnectionPadding."""
        timeout = CLIENT_IDLE_TIMEOUT_BASE + self.policy.rng.randrange(CLIENT_IDLE_TIMEOUT_BASE // 2)
        if self.policy.options.reduced_connection_padding:
            timeout //= 2
        return timeout

    # -------------------------------------------------------------------------------- the timer

    def netflow_inactive_timeout_ms(self) -> int:
        """How long the link may stay idle before a PADDING cell, in ms; 0 when the consensus turned padding
        off. Drawn as `low + max(X1, X2)` with X uniform over [0, high - low): the max of two makes the
        min of both ends' timers, once each end's padding resets the other's, average near the middle of the
        range (padding-spec §2.3; channelpadding_get_netflow_inactive_timeout_ms)."""
        params = self.policy.params
        low, high = params.ito_low_ms, params.ito_high_ms
        if low == 0 and high == 0:
            return 0
        if self.timeout_low_ms and self.timeout_high_ms:
            low, high = max(low, self.timeout_low_ms), max(high, self.timeout_high_ms)
        if low == high:
            return low
        randrange = self.policy.rng.randrange
        return low + max(randrange(high - low), randrange(high - low))

    def housekeeping(self, now: float, circuits: bool, busy: bool, timer_pending: bool) -> HousekeepingResult:
        """The once-a-second check (run_connection_housekeeping, then channelpadding_decide_to_pad_channel).

        `circuits`: the link carries circuits (or carried one since the last check); `busy`: cells are
        waiting to be written; `timer_pending`: the padding timer is already running.
        """
        if circuits or self.last_had_circuits is None:
            self.last_had_circuits = now
        elif now - self.idle_timeout >= self.last_had_circuits:
            return HousekeepingResult(Housekeeping.CLOSE_IDLE)
        if not busy and now >= self.last_written + KEEPALIVE_PERIOD:
            return HousekeepingResult(Housekeeping.SEND_KEEPALIVE)
        if timer_pending or busy or not self._wants_padding():
            return HousekeepingResult(Housekeeping.NOTHING)
        delay = self._time_until_padding(now)
        if delay is None:
            return HousekeepingResult(Housekeeping.NOTHING)
        if delay <= 0:
            self._next_padding_at = None
            return HousekeepingResult(Housekeeping.SEND_PADDING)
        return HousekeepingResult(Housekeeping.SCHEDULE_PADDING, delay)

    def _wants_padding(self) -> bool:
        if self.usage is ChannelUsage.NOT_USED_FOR_FULL_CIRCS:
            return False
        if self.usage is ChannelUsage.USED_FOR_FULL_CIRCS and not self.policy.params.pad_before_usage:
            return False
        # Padding was not negotiated (link protocol 4, or STOP sent): only ConnectionPadding 1 pads anyway.
        return self.enabled or self.policy.options.connection_padding is True

    def _time_until_padding(self, now: float) -> float | None:
        """Seconds until the padding deadline if it is within the timer's horizon (0: due), else None
        (channelpadding_compute_time_until_pad_for_netflow)."""
        activity = self.last_activity
        if self._next_padding_at is None or self._drawn_from != activity:
            timeout_ms = self.netflow_inactive_timeout_ms()
            if not timeout_ms:
                return None
            self._next_padding_at = activity + timeout_ms / 1000
            self._drawn_from = activity
        until = self._next_padding_at - now
        if until * 1000 > MAX_PADDING_TIMEOUT_MS:
            log.info("Link padding deadline %.0f ms ahead: the clock jumped; padding now.", until * 1000)
            return 0.0
        if until >= PADDING_TIMER_HORIZON:
            return None
        return max(until, 0.0)

    def padding_due(self, busy: bool) -> bool:
        """The padding timer fired: True if the link stayed idle since its deadline was drawn (then the
        adapter sends one PADDING cell), False if it was active meanwhile (channelpadding_send_padding_cell_
        for_callback)."""
        due = self._next_padding_at is not None and self._drawn_from == self.last_activity and not busy
        self._next_padding_at = None
        return due

    def note_relay_early_sent(self) -> None:
        """A RELAY_EARLY cell went out: a full circuit uses the link."""
        if self.usage is ChannelUsage.NOT_USED_FOR_FULL_CIRCS:
            self.usage = ChannelUsage.USED_FOR_FULL_CIRCS

    def note_relay_received(self) -> None:
        """A RELAY cell came in: after a full circuit, the link carries user traffic."""
        if self.usage is ChannelUsage.USED_FOR_FULL_CIRCS:
            self.usage = ChannelUsage.USED_FOR_USER_TRAFFIC
