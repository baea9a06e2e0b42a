"""NetDir: one immutable snapshot of the network as this client knows it (arti's ``tor-netdir``).

A verified consensus and the microdescriptors held for it, with what is read from them: bandwidth
weights, consensus parameters, relay lookups, exit policies, and tor's "enough directory information"
rule (the primary guards it names come from the path layer). The directory layer produces NetDirs;
path choice, the circuit manager and the control port read them. A new consensus or a new batch of microdescriptors
means a new NetDir, swapped in whole and announced with :class:`NetDirChanged`; nothing in one ever
changes, so a reader may hold one across a reactor turn or hand it to a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from oppy.netdoc.documents import Consensus, MicrodescRecord, RelayRecord
from oppy.netdoc.relay import RSA_ID_HEX_LEN, RelayTarget, relay_target, rsa_id_of
from oppy.netdoc.verify import REASONABLY_LIVE_TIME
from oppy.netdoc.weights import Position, bandwidth_weight_table, relay_weight

__all__ = [
    "NetDir",
    "NetDirChanged",
    "DirInfo",
    "NO_CONSENSUS",
    "PathBandwidth",
    "path_bandwidth",
    "MIN_PATHS_FOR_CIRCS_PCT",
    "MIN_PATHS_FOR_CIRCS_PCT_BOUNDS",
]

#: Default of the ``min_paths_for_circs_pct`` consensus parameter and its bounds (tor
#: nodelist.c ``get_frac_paths_needed_for_circs``, DFLT_PCT_USABLE_NEEDED).
MIN_PATHS_FOR_CIRCS_PCT = 60
MIN_PATHS_FOR_CIRCS_PCT_BOUNDS = (25, 95)

_T = TypeVar("_T")


# ------------------------------------------------------------------------------------------ enough dir info


@dataclass(frozen=True, slots=True)
class DirInfo:
    """Whether there is enough directory information to build circuits, with tor's sentence saying
    why (``update_router_have_minimum_dir_info``; GETINFO status/enough-dir-info)."""

    enough: bool
    status: str


NO_CONSENSUS = DirInfo(False, "We have no usable consensus.")


@dataclass(frozen=True, slots=True)
class _PositionBandwidth:
    digests: tuple[str | None, ...]
    weights: tuple[float, ...]
    total: float

    def fraction_present(self, microdescs: Mapping[str, MicrodescRecord]) -> float:
        """tor ``frac_nodes_with_descriptors``: weighted share of these relays with a microdesc."""
        if not self.digests:
            return 0.0
        if self.total <= 0.0:
            present = sum(1 for digest in self.digests if digest in microdescs)
            return present / len(self.digests)
        return sum(weight for digest, weight in zip(self.digests, self.weights)
                   if digest in microdescs) / self.total


@dataclass(frozen=True, slots=True)
class PathBandwidth:
    """Per-position weighted bandwidth of the usable relays of one consensus (tor
    ``compute_frac_paths_available``), to measure how much of it has microdescriptors."""

    guard: _PositionBandwidth
    middle: _PositionBandwidth
    exit: _PositionBandwidth
    usable_digests: frozenset[str]

    def fraction(self, microdescs: Mapping[str, MicrodescRecord]) -> tuple[float, str]:
        """(fraction of paths available, tor's explanation string)."""
        f_guard = self.guard.fraction_present(microdescs)
        f_middle = self.middle.fraction_present(microdescs)
        f_exit = self.exit.fraction_present(microdescs)
        have_exit = any(
            digest in microdescs and microdescs[digest].exit_policy.allows_any_port()
            for digest in self.exit.digests)
        if not have_exit and f_exit <= 0.0:
            f_exit = f_middle
        f_path = f_guard * f_middle * f_exit
        status = (f"{int(f_guard * 100)}% of guards bw, {int(f_middle * 100)}% of midpoint bw, and "
                  f"{int(f_exit * 100)}% of "
                  f"{'exit bw' if have_exit else 'end bw (no exits in consensus, using mid)'} = "
                  f"{int(f_path * 100)}% of path bw")
        return f_path, status


def _usable(flags: frozenset[str]) -> bool:
    return "Running" in flags and "Valid" in flags


def path_bandwidth(consensus: Consensus) -> PathBandwidth:
    """Precompute, per position, the usable relays' digests and weights."""
    def position(relays, where: Position) -> _PositionBandwidth:
        table = bandwidth_weight_table(consensus, where)
        weights = tuple(relay_weight(relay, table) for relay in relays)
        return _PositionBandwidth(tuple(relay.microdesc_digest for relay in relays), weights, sum(weights))

    usable = [relay for relay in consensus.relays if _usable(relay.flags)]
    return PathBandwidth(
        guard=position([relay for relay in usable if "Guard" in relay.flags], Position.GUARD),
        middle=position(usable, Position.MIDDLE),
        exit=position([relay for relay in usable if "Exit" in relay.flags], Position.EXIT),
        usable_digests=frozenset(relay.microdesc_digest for relay in usable if relay.microdesc_digest),
    )


# ------------------------------------------------------------------------------------------ the snapshot


#: tor compares nicknames with strcasecmp: ASCII case only.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True, eq=False)
class NetDir:
    """A consensus and the microdescriptors held for it, never changed once made.

    ``microdescs`` is copied on construction (digest -> record; it may hold microdescriptors of
    relays this consensus no longer lists, which no lookup reaches). ``bandwidth`` is computed
    from the consensus unless given (NetDirs of one consensus share it).
    """

    consensus: Consensus
    microdescs: Mapping[str, MicrodescRecord] = field(default_factory=dict)
    bandwidth: PathBandwidth | None = None
    #: Values derived from this snapshot by higher layers, built once (:meth:`derived`).
    _derived: dict[Hashable, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "microdescs", MappingProxyType(dict(self.microdescs)))
        if self.bandwidth is None:
            object.__setattr__(self, "bandwidth", path_bandwidth(self.consensus))

    def __repr__(self) -> str:
        return (f"<NetDir valid-after {self.consensus.valid_after}: {len(self.consensus.relays)} relays, "
                f"{len(self.microdescs)} microdescriptors>")

    def with_microdescs(self, microdescs: Mapping[str, MicrodescRecord]) -> NetDir:
        """The same consensus with another set of microdescriptors."""
        return NetDir(self.consensus, microdescs, self.bandwidth)

    def derived(self, key: Hashable, build: Callable[[], _T]) -> _T:
        """The value ``build()`` makes from this snapshot, built on the first call for ``key`` and kept
        (the path layer keeps its selector here: once per NetDir, possibly built in a worker thread).
        Two threads asking at once may both build; the first result stored is kept and returned to both."""
        try:
            return self._derived[key]
        except KeyError:
            return self._derived.setdefault(key, build())

    # ---- what the consensus says ----------------------------------------------------

    def param(self, name: str, default: int, low: int | None = None, high: int | None = None) -> int:
        """A consensus parameter, clamped to [low, high] (dir-spec param-spec)."""
        return self.consensus.param(name, default, low, high)

    @property
    def usable_microdesc_digests(self) -> frozenset[str]:
        """Microdescriptor digests of the Running and Valid relays: the ones a client fetches."""
        return self.bandwidth.usable_digests

    # ---- relays ---------------------------------------------------------------------

    def relay_by_id(self, rsa_id: bytes) -> RelayRecord | None:
        return self.consensus.relay_by_id(rsa_id)

    def relay_by_fingerprint(self, fingerprint: str) -> RelayRecord | None:
        return self.consensus.relay_by_fingerprint(fingerprint)

    def relay_by_nickname(self, nickname: str) -> RelayRecord | None:
        """The first relay listed with this nickname, in any ASCII case (tor's strcasecmp: a KELVIN SIGN is
        not a "k"); nicknames are not unique."""
        wanted = nickname.translate(_ASCII_LOWER)
        return next((relay for relay in self.consensus.relays if relay.nickname.translate(_ASCII_LOWER) == wanted),
                    None)

    def microdesc_of(self, relay: RelayRecord) -> MicrodescRecord | None:
        return self.microdescs.get(relay.microdesc_digest) if relay.microdesc_digest else None

    def relay_target(self, identity: bytes | str) -> RelayTarget | None:
        """The listed relay with this RSA identity (20 bytes, or hex with optional ``$``/``~nick``), or None.

        Its keys come from its microdescriptor (None if that is missing)."""
        rsa_id = rsa_id_of(identity)
        relay = self.consensus.relay_by_id(rsa_id) if rsa_id is not None else None
        return relay_target(relay, self.microdesc_of(relay)) if relay is not None else None

    def find_relay(self, name: str) -> RelayTarget | None:
        """The relay a controller names by ``$FP``, ``$FP~nick``, ``$FP=nick``, ``FP`` or nickname."""
        text = name.strip()
        hex_part = text[1:] if text.startswith("$") else text
        for separator in ("~", "="):
            hex_part = hex_part.split(separator, 1)[0]
        if len(hex_part) == RSA_ID_HEX_LEN and (rsa_id := rsa_id_of(hex_part)) is not None:
            return self.relay_target(rsa_id)
        if text.startswith("$"):
            return None
        relay = self.relay_by_nickname(text)
        return relay_target(relay, self.microdesc_of(relay)) if relay is not None else None

    def exit_allows(self, rsa_id: bytes, port: int) -> bool:
        """The relay's microdescriptor policy summary accepts ``port``."""
        relay = self.consensus.relay_by_id(rsa_id)
        microdesc = self.microdesc_of(relay) if relay is not None else None
        return microdesc is not None and microdesc.exit_policy.allows_port(port)

    # ---- enough directory information (tor nodelist.c) ------------------------------

    def paths_needed(self) -> float:
        """The share of weighted paths that must have microdescriptors (``min_paths_for_circs_pct``)."""
        low, high = MIN_PATHS_FOR_CIRCS_PCT_BOUNDS
        return self.param("min_paths_for_circs_pct", MIN_PATHS_FOR_CIRCS_PCT, low, high) / 100

    def path_fraction(self) -> tuple[float, str]:
        """(share of weighted guard x middle x exit paths whose relays have microdescriptors, tor's
        explanation)."""
        return self.bandwidth.fraction(self.microdescs)

    def dir_info(self, now: float, primary_guards: Callable[[], tuple[Sequence[str], int]] | None = None
                 ) -> DirInfo:
        """tor ``update_router_have_minimum_dir_info``: a reasonably live consensus, microdescriptors for
        enough of the weighted paths, and for the primary guards.

        ``primary_guards`` is asked, only once the paths are enough, for (the fingerprints of the
        primary guards that must have a microdescriptor, how many are wanted): the guard sample's half
        of the rule (tor ``guard_selection_get_err_str_if_dir_info_missing``), which the path layer
        holds.
        """
        if now > self.consensus.valid_until + REASONABLY_LIVE_TIME:
            return DirInfo(False, "We have no recent usable consensus.")
        paths, status = self.path_fraction()
        usable = self.usable_microdesc_digests
        present = sum(1 for digest in usable if digest in self.microdescs)
        if paths < self.paths_needed():
            return DirInfo(False, f"We need more microdescriptors: we have {present}/{len(usable)}, and can "
                                  f"only build {int(paths * 100)}% of likely paths. (We have {status}.)")
        if primary_guards is not None:
            fingerprints, wanted = primary_guards()
            missing = self._lacking_microdescs(fingerprints)
            if missing:
                return DirInfo(False, f"We're missing descriptors for {missing}/{wanted} of our primary entry "
                                      f"guards (total microdescriptors: {present}/{len(usable)}).")
        return DirInfo(True, f"We have enough directory information ({status}).")

    def _lacking_microdescs(self, fingerprints: Iterable[str]) -> int:
        missing = 0
        for fingerprint in fingerprints:
            relay = self.consensus.relay_by_fingerprint(fingerprint)
            if relay is None or relay.microdesc_digest not in self.microdescs:
                missing += 1
        return missing


@dataclass(frozen=True, slots=True)
class NetDirChanged:
    """The directory layer swapped in a new NetDir (a new consensus, or more microdescriptors)."""

    netdir: NetDir
    previous: NetDir | None

    @property
    def new_consensus(self) -> bool:
        """Did the consensus change (not only the microdescriptors)?"""
        return self.previous is None or self.previous.consensus is not self.netdir.consensus
