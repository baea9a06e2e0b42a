"""The client's one place for path choice: circuits, one-hop directory paths, and the guard sample.

A :class:`PathChooser` holds the guard sample (:class:`~oppy.path.guards.GuardSample`) and the
:class:`~oppy.netdoc.netdir.NetDir` in use. The circuit manager asks it for three-hop paths and
reports how building through a guard went; the directory service hands it each new NetDir and asks
it for the directory guards and caches to fetch from. Sans-IO: time comes from ``clock``, chance from
``rng``.

Persistence belongs to the owner of the state file: :meth:`PathChooser.restore_guards` takes what
:meth:`GuardSample.to_dict` wrote, and observers hear :class:`GuardsChanged` when an outcome changed
the sample (to write it, and to look at the directory information again: a primary guard may be down).
A new consensus updates the sample too (guard-spec ON_CONSENSUS), inside :meth:`PathChooser.set_netdir`,
whose caller saves afterwards.
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
from oppy.path.guards import GuardSample, choose_path
from oppy.path.selection import NoPathError, PathSelector

__all__ = ["PathChooser", "GuardsChanged"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GuardsChanged:
    """A guard's outcome changed the sample; ``needs_saving`` when its durable state did (a newly
    confirmed guard) and the state file should be written."""

    needs_saving: bool


class PathChooser:
    """Chooses every path oppy builds, from the NetDir in use and the guard sample."""

    def __init__(self, *, rng: random.Random | None = None, clock: Callable[[], float] = time.time,
                 enforce_distinct_subnets: bool = True) -> None:
        self.rng = rng if rng is not None else random.SystemRandom()
        self.clock = clock
        #: No two relays of a path in one IPv4 /16 or IPv6 /32 (torrc EnforceDistinctSubnets).
        self.enforce_distinct_subnets = enforce_distinct_subnets
        self.guards = GuardSample(rng=self.rng)
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

    def add_observer(self, observer: Callable[[GuardsChanged], None]) -> None:
        self._observers.append(observer)

    def remove_observer(self, observer: Callable[[GuardsChanged], None]) -> None:
        self._observers = [known for known in self._observers if known is not observer]

    def prepare(self, netdir: NetDir) -> PathSelector:
        """The path selector of ``netdir``, built once per NetDir and kept in it (pure: the directory
        builds it in a worker thread before the reactor needs it)."""
        enforce = self.enforce_distinct_subnets
        return netdir.derived(("path selector", enforce), lambda: PathSelector(
            netdir.consensus, netdir.microdescs, enforce_distinct_subnets=enforce))

    @property
    def selector(self) -> PathSelector:
        """The path selector of the NetDir in use."""
        if self._netdir is None:
            raise NoPathError("no consensus yet")
        return self.prepare(self._netdir)

    # ---- circuits -----------------------------------------------------------------------

    def choose_path(self, port: int | None = None, exclude: Iterable[bytes | str] = (),
                    rng: random.Random | None = None) -> list[RelayTarget]:
        """A three-hop path in circuit order (guard, middle, exit), chosen exit first.

        The exit's policy summary accepts ``port`` (any port if None); the guard is a usable guard of
        the sample (primary guards first); a long-lived port gets Stable relays on every hop; relays
        whose RSA identity is in ``exclude`` are avoided. Raises :class:`NoPathError` if impossible.
        """
        avoid = {rsa_id for rsa_id in map(rsa_id_of, exclude) if rsa_id is not None}
        path, _choice = choose_path(self.selector, self.guards, self.clock(), rng if rng is not None else self.rng,
                                    port, avoid=avoid)
        # Outcomes come back by the guard's identity (mark_guard_up/down), so the per-circuit choice is not
        # kept: a circuit through a non-primary guard is used when built.
        return [node.target for node in path.hops]

    def exit_allows(self, rsa_id: bytes, port: int) -> bool:
        """The relay's microdescriptor policy summary, in the NetDir in use, accepts ``port``."""
        return self._netdir is not None and self._netdir.exit_allows(rsa_id, port)

    # ---- directory fetches ------------------------------------------------------------------

    def directory_guards(self, limit: int | None = None) -> list[RelayTarget]:
        """Usable sampled guards with V2Dir and a microdescriptor, best first (guard-spec: directory
        requests use the guards too, one of the first ``guard-n-primary-dir-guards-to-use`` at random)."""
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
            chosen = {target.rsa_id for target in targets}
            for _ in range(limit + 1):          # each draw may hit one of the guards again
                try:
                    node = self.selector.choose_directory(self.rng)
                except NoPathError:
                    break
                if node.relay.rsa_id not in chosen:
                    targets.append(node.target)
                    break
        return targets

    def choose_directory_path(self, rng: random.Random | None = None) -> list[RelayTarget]:
        """A one-hop path for BEGIN_DIR: the first usable directory guard, else a V2Dir relay chosen by
        its directory weight. Raises :class:`NoPathError` without a NetDir."""
        targets = self.directory_guards(1)
        if targets:
            return targets
        return [self.selector.choose_directory(rng if rng is not None else self.rng).target]

    # ---- outcomes ---------------------------------------------------------------------------

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

        def primary_guards() -> tuple[list[str], int]:
            guards = self.guards
            return ([guard.fingerprint for guard in guards.primaries_to_check_for_descriptors(now)],
                    guards.primaries_needing_descriptors())

        return self._netdir.dir_info(now, primary_guards)
