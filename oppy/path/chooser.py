"""The client's one place for path choice: circuits, one-hop directory paths, and the guard sample.

A :class:`PathChooser` holds the guard sample (:class:`~oppy.path.guards.GuardSample`) and the
:class:`~oppy.netdoc.netdir.NetDir` in use. The circuit manager asks it for three-hop paths, each with
its guard choice, and reports on that choice how the circuit went (guard-spec 4.7-4.9: a circuit through
a non-primary guard waits until no better guard can be had); the directory service hands it each new
NetDir and asks it for the directory guards and caches to fetch from. Sans-IO: time comes from ``clock``, chance from
``rng``.

Persistence belongs to the owner of the state file: :meth:`PathChooser.restore_guards` takes what
:meth:`GuardSample.to_dict` wrote, and observers hear :class:`GuardsChanged` when an outcome changed
the sample (to write it, and to look at the directory information again: a primary guard may be down).
A new consensus updates the sample too (guard-spec ON_CONSENSUS), inside :meth:`PathChooser.set_netdir`,
whose caller saves afterwards.

With bridges (a :class:`~oppy.path.bridges.BridgeSet`, torrc UseBridges), the sample is drawn from the
bridges alone, the first hop of every circuit is a bridge whose descriptor is held, and the bridges are the
only directory sources: no directory cache of the consensus is ever chosen.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from oppy.netdoc.netdir import NO_CONSENSUS, DirInfo, NetDir
from oppy.netdoc.relay import RelayTarget, rsa_id_of
from oppy.netdoc.router import RouterDescriptor
from oppy.netdoc.weights import Position
from oppy.path.bridges import BridgeSet
from oppy.path.guards import (BRIDGE_ADDRESS_KEY, GuardChoice, GuardSample, GuardUsage, NoGuardAvailableError,
                              SampledGuard, choose_path)
from oppy.path.selection import LONG_LIVED_PORTS, NoPathError, PathNode, PathSelector
from oppy.path.vanguards import (
    OnionServicePurpose,
    VanguardsLite,
    VanguardsLiteParams,
    choose_onion_service_path,
    vanguards_lite_enabled,
)

__all__ = ["PathChooser", "GuardsChanged"]

log = logging.getLogger(__name__)

# tor-spec "Subprotocol versioning": Conflux=1 is the linking and switching of prop 329.
PROTOVER_CONFLUX = 1


@dataclass(frozen=True, slots=True)
class GuardsChanged:
    """A guard's outcome changed the sample; ``needs_saving`` when its durable state did (a newly
    confirmed guard) and the state file should be written."""

    needs_saving: bool


class PathChooser:
    """Chooses every path oppy builds, from the NetDir in use and the guard sample."""

    def __init__(self, *, rng: random.Random | None = None, clock: Callable[[], float] = time.time,
                 enforce_distinct_subnets: bool = True,
                 long_lived_ports: Iterable[int] = LONG_LIVED_PORTS, vanguards_lite: bool | None = None,
                 bridges: BridgeSet | None = None) -> None:
        self.rng = rng if rng is not None else random.SystemRandom()
        self.clock = clock
        #: No two relays of a path in one IPv4 /16 or IPv6 /32 (torrc EnforceDistinctSubnets).
        self.enforce_distinct_subnets = enforce_distinct_subnets
        #: Ports whose circuits take Stable relays only (torrc LongLivedPorts).
        self.long_lived_ports = frozenset(long_lived_ports)
        #: UseBridges: the bridges every circuit starts at and every document comes from; None otherwise.
        self.bridges = bridges
        self.guards = GuardSample(rng=self.rng)
        #: VanguardsLiteEnabled (None: auto, the consensus's ``vanguards-lite-enabled``), and the layer-2 set
        #: onion-service circuits take their second hop from when it is on (proposal 333; kept in memory).
        self.vanguards_lite = vanguards_lite
        self.vanguards = VanguardsLite(rng=self.rng)
        self._use_bridges()
        self._netdir: NetDir | None = None
        self._observers: list[Callable[[GuardsChanged], None]] = []

    # ---- what it chooses from -----------------------------------------------------------

    @property
    def netdir(self) -> NetDir | None:
        return self._netdir

    def set_netdir(self, netdir: NetDir) -> None:
        """Choose from ``netdir`` from now on; a new consensus also updates the guard sample."""
        previous, self._netdir = self._netdir, netdir
        if previous is None or previous.consensus is not netdir.consensus:
            self.guards.update_from_consensus(netdir.consensus, self.clock())

    def restore_guards(self, state: Any) -> None:
        """Take the guard sample ``state`` (:meth:`GuardSample.to_dict` output) describes; raises
        :class:`~oppy.path.guards.GuardStateError` if it is malformed."""
        self.guards = GuardSample.from_dict(state, rng=self.rng)
        if self.bridges is not None:
            self._remember_bridge_identities(self.bridges)
        self._use_bridges()

    def _remember_bridge_identities(self, bridges: BridgeSet) -> None:
        """A Bridge line without a fingerprint takes the identity the state remembers for its address
        (its descriptor fetch, made without an expected identity, learns it again if it changed)."""
        for guard in self.guards.guards:
            addrport = guard.extra.get(BRIDGE_ADDRESS_KEY)
            if not guard.listed or not isinstance(addrport, str):     # (unlisted: an identity it had before)
                continue
            host, _, port = addrport.rpartition(":")
            if port.isdigit() and bridges.learn_identity(host.strip("[]"), int(port), guard.fingerprint,
                                                         remembered=True):
                log.info("Bridge at %s: using the identity $%s remembered for it (its descriptor is asked for "
                         "again without an expected identity).", addrport, guard.fingerprint)

    def _use_bridges(self) -> None:
        if self.bridges is not None:
            bridges = self.bridges
            self.guards.use_bridges(((fingerprint, bridges.nickname(fingerprint))
                                     for fingerprint in bridges.fingerprints()), self.clock(),
                                    bridges.addresses())

    @property
    def state_key(self) -> str:
        """Where the guard sample is kept in the state file: the bridges' sample apart from the relays' one,
        so that turning UseBridges on and off loses neither (tor keeps both guard selections too)."""
        return "bridges" if self.bridges is not None else "guards"

    def learned_bridge_descriptor(self, descriptor: RouterDescriptor, at: tuple[str, int] | None = None) -> bool:
        """A configured bridge's verified descriptor: circuits may start at it now. ``at``: the address
        and port of the Bridge line without a fingerprint it was fetched from (whose link proved the same
        identity), which learns that identity. False if it is not one of the bridges."""
        if self.bridges is None:
            return False
        if at is not None and not self.bridges.learn_identity(*at, descriptor.fingerprint):
            return False
        if not self.bridges.learned(descriptor):
            return False
        self._use_bridges()
        self._guards_changed()
        return True

    def add_observer(self, observer: Callable[[GuardsChanged], None]) -> None:
        self._observers.append(observer)

    def remove_observer(self, observer: Callable[[GuardsChanged], None]) -> None:
        self._observers = [known for known in self._observers if known is not observer]

    def prepare(self, netdir: NetDir) -> PathSelector:
        """The path selector of ``netdir``, built once per NetDir and kept in it (pure: the directory
        builds it in a worker thread before the reactor needs it)."""
        enforce, long_lived = self.enforce_distinct_subnets, self.long_lived_ports
        return netdir.derived(("path selector", enforce, long_lived), lambda: PathSelector(
            netdir.consensus, netdir.microdescs, enforce_distinct_subnets=enforce, long_lived_ports=long_lived))

    def needs_stable(self, port: int | None) -> bool:
        """Does a circuit for ``port`` need Stable relays on every hop (a long-lived port)?"""
        return port is not None and port in self.long_lived_ports

    @property
    def selector(self) -> PathSelector:
        """The path selector of the NetDir in use."""
        if self._netdir is None:
            raise NoPathError("no consensus yet")
        return self.prepare(self._netdir)

    # ---- circuits -----------------------------------------------------------------------

    def choose_circuit_path(self, port: int | None = None, exclude: Iterable[bytes | str] = (),
                            rng: random.Random | None = None) -> tuple[list[RelayTarget], GuardChoice | None]:
        """A three-hop path in circuit order (guard, middle, exit), chosen exit first, and the guard choice
        the circuit's outcome is reported on (:meth:`guard_succeeded` ...).

        The exit's policy summary accepts ``port`` (any port if None); the guard is a usable guard of
        the sample (primary guards first); a long-lived port gets Stable relays on every hop; relays
        whose RSA identity is in ``exclude`` are avoided. Raises :class:`NoPathError` if impossible.
        """
        avoid = {rsa_id for rsa_id in map(rsa_id_of, exclude) if rsa_id is not None}
        rng = rng if rng is not None else self.rng
        if self.bridges is not None:
            return self._choose_bridge_path(self.bridges, port, avoid, rng)
        path, choice = choose_path(self.selector, self.guards, self.clock(), rng, port, avoid=avoid)
        return [node.target for node in path.hops], choice

    def _choose_bridge_path(self, bridges: BridgeSet, port: int | None, avoid: set[bytes],
                            rng: random.Random, exit_node: PathNode | None = None,
                            not_exits: frozenset[bytes] = frozenset()) -> tuple[list[RelayTarget], GuardChoice]:
        """The exit first (`exit_node` if given, else drawn avoiding `not_exits` too), then a bridge of the
        sample whose descriptor is held (not the exit, not avoided, not in its subnet), then a middle that is
        neither the bridge nor in its subnet (tor keeps a bridge apart from the other hops as it does a
        guard)."""
        selector = self.selector
        enforce = self.enforce_distinct_subnets

        def fits_exit(guard: SampledGuard, exit_node: PathNode) -> bool:
            rsa_id = bytes.fromhex(guard.fingerprint)
            if rsa_id == exit_node.relay.rsa_id or rsa_id in avoid or guard.fingerprint not in bridges.lines:
                return False
            return not (enforce and exit_node.in_subnet_of(bridges.lines[guard.fingerprint].address))

        known = sum(1 for fingerprint in bridges.fingerprints() if bridges.descriptor(fingerprint) is not None)
        if not known:
            raise NoGuardAvailableError(f"no bridge can start this circuit: none of the {len(bridges.lines)} "
                                        "bridge descriptor(s) is known yet")
        # An exit that no bridge with a descriptor can go with is drawn again without it: the exit comes from
        # those some bridge can go with (tor would fail such a circuit at its first hop and choose anew).
        avoid_exit = avoid | not_exits
        while exit_node is None:
            exit_node = selector.choose_exit(rng, port, avoid=avoid_exit)
            if not any(bridges.descriptor(guard.fingerprint) is not None and fits_exit(guard, exit_node)
                       for guard in self.guards.guards):
                avoid_exit.add(exit_node.relay.rsa_id)
                exit_node = None

        try:
            choice = self.guards.pick(self.clock(), GuardUsage.TRAFFIC,
                                      restriction=lambda guard: fits_exit(guard, exit_node),
                                      has_descriptor=lambda fingerprint: bridges.descriptor(fingerprint) is not None)
        except NoGuardAvailableError as exc:
            raise NoGuardAvailableError(f"no bridge can start this circuit: {exc} ({known} of "
                                        f"{len(bridges.lines)} bridge descriptor(s) known)") from None
        bridge = bridges.target(choice.fingerprint)
        avoid_middle = avoid | {bridge.rsa_id}
        while True:     # drawn again without each middle in the bridge's subnet: the same distribution
            middle = selector.choose_middle(rng, exclude=(exit_node,), avoid=avoid_middle,
                                            stable=self.needs_stable(port))
            if not (enforce and middle.in_subnet_of(bridge.address)):
                return [bridge, middle.target, exit_node.target], choice
            avoid_middle.add(middle.relay.rsa_id)

    def choose_conflux_path(self, port: int | None = None, exit_id: bytes | None = None,
                            exclude_tiers: Iterable[Iterable[bytes]] = ((),)
                            ) -> tuple[list[RelayTarget], GuardChoice | None]:
        """A conflux leg's path (conflux_pool.c conflux_launch_leg): the exit `exit_id` of the set (a new
        set: an exit listing Conflux=1), a guard and middle avoiding the relays of the first of
        `exclude_tiers` that leaves a path (the other legs' guards and middles, then fewer: tor's
        conflux_add_guards_to_exclude_list and conflux_add_middles_to_exclude_list, where the path rules
        allow). Raises NoPathError when no tier does. With bridges a leg starts at a bridge as any circuit
        does: another bridge than the other legs' where one fits, else the same (tor's guard exclusion is a
        preference too); a new set's exit is one some bridge can go with."""
        selector = self.selector
        exit_node: PathNode | None = None
        not_conflux: frozenset[bytes] = frozenset()
        if exit_id is None:
            not_conflux = frozenset(node.relay.rsa_id for node in selector.candidates(Position.EXIT, port, strict=False)
                                    if not node.relay.supports_protocol("Conflux", PROTOVER_CONFLUX))
            if self.bridges is None:
                exit_node = selector.choose_exit(self.rng, port, avoid=not_conflux)
        else:
            exit_node = selector.node(exit_id.hex())
            if exit_node is None:
                raise NoPathError(f"the conflux set's exit ${exit_id.hex().upper()} is not in the consensus")
        error: NoPathError | None = None
        for tier in exclude_tiers:
            try:
                if self.bridges is not None:
                    return self._choose_bridge_path(self.bridges, port, set(tier), self.rng, exit_node, not_conflux)
                path, choice = choose_path(selector, self.guards, self.clock(), self.rng, port,
                                           avoid=frozenset(tier), exit_node=exit_node)
            except NoPathError as exc:
                error = exc
                continue
            return [node.target for node in path.hops], choice
        raise error if error is not None else NoPathError("no exclusion tier given")

    def choose_path(self, port: int | None = None, exclude: Iterable[bytes | str] = (),
                    rng: random.Random | None = None) -> list[RelayTarget]:
        """The path of :meth:`choose_circuit_path` alone, for a circuit whose guard outcome nobody reports."""
        return self.choose_circuit_path(port, exclude, rng)[0]

    def choose_onion_service_path(self, purpose: OnionServicePurpose, target: bytes | None = None,
                                  rng: random.Random | None = None) -> tuple[list[RelayTarget], GuardChoice]:
        """The relays oppy chooses for an onion-service circuit (guard, second hop, then a middle before a
        ``target`` or the rendezvous point itself), and the guard choice to report on; the caller appends the
        target. The second hop comes from the vanguards-lite set when it is on, as in tor 0.4.8 and later.
        Raises :class:`NoPathError` if impossible."""
        selector = self.selector
        params = VanguardsLiteParams.from_consensus(selector.consensus)
        vanguards = None
        if vanguards_lite_enabled(self.vanguards_lite, params):
            self.vanguards.params = params
            vanguards = self.vanguards
        path, choice = choose_onion_service_path(selector, self.guards, vanguards, purpose, self.clock(),
                                                 rng if rng is not None else self.rng, target, bridges=self.bridges)
        return path.targets(), choice

    def exit_allows(self, rsa_id: bytes, port: int) -> bool:
        """The relay's microdescriptor policy summary, in the NetDir in use, accepts ``port``."""
        return self._netdir is not None and self._netdir.exit_allows(rsa_id, port)

    # ---- directory fetches ------------------------------------------------------------------

    def directory_guards(self, limit: int | None = None) -> list[RelayTarget]:
        """Usable sampled guards with V2Dir and a microdescriptor, best first (guard-spec: directory
        requests use the guards too, one of the first ``guard-n-primary-dir-guards-to-use`` at random). With
        bridges: the usable bridges, whether or not their descriptors are held."""
        if self.bridges is not None:
            fingerprints = self.guards.directory_guards(self.clock(), limit=limit)
            if not fingerprints:        # as pick() does: with every bridge down, each is worth a retry
                self.guards.retry_all_down()
                fingerprints = self.guards.directory_guards(self.clock(), limit=limit)
            # Then the lines without a fingerprint not identified yet: a directory fetch learns who they are.
            targets = [self.bridges.target(fingerprint) for fingerprint in fingerprints]
            targets += self.bridges.unlearned_targets()
            return targets[:limit] if limit is not None else targets
        if self._netdir is None or not self._netdir.microdescs:
            return []
        selector = self.selector

        def accept(fingerprint: str) -> bool:
            node = selector.node(fingerprint)
            return node is not None and "V2Dir" in node.relay.flags

        return [selector.node(fingerprint).target
                for fingerprint in self.guards.directory_guards(self.clock(), accept, limit)]

    def directory_targets(self, limit: int) -> list[RelayTarget]:
        """Where to fetch directory documents over BEGIN_DIR, in turn: up to ``limit`` directory guards,
        then one other V2Dir relay chosen by its directory weight. Empty until there are guards."""
        targets = self.directory_guards(limit)
        if targets:
            cache = self.directory_cache(targets)
            if cache is not None:
                targets.append(cache)
        return targets

    def directory_cache(self, avoid: list[RelayTarget]) -> RelayTarget | None:
        """A V2Dir relay chosen by its directory weight, none of ``avoid`` (the directory guards asked
        first); None without a NetDir, or when every draw hits one of them, or with bridges."""
        if self.bridges is not None:
            return None
        chosen = {target.rsa_id for target in avoid}
        for _ in range(len(avoid) + 1):          # each draw may hit one of the guards again
            try:
                node = self.selector.choose_directory(self.rng)
            except NoPathError:
                return None
            if node.relay.rsa_id not in chosen:
                return node.target
        return None

    # ---- outcomes ---------------------------------------------------------------------------

    def guard_succeeded(self, choice: GuardChoice) -> bool:
        """The circuit of ``choice`` is built: True if it may carry streams now, else it waits for a better
        guard (guard-spec 4.8)."""
        usable = self.guards.succeeded(choice, self.clock())
        self._guards_changed()
        return usable

    def guard_failed(self, choice: GuardChoice) -> None:
        """The circuit of ``choice`` failed at its first hop, not by the guard's DESTROY: the guard is
        unreachable for now (guard-spec 4.7)."""
        self.guards.failed(choice, self.clock())
        self._guards_changed()

    def guard_cancelled(self, choice: GuardChoice) -> None:
        """The circuit of ``choice`` went away saying nothing about its guard."""
        self.guards.cancel(choice)

    def upgrade_waiting(self, choices: Iterable[GuardChoice]) -> list[GuardChoice]:
        """Of the live circuits' ``choices``, the waiting ones that may carry streams now (guard-spec 4.9)."""
        return self.guards.upgrade_waiting(choices, self.clock())

    def guard_should_expire(self, choice: GuardChoice) -> bool:
        """Has the circuit of ``choice`` waited for a better guard for too long?"""
        return self.guards.should_expire(choice, self.clock())

    def mark_guard_up(self, identity: bytes | str) -> None:
        """A link or circuit through this relay worked (a guard of the sample: it may be confirmed)."""
        self._mark_guard(identity, up=True)

    def mark_guard_down(self, identity: bytes | str) -> None:
        """A link or circuit to this relay failed at its first hop: a sampled guard is skipped until its
        retry time."""
        self._mark_guard(identity, up=False)

    def _mark_guard(self, identity: bytes | str, up: bool) -> None:
        rsa_id = rsa_id_of(identity)
        if rsa_id is None:
            return
        now = self.clock()
        if up:
            self.guards.note_internet_connectivity(now)
        try:
            if up:
                self.guards.note_success(rsa_id.hex().upper(), now)
            else:
                self.guards.note_failure(rsa_id.hex().upper(), now)
        except KeyError:
            return      # not a sampled guard (a middle or exit, or a random directory cache)
        self._guards_changed()

    def _guards_changed(self) -> None:
        event = GuardsChanged(needs_saving=self.guards.dirty)
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:  # noqa: BLE001 - an observer's bug must not stop path choice
                log.exception("guard observer %r failed", observer)

    # ---- enough directory information -------------------------------------------------------

    def dir_info(self) -> DirInfo:
        """The NetDir's answer to "can circuits be built?", with the guard sample's half: the first
        primary guards need their microdescriptors (tor ``guard_selection_get_err_str_if_dir_info_missing``)."""
        if self._netdir is None:
            return NO_CONSENSUS
        now = self.clock()
        if self.bridges is not None:
            return self._bridge_dir_info(self.bridges, self._netdir, now)

        def primary_guards() -> tuple[list[str], int]:
            guards = self.guards
            return ([guard.fingerprint for guard in guards.primaries_to_check_for_descriptors(now)],
                    guards.primaries_needing_descriptors())

        return self._netdir.dir_info(now, primary_guards)

    def _bridge_dir_info(self, bridges: BridgeSet, netdir: NetDir, now: float) -> DirInfo:
        """The NetDir's answer, with the bridges' half: the first primary bridges need their descriptors
        (tor's rule for primary guards, applied to the bridges of the sample)."""
        info = netdir.dir_info(now)
        if not info.enough:
            return info
        primaries = self.guards.primaries_to_check_for_descriptors(now)
        if not primaries:
            return DirInfo(False, "None of our primary bridges is reachable right now.")
        missing = sum(1 for guard in primaries if bridges.descriptor(guard.fingerprint) is None)
        if missing:
            return DirInfo(False, f"We're missing descriptors for {missing}/"
                                  f"{self.guards.primaries_needing_descriptors()} of our primary entry guards "
                                  "(bridges).")
        return info
