"""Vanguards-lite: a few slowly rotating layer-2 guards for the second hop of onion-service circuits.

Without them, anyone can make an onion service (or a client visiting many onion services) build
circuits until one of their middle relays is chosen next to the guard, and so learn the guard
(torspec vanguards-spec). Vanguards-lite (proposal 333; vanguards-spec; tor 0.4.7+ ``entrynodes.c``,
``circuitbuild.c``) pins that second hop to a small set, as tor does it:

* the set holds ``guard-hs-l2-number`` relays (4; tor clamps it to 1..19), drawn with middle-position
  weights among relays that are Stable and Fast and have a microdescriptor, never twice the same relay
  (the same family or subnet is allowed);
* each lives a whole number of seconds drawn uniformly from [``guard-hs-l2-lifetime-min``,
  ``guard-hs-l2-lifetime-max``) (1 to 12 days; tor ``crypto_rand_int_range``, the minimum when
  min >= max), and leaves the set once that time is reached, or as soon as it is no longer listed
  or loses Stable or Fast (vanguards-spec "Selecting Relays"); tor maintains the set every
  :data:`MAINTENANCE_INTERVAL` and oppy also does so on every new consensus and before each choice;
* a circuit takes one usable member uniformly that is neither its last hop nor its guard (tor
  ``pick_restricted_middle_node``); onion-service circuits drop the family and subnet rules between
  hops and let the guard be the last hop (tor ``build_vanguard_middle_exclude_list``,
  ``guards_choose_guard``);
* paths (proposal 333 section 1): a client's rendezvous circuit is guard, L2, rendezvous point; every
  other onion-service circuit is guard, L2, middle, then the introduction point, HSDir or rendezvous
  point it extends to (:func:`choose_onion_service_path`).

Two deliberate differences from tor: the set is persisted (:meth:`VanguardsLite.to_dict`; tor forgets
it on restart, proposal 333 section 1) so that a restart does not hand out a fresh second hop, and,
because of that, a stored expiry further ahead than the longest lifetime the parameters allow (a
clock that was wrong, an edited file) is brought back to that bound. When no Stable and Fast relay is
left, tor picks a relay without them and drops it at the next maintenance; oppy leaves the place
empty instead.

Sans-IO: every method takes ``now`` (POSIX seconds) and draws from the ``random.Random`` given at
construction (or per call); :func:`choose_onion_service_path` takes the guard sample as an argument.
"""

from __future__ import annotations

import enum
import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from oppy.netdoc.relay import RelayTarget
from oppy.path.bridges import BridgeSet
from oppy.path.guards import GuardChoice, GuardSample, GuardUsage
from oppy.path.selection import NoPathError, PathError, PathNode, PathSelector
from oppy.path.state import is_state_time, short_repr

__all__ = [
    "VanguardsLite",
    "VanguardsLiteParams",
    "Layer2Guard",
    "Layer2Changes",
    "Layer2Removal",
    "OnionServicePurpose",
    "OnionServicePath",
    "VanguardsStateError",
    "NoLayer2GuardError",
    "choose_onion_service_path",
    "vanguards_lite_enabled",
    "LAYER2_FLAGS",
    "MAINTENANCE_INTERVAL",
]

_DAY = 86400
_INT32_MAX = 2**31 - 1

#: NUM_LAYER2_GUARDS (proposal 333 section 1; tor entrynodes.c NUMBER_SECOND_GUARDS).
DEFAULT_LAYER2_COUNT = 4
#: tor's upper bound on ``guard-hs-l2-number``: fewer than MAX_SANE_RESTRICTED_NODES (20), above which
#: tor would weight the restricted middles by bandwidth instead of choosing uniformly (circuitbuild.c).
MAX_LAYER2_COUNT = 19
#: MIN_SECOND_GUARD_LIFETIME and MAX_SECOND_GUARD_LIFETIME (proposal 333 section 1; param-spec
#: "Vanguard parameters"; tor entrynodes.c), in seconds.
DEFAULT_LAYER2_LIFETIME_MIN = 1 * _DAY
DEFAULT_LAYER2_LIFETIME_MAX = 12 * _DAY
#: tor maintains the set this often (mainloop.c VANGUARDS_LITE_INTERVAL, 15 minutes).
MAINTENANCE_INTERVAL = 15 * 60
#: A layer-2 guard must have these flags to join or stay in the set (vanguards-spec "Selecting
#: Relays"; tor ``maintain_layer2_guards`` drops a relay that is not ``is_stable`` and ``is_fast``).
LAYER2_FLAGS = frozenset({"Stable", "Fast"})

#: Version of the :meth:`VanguardsLite.to_dict` format.
STATE_VERSION = 1
#: Keys :meth:`VanguardsLite.to_dict` writes for a guard; others are kept as they were.
_STATE_KEYS = ("fingerprint", "expires_at")
_HEX40_RE = re.compile(r"[0-9A-F]{40}\Z")


class VanguardsStateError(ValueError):
    """The persisted vanguards-lite state is malformed."""


class NoLayer2GuardError(NoPathError):
    """No layer-2 guard can be the second hop of this circuit right now."""


class _ConsensusParams(Protocol):
    """What the parameters are read from: a consensus (``Consensus.param``)."""

    def param(self, name: str, default: int, low: int | None = None, high: int | None = None) -> int: ...


@dataclass(frozen=True, slots=True)
class VanguardsLiteParams:
    """The consensus parameters of vanguards-lite, clamped as tor clamps them (entrynodes.c)."""

    #: ``guard-hs-l2-number``: how many layer-2 guards the set holds.
    count: int = DEFAULT_LAYER2_COUNT
    #: ``guard-hs-l2-lifetime-min``, seconds.
    lifetime_min: int = DEFAULT_LAYER2_LIFETIME_MIN
    #: ``guard-hs-l2-lifetime-max``, seconds.
    lifetime_max: int = DEFAULT_LAYER2_LIFETIME_MAX
    #: ``vanguards-lite-enabled``: what ``VanguardsLiteEnabled auto`` follows (tor's default 1).
    enabled: bool = True

    @classmethod
    def from_consensus(cls, consensus: _ConsensusParams) -> VanguardsLiteParams:
        return cls(
            count=consensus.param("guard-hs-l2-number", DEFAULT_LAYER2_COUNT, 1, MAX_LAYER2_COUNT),
            lifetime_min=consensus.param("guard-hs-l2-lifetime-min", DEFAULT_LAYER2_LIFETIME_MIN, 1, _INT32_MAX),
            lifetime_max=consensus.param("guard-hs-l2-lifetime-max", DEFAULT_LAYER2_LIFETIME_MAX, 1, _INT32_MAX),
            enabled=consensus.param("vanguards-lite-enabled", 1, 0, 1) == 1,
        )

    def draw_lifetime(self, rng: random.Random) -> int:
        """Whole seconds, uniform in [min, max); the minimum if min >= max (tor
        ``get_layer2_hs_guard_lifetime``)."""
        if self.lifetime_min >= self.lifetime_max:
            return self.lifetime_min
        return rng.randrange(self.lifetime_min, self.lifetime_max)


def vanguards_lite_enabled(setting: bool | None, params: VanguardsLiteParams, *,
                           full_vanguards: bool = False) -> bool:
    """Do onion-service circuits take their second hop from the vanguards-lite set?

    ``setting`` is ``VanguardsLiteEnabled`` (None for ``auto``): 0 is final, 1 turns it on and
    ``auto`` follows ``vanguards-lite-enabled`` (tor ``vanguards_lite_is_enabled``). Configured full
    vanguards replace the lite set, as tor's ``HSLayer2Nodes`` does (``pick_vanguard_middle_node``).
    """
    if setting is False or full_vanguards:
        return False
    return params.enabled if setting is None else True


class Layer2Removal(enum.Enum):
    """Why a layer-2 guard left the set (tor logs and a ``GUARD ... BAD_L2`` event)."""

    #: Its lifetime ran out.
    EXPIRED = "expired"
    #: It is not in the consensus any more.
    UNLISTED = "unlisted"
    #: It is listed without Stable or Fast.
    UNSUITABLE = "unsuitable"
    #: A new identity was asked for (tor ``purge_vanguards_lite`` on NEWNYM).
    PURGED = "purged"


@dataclass(frozen=True, slots=True)
class Layer2Changes:
    """What one maintenance did, in order (the source of ``GOOD_L2`` / ``BAD_L2`` guard events)."""

    added: tuple[str, ...] = ()
    removed: tuple[tuple[str, Layer2Removal], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


@dataclass(eq=False, slots=True)
class Layer2Guard:
    """One layer-2 guard: its identity and when it expires (tor ``layer2_guard_t``)."""

    fingerprint: str
    #: POSIX time at which it leaves the set.
    expires_at: float
    #: Persisted keys oppy does not know, written back unchanged.
    extra: dict[str, Any] = field(default_factory=dict)


class VanguardsLite:
    """The set of layer-2 guards and the rules to keep and choose them."""

    def __init__(self, guards: Iterable[Layer2Guard] = (), *, rng: random.Random | None = None) -> None:
        #: The layer-2 guards, oldest first.
        self.guards: list[Layer2Guard] = list(guards)
        self.rng = rng if rng is not None else random.SystemRandom()
        #: The parameters of the latest consensus (:meth:`update_from_consensus`).
        self.params = VanguardsLiteParams()
        self._dirty = False

    # ---- persistence -------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot of the set, for the state file."""
        entries = []
        for guard in self.guards:
            entry = dict(guard.extra)
            entry.update(fingerprint=guard.fingerprint, expires_at=guard.expires_at)
            entries.append(entry)
        return {"version": STATE_VERSION, "layer2": entries}

    @classmethod
    def from_dict(cls, state: Any, *, rng: random.Random | None = None) -> VanguardsLite:
        """Rebuild a set from :meth:`to_dict` output; raise :class:`VanguardsStateError` if malformed."""
        if not isinstance(state, dict):
            raise VanguardsStateError(f"vanguards state must be a dict, not {type(state).__name__}")
        version = state.get("version")
        if version != STATE_VERSION or isinstance(version, bool):
            raise VanguardsStateError(f"unsupported vanguards state version {short_repr(version)}")
        entries = state.get("layer2")
        if not isinstance(entries, list):
            raise VanguardsStateError("vanguards state has no 'layer2' list")
        guards = [_guard_from_entry(position, entry) for position, entry in enumerate(entries)]
        repeated = [fingerprint for fingerprint, count in Counter(guard.fingerprint for guard in guards).items()
                    if count > 1]
        if repeated:
            raise VanguardsStateError(f"layer-2 guard {repeated[0]} appears twice")
        return cls(guards, rng=rng)

    @property
    def dirty(self) -> bool:
        """Has the set changed since :meth:`mark_saved`?"""
        return self._dirty

    def mark_saved(self) -> None:
        self._dirty = False

    # ---- maintenance (tor maintain_layer2_guards) -------------------------------

    def update_from_consensus(self, selector: PathSelector, now: float) -> Layer2Changes:
        """Take a new consensus (``selector.consensus``, with its microdescriptors): its parameters,
        then :meth:`maintain`."""
        self.params = VanguardsLiteParams.from_consensus(selector.consensus)
        return self.maintain(selector, now)

    def maintain(self, selector: PathSelector, now: float) -> Layer2Changes:
        """Drop the guards that expired (at ``expires_at`` itself, as tor), are no longer listed or
        lost Stable or Fast, then draw new ones until the set holds ``guard-hs-l2-number``.

        A set larger than that (the parameter went down) is not trimmed: its guards leave as they
        expire, as in tor. Call it at least every :data:`MAINTENANCE_INTERVAL` once the directory
        information is complete (tor waits for ``router_have_minimum_dir_info``).
        """
        removed = []
        latest_expiry = now + max(self.params.lifetime_min, self.params.lifetime_max)
        for guard in list(self.guards):
            reason = self._removal_reason(guard, selector, now)
            if reason is not None:
                self.guards.remove(guard)
                removed.append((guard.fingerprint, reason))
                self._dirty = True
            elif guard.expires_at > latest_expiry:
                guard.expires_at = latest_expiry
                self._dirty = True
        return Layer2Changes(self._fill(selector, now), tuple(removed))

    def purge(self, selector: PathSelector, now: float) -> Layer2Changes:
        """Forget every guard and draw a new set (tor ``purge_vanguards_lite``, on NEWNYM)."""
        removed = tuple((guard.fingerprint, Layer2Removal.PURGED) for guard in self.guards)
        self.guards.clear()
        self._dirty = self._dirty or bool(removed)
        return Layer2Changes(self._fill(selector, now), removed)

    @staticmethod
    def _removal_reason(guard: Layer2Guard, selector: PathSelector, now: float) -> Layer2Removal | None:
        if guard.expires_at <= now:
            return Layer2Removal.EXPIRED
        relay = selector.consensus.relay_by_fingerprint(guard.fingerprint)
        if relay is None:
            return Layer2Removal.UNLISTED
        if not LAYER2_FLAGS <= relay.flags:
            return Layer2Removal.UNSUITABLE
        return None

    def _fill(self, selector: PathSelector, now: float) -> tuple[str, ...]:
        """Draw, with middle weights and without replacement, Stable and Fast relays that have a
        microdescriptor (tor: ``router_choose_random_node`` with CRN_NEED_DESC|CRN_NEED_UPTIME,
        excluding the current guards but not their families)."""
        present = {bytes.fromhex(guard.fingerprint) for guard in self.guards}
        added: list[str] = []
        while len(self.guards) < self.params.count:
            try:
                node = selector.choose_middle(self.rng, avoid=present, stable=True)
            except NoPathError:
                break
            if not LAYER2_FLAGS <= node.flags:
                break       # only the fallback without Stable or Fast had a relay left
            lifetime = self.params.draw_lifetime(self.rng)
            self.guards.append(Layer2Guard(node.fingerprint, float(now + lifetime)))
            present.add(node.relay.rsa_id)
            added.append(node.fingerprint)
            self._dirty = True
        return tuple(added)

    # ---- choosing (tor pick_vanguard_middle_node) --------------------------------

    def layer2_candidates(self, selector: PathSelector, now: float,
                          exclude: Iterable[bytes] = ()) -> list[PathNode]:
        """The guards of the set that can be a second hop now: not expired, running and valid with
        a microdescriptor (in ``selector``), and whose RSA identity is not in ``exclude`` (the
        circuit's guard and last hop; families and subnets do not count)."""
        excluded = frozenset(exclude)
        found = []
        for guard in self.guards:
            if guard.expires_at <= now:
                continue
            node = selector.node(guard.fingerprint)
            if node is not None and node.relay.rsa_id not in excluded:
                found.append(node)
        return found

    def choose_layer2(self, selector: PathSelector, now: float, exclude: Iterable[bytes] = (),
                      rng: random.Random | None = None) -> PathNode:
        """A second hop: :meth:`maintain` first, then one of :meth:`layer2_candidates` uniformly
        (tor ``smartlist_choose``). Raises :class:`NoLayer2GuardError` saying why none fits."""
        self.maintain(selector, now)
        excluded = frozenset(exclude)
        candidates = self.layer2_candidates(selector, now, excluded)
        if not candidates:
            raise NoLayer2GuardError(self._explain_none(selector, excluded))
        return (rng if rng is not None else self.rng).choice(candidates)

    def _explain_none(self, selector: PathSelector, excluded: frozenset[bytes]) -> str:
        if not self.guards:
            return "the vanguards-lite set is empty: no relay with a microdescriptor is Stable and Fast"
        reasons = []
        for guard in self.guards:
            node = selector.node(guard.fingerprint)
            if node is None:
                reasons.append(f"${guard.fingerprint} is not running and valid or has no microdescriptor")
            elif node.relay.rsa_id in excluded:
                reasons.append(f"${guard.fingerprint} is already in the path")
        return f"none of the {len(self.guards)} layer-2 guards fits: " + "; ".join(reasons)


def _guard_from_entry(position: int, entry: Any) -> Layer2Guard:
    if not isinstance(entry, dict):
        raise VanguardsStateError(f"layer-2 guard #{position} is not a dict")
    fingerprint = entry.get("fingerprint")
    if not isinstance(fingerprint, str) or not _HEX40_RE.match(fingerprint):
        raise VanguardsStateError(f"layer-2 guard #{position} has a bad fingerprint {short_repr(fingerprint)}")
    expires_at = entry.get("expires_at")
    if not is_state_time(expires_at):
        raise VanguardsStateError(f"layer-2 guard {fingerprint} has a bad expires_at {short_repr(expires_at)}")
    return Layer2Guard(fingerprint, float(expires_at),
                       {key: value for key, value in entry.items() if key not in _STATE_KEYS})


# ---- an onion-service circuit's path --------------------------------------------------


class OnionServicePurpose(enum.Enum):
    """Onion-service circuits (tor ``CIRCUIT_PURPOSE_*``) and their paths with vanguards-lite
    (proposal 333 section 1; tor ``route_len_for_purpose``)."""

    #: C_ESTABLISH_REND: guard, L2, then a rendezvous point chosen here.
    CLIENT_REND = "client_rend"
    #: C_INTRODUCING: guard, L2, middle, then the service's introduction point.
    CLIENT_INTRO = "client_intro"
    #: C_HSDIR_GET: guard, L2, middle, then the HSDir holding the descriptor.
    CLIENT_HSDIR = "client_hsdir"
    #: S_ESTABLISH_INTRO: guard, L2, middle, then the introduction point.
    SERVICE_INTRO = "service_intro"
    #: S_CONNECT_REND: guard, L2, middle, then the client's rendezvous point.
    SERVICE_REND = "service_rend"
    #: S_HSDIR_POST: guard, L2, middle, then the HSDir to publish to.
    SERVICE_HSDIR = "service_hsdir"

    @property
    def has_target(self) -> bool:
        """Is the last hop given (chosen by the other side, or by the HSDir ring)?"""
        return self is not OnionServicePurpose.CLIENT_REND


@dataclass(frozen=True, slots=True)
class OnionServicePath:
    """The hops oppy chose for an onion-service circuit; the circuit then extends to the target,
    if its purpose has one."""

    purpose: OnionServicePurpose
    #: The guard, a relay of the consensus (None when a bridge is the first hop).
    guard: PathNode | None
    layer2: PathNode
    #: The extra hop before a target (None for a client rendezvous circuit).
    middle: PathNode | None
    #: The rendezvous point chosen here (client rendezvous circuits only).
    rendezvous: PathNode | None
    #: UseBridges: the bridge that is the first hop instead of a guard.
    bridge: RelayTarget | None = None

    @property
    def hops(self) -> tuple[PathNode, ...]:
        """The chosen hops in circuit order (a path through a guard of the consensus)."""
        assert self.guard is not None
        return (self.guard, self.layer2, self._last)

    @property
    def _last(self) -> PathNode:
        last = self.middle if self.middle is not None else self.rendezvous
        assert last is not None
        return last

    def targets(self) -> list[RelayTarget]:
        """What the circuit is built through, in order: the guard or the bridge, then the other hops."""
        first = self.bridge if self.bridge is not None else self.hops[0].target
        return [first, self.layer2.target, self._last.target]


def choose_onion_service_path(selector: PathSelector, guards: GuardSample, vanguards: VanguardsLite | None,
                              purpose: OnionServicePurpose, now: float, rng: random.Random,
                              target: bytes | None = None, *, stable: bool = False,
                              bridges: BridgeSet | None = None) -> tuple[OnionServicePath, GuardChoice]:
    """The path of an onion-service circuit, in tor's order (``circuit_establish_circuit``): the
    last hop first, then the guard, then the second hop, then the middle.

    * last hop: ``target`` (the RSA identity of the introduction point, HSDir or rendezvous point the
      circuit extends to), or for :attr:`~OnionServicePurpose.CLIENT_REND` a rendezvous point chosen
      like a middle that is not MiddleOnly (tor ``choose_good_exit_server`` with CRN_FOR_HS);
    * guard: from ``guards``, with no restriction from the last hop (tor ``guards_choose_guard``:
      "unless we're vanguards"), so that the target cannot learn the guard by being avoided; a rendezvous
      point that is the guard is chosen again, as a circuit to it cannot be built;
    * second hop: from ``vanguards`` (:meth:`VanguardsLite.choose_layer2`), or a weighted middle when
      vanguards-lite is off (None); never the guard or the last hop;
    * middle: a weighted middle that is none of the hops before nor the target.

    Hops are Fast (tor launches these circuits with CIRCLAUNCH_NEED_CAPACITY), and Stable too for a
    ``stable`` circuit (a long-lived port); families and subnets are not compared (tor
    ``build_vanguard_middle_exclude_list``). With ``bridges`` (UseBridges) ``guards`` is the bridges'
    sample and the first hop a bridge whose descriptor is held. Returns the path and the guard choice to
    report the circuit's outcome with; raises :class:`NoPathError` (or a subclass) saying why.
    """
    if purpose.has_target != (target is not None):
        raise PathError(f"a {purpose.value} circuit {'needs' if purpose.has_target else 'takes no'} target")
    if target is not None and (not isinstance(target, bytes) or len(target) != 20):
        raise PathError(f"the target must be a 20-byte RSA identity, not {target!r}")
    rendezvous = None
    if target is None:
        middle_only = frozenset(node.relay.rsa_id for node in selector.nodes if "MiddleOnly" in node.flags)
        rendezvous = selector.choose_middle(rng, avoid=middle_only, stable=stable)
        last_id = rendezvous.relay.rsa_id
    else:
        last_id = target
    if bridges is None:
        choice = guards.pick(now, GuardUsage.TRAFFIC,
                             has_descriptor=lambda fingerprint: selector.node(fingerprint) is not None)
        guard, bridge = selector.node(choice.fingerprint), None
        assert guard is not None        # has_descriptor accepted it
    else:
        choice = guards.pick(now, GuardUsage.TRAFFIC,
                             has_descriptor=lambda fingerprint: bridges.descriptor(fingerprint) is not None)
        guard, bridge = None, bridges.target(choice.fingerprint)
    guard_id = bytes.fromhex(choice.fingerprint)
    try:
        if rendezvous is not None and last_id == guard_id:
            # G - L2 - G cannot be built: the second hop refuses to extend back to its previous hop (tor
            # circuit_extend, "Client asked me to extend back to the previous hop"). tor launches such a circuit,
            # sees it fail and chooses again; choosing again now leaves the service the same rendezvous points
            # to see, without the failed circuit (three of them in a row had the stream given up).
            rendezvous = selector.choose_middle(rng, avoid=middle_only | {guard_id}, stable=stable)
            last_id = rendezvous.relay.rsa_id
        chosen = {last_id, guard_id}
        if vanguards is not None:
            layer2 = vanguards.choose_layer2(selector, now, exclude=chosen, rng=rng)
        else:
            layer2 = selector.choose_middle(rng, avoid=chosen, stable=stable)
        middle = None
        if target is not None:
            middle = selector.choose_middle(rng, avoid=chosen | {layer2.relay.rsa_id}, stable=stable)
    except NoPathError:
        guards.cancel(choice)       # no circuit will report on this guard
        raise
    return OnionServicePath(purpose, guard, layer2, middle, rendezvous, bridge), choice
