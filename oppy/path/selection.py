"""Bandwidth-weighted relay choice for each path position, with path constraints.

Sans-IO: a :class:`PathSelector` is built from a parsed consensus and its
microdescriptors, and every choice takes a ``random.Random`` (pass a seeded one
for determinism; the default is ``random.SystemRandom``). Rules (path-spec
"Path selection and constraints", C tor ``node_select.c`` and ``circuitbuild.c``):

* every hop needs ``Running``, ``Valid`` and a microdescriptor (with its ntor key);
* guard: ``Guard`` + ``Fast`` (+ ``V2Dir`` for a directory guard), not ``MiddleOnly``;
  middle: ``Fast``; exit: not ``BadExit``/``MiddleOnly``, ``Fast``, and a policy
  summary accepting the port. The ``Exit`` flag is not required (C tor
  ``choose_good_exit_server_general`` never tests it): a relay without it is
  weighted as the class it is in (``Wem``, or ``Weg`` for a guard);
* a circuit for a long-lived port (:data:`LONG_LIVED_PORTS`) needs ``Stable`` on
  every hop, the middle included (C tor ``need_uptime``: ``CRN_NEED_UPTIME`` for
  each position). As C tor does, ``Fast``/``Stable`` are dropped when nothing else fits;
* weight = consensus bandwidth x W(position, class) / ``bwweightscale``;
* the exit is chosen first, then the guard, then the middle; no relay twice, no
  two of one family, no two in one IPv4 /16 or IPv6 /32 (unless turned off).
"""

from __future__ import annotations

import ipaddress
import random
from bisect import bisect_right
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

from oppy.config import DEFAULT_LONG_LIVED_PORTS
from oppy.netdoc.documents import Consensus, MicrodescRecord, RelayRecord
from oppy.netdoc.relay import RelayTarget, relay_target
from oppy.netdoc.weights import Position, bandwidth_weight_table, relay_weight

__all__ = [
    "PathNode",
    "Path",
    "PathError",
    "NoPathError",
    "PathSelector",
    "LONG_LIVED_PORTS",
]

#: Ports whose circuits need Stable relays on every hop (path-spec 2.2 "long-lived
#: connections"), unless the ``LongLivedPorts`` option says otherwise.
LONG_LIVED_PORTS = DEFAULT_LONG_LIVED_PORTS
#: Draws tried before filtering the candidate list explicitly (an optimisation
#: only: both ways sample the same conditional distribution).
MAX_REJECTION_DRAWS = 64


_NO_SUBNETS: frozenset[int] = frozenset()


class PathError(ValueError):
    """Base class of path-selection errors."""


class NoPathError(PathError):
    """No relay satisfies the position's requirements and the path constraints."""


def _family_contains(microdesc: MicrodescRecord, node: PathNode) -> bool:
    """Does this ``family`` line name ``node``, by identity or by nickname in any case
    (tor ``nodefamily_contains_node``)?"""
    if node.fingerprint in microdesc.family:
        return True
    return bool(microdesc.family_nicknames) and node.nickname.lower() in microdesc.family_nicknames


class PathNode:
    """A usable relay: its consensus entry, microdescriptor and precomputed keys."""

    __slots__ = ("relay", "microdesc", "fingerprint", "_subnet_v4", "_subnets_v6")

    def __init__(self, relay: RelayRecord, microdesc: MicrodescRecord):
        self.relay = relay
        self.microdesc = microdesc
        self.fingerprint = relay.fingerprint
        octets = relay.address.split(".")
        self._subnet_v4 = (int(octets[0]) << 8) | int(octets[1])     # the /16
        subnets = set()
        for address, _port in relay.ipv6_or_addresses + microdesc.ipv6_or_addresses:
            try:
                subnets.add(int(ipaddress.IPv6Address(address)) >> 96)   # the /32
            except ValueError:
                continue    # an IPv4 "a" line: the /16 check covers the main address
        self._subnets_v6 = frozenset(subnets) if subnets else _NO_SUBNETS

    @property
    def nickname(self) -> str:
        return self.relay.nickname

    @property
    def flags(self) -> frozenset[str]:
        return self.relay.flags

    @property
    def target(self) -> RelayTarget:
        """What a circuit needs to reach this relay."""
        return relay_target(self.relay, self.microdesc)

    def same_subnet(self, other: PathNode) -> bool:
        """Same IPv4 /16 or a shared IPv6 /32 (tor ``router_addrs_in_same_network``)."""
        return self._subnet_v4 == other._subnet_v4 or not self._subnets_v6.isdisjoint(other._subnets_v6)

    def in_subnet_of(self, address: str) -> bool:
        """Does this relay share the IPv4 /16 or IPv6 /32 of ``address`` (a bridge's, which is in no
        consensus)?"""
        ip = ipaddress.ip_address(address)
        if ip.version == 4:
            return (int(ip) >> 16) == self._subnet_v4
        return (int(ip) >> 96) in self._subnets_v6

    def __repr__(self) -> str:
        return f"PathNode({self.relay.nickname} ${self.fingerprint})"


@dataclass(frozen=True, slots=True)
class Path:
    """A three-hop path, in circuit order."""

    guard: PathNode
    middle: PathNode
    exit: PathNode

    @property
    def hops(self) -> tuple[PathNode, PathNode, PathNode]:
        return (self.guard, self.middle, self.exit)


class _WeightedList:
    """Candidates with cumulative weights for O(log n) weighted draws."""

    __slots__ = ("nodes", "weights", "cumulative", "total")

    def __init__(self, nodes: list[PathNode], weights: list[float]):
        self.nodes = nodes
        self.weights = weights
        self.cumulative = list(accumulate(weights))
        self.total = self.cumulative[-1] if self.cumulative else 0.0

    def draw(self, rng: random.Random) -> PathNode:
        if self.total <= 0.0:
            return self.nodes[rng.randrange(len(self.nodes))]     # all weights 0: uniform
        index = bisect_right(self.cumulative, rng.random() * self.total)
        return self.nodes[min(index, len(self.nodes) - 1)]


class PathSelector:
    """Chooses relays for circuits from one consensus and its microdescriptors.

    Build a new selector whenever the consensus or the microdescriptor set
    changes; it precomputes candidate lists and cumulative weights so a choice
    costs a few microseconds.
    """

    def __init__(self, consensus: Consensus, microdescs: Mapping[str, MicrodescRecord], *,
                 enforce_distinct_subnets: bool = True,
                 long_lived_ports: Iterable[int] = LONG_LIVED_PORTS):
        self.consensus = consensus
        self.enforce_distinct_subnets = enforce_distinct_subnets
        self.long_lived_ports = frozenset(long_lived_ports)
        # Consensus parameters that switch family sources on or off (tor nodelist.c).
        self._use_family_lists = consensus.param("use-family-lists", 1, 0, 1) == 1
        self._use_family_ids = consensus.param("use-family-ids", 1, 0, 1) == 1
        self.nodes: list[PathNode] = []
        self._by_fingerprint: dict[str, PathNode] = {}
        self.missing_microdescs = 0
        for relay in consensus.relays:
            if "Running" not in relay.flags or "Valid" not in relay.flags:
                continue
            microdesc = microdescs.get(relay.microdesc_digest) if relay.microdesc_digest else None
            if microdesc is None:
                self.missing_microdescs += 1
                continue
            node = PathNode(relay, microdesc)
            self.nodes.append(node)
            self._by_fingerprint[node.fingerprint] = node
        self._tables = {position: bandwidth_weight_table(consensus, position) for position in Position}
        self._lists: dict[tuple, _WeightedList] = {}

    # ---- queries -----------------------------------------------------------

    def node(self, fingerprint: str) -> PathNode | None:
        """The usable relay with this hex fingerprint (``$`` optional), if any."""
        return self._by_fingerprint.get(fingerprint.lstrip("$").upper())

    def weight(self, node: PathNode, position: Position) -> float:
        return relay_weight(node.relay, self._tables[position])

    def in_same_family(self, first: PathNode, second: PathNode) -> bool:
        """Each lists the other in ``family`` (by ``$FP`` or by nickname), or they share a
        ``family-ids`` entry (tor ``nodes_in_same_family``)."""
        a, b = first.microdesc, second.microdesc
        if self._use_family_lists and _family_contains(a, second) and _family_contains(b, first):
            return True
        return self._use_family_ids and not a.family_ids.isdisjoint(b.family_ids)

    def conflicts(self, candidate: PathNode, chosen: Iterable[PathNode]) -> str | None:
        """Why ``candidate`` cannot share a path with ``chosen``, or None if it can."""
        for other in chosen:
            if candidate is other or candidate.fingerprint == other.fingerprint:
                return f"{candidate!r} is already in the path"
            if self.in_same_family(candidate, other):
                return f"{candidate!r} is in the same family as {other!r}"
            if self.enforce_distinct_subnets and candidate.same_subnet(other):
                return f"{candidate!r} shares a /16 (IPv4) or /32 (IPv6) with {other!r}"
        return None

    def needs_stable(self, port: int | None) -> bool:
        """Does a circuit for ``port`` need Stable relays (a long-lived port)?"""
        return port is not None and port in self.long_lived_ports

    def eligible(self, node: PathNode, position: Position, port: int | None = None, *,
                 ipv6: bool = False, strict: bool = True, stable: bool = False) -> bool:
        """Does ``node`` meet the position's flag (and, for exits, policy) requirements?

        ``stable`` asks for the Stable flag (an exit needs it for a long-lived ``port``
        anyway); ``strict=False`` drops the Fast and Stable requirements (tor's fallback).
        """
        flags = node.relay.flags
        if position is Position.DIRECTORY:
            return "V2Dir" in flags
        if position is Position.EXIT:
            stable = stable or self.needs_stable(port)
        if strict and ("Fast" not in flags or (stable and "Stable" not in flags)):
            return False
        if position is Position.MIDDLE:
            return True
        if "MiddleOnly" in flags:
            return False
        if position is Position.GUARD:
            return "Guard" in flags
        # exit: any relay that is not BadExit and whose policy might accept the port
        # (C tor choose_good_exit_server_general; the Exit flag only changes the weight).
        if "BadExit" in flags:
            return False
        policy = node.microdesc.exit_policy_v6 if ipv6 else node.microdesc.exit_policy
        return policy.allows_any_port() if port is None else policy.allows_port(port)

    def candidates(self, position: Position, port: int | None = None, *, ipv6: bool = False,
                   directory_guard: bool = False, strict: bool = True, stable: bool = False) -> list[PathNode]:
        """Every relay eligible for a position (before path constraints)."""
        return list(self._weighted(position, port, ipv6, directory_guard, strict, stable).nodes)

    # ---- choices -----------------------------------------------------------

    def choose_exit(self, rng: random.Random | None = None, port: int | None = None, *,
                    ipv6: bool = False, exclude: Sequence[PathNode] = (),
                    avoid: Collection[bytes] = ()) -> PathNode:
        """A weighted exit whose policy summary accepts ``port`` (any port if None).

        ``exclude`` are relays already in the path (no family or subnet may be shared
        with them); ``avoid`` are RSA identities that must not be chosen.
        """
        return self._choose(Position.EXIT, rng, port=port, ipv6=ipv6, exclude=exclude, avoid=avoid)

    def choose_guard(self, rng: random.Random | None = None, *, exclude: Sequence[PathNode] = (),
                     directory: bool = False, stable: bool = False) -> PathNode:
        """A weighted guard (a fresh one: circuits should use a :class:`GuardSample`)."""
        return self._choose(Position.GUARD, rng, exclude=exclude, directory_guard=directory, stable=stable)

    def choose_middle(self, rng: random.Random | None = None, *, exclude: Sequence[PathNode] = (),
                      avoid: Collection[bytes] = (), stable: bool = False) -> PathNode:
        """A weighted middle; ``stable`` for a circuit to a long-lived port."""
        return self._choose(Position.MIDDLE, rng, exclude=exclude, avoid=avoid, stable=stable)

    def choose_directory(self, rng: random.Random | None = None, *,
                         exclude: Sequence[PathNode] = ()) -> PathNode:
        """A weighted V2Dir relay to fetch documents from (Wb* weights)."""
        return self._choose(Position.DIRECTORY, rng, exclude=exclude)

    def select_path(self, rng: random.Random | None = None, port: int | None = None, *,
                    ipv6: bool = False) -> Path:
        """Exit for ``port`` first, then a fresh weighted guard, then the middle.

        Circuits use :func:`oppy.path.guards.choose_path`, which takes the guard from the
        persisted sample instead; the exit and middle rules are the same.
        """
        rng = rng if rng is not None else random.SystemRandom()
        stable = self.needs_stable(port)
        exit_node = self.choose_exit(rng, port, ipv6=ipv6)
        guard = self.choose_guard(rng, exclude=(exit_node,), stable=stable)
        middle = self.choose_middle(rng, exclude=(exit_node, guard), stable=stable)
        return Path(guard=guard, middle=middle, exit=exit_node)

    # ---- internals ---------------------------------------------------------

    def _weighted(self, position: Position, port: int | None, ipv6: bool, directory_guard: bool,
                  strict: bool, stable: bool = False) -> _WeightedList:
        if position is not Position.EXIT:
            port, ipv6 = None, False
        else:
            stable = stable or self.needs_stable(port)
        if not strict:
            stable = False
        key = (position, port, ipv6, directory_guard, strict, stable)
        cached = self._lists.get(key)
        if cached is None:
            table = self._tables[position]
            nodes = [
                node for node in self.nodes
                if self.eligible(node, position, port, ipv6=ipv6, strict=strict, stable=stable)
                and (not directory_guard or "V2Dir" in node.relay.flags)
            ]
            cached = _WeightedList(nodes, [relay_weight(node.relay, table) for node in nodes])
            if len(self._lists) > 256:      # many distinct exit ports: keep memory bounded
                self._lists.clear()
            self._lists[key] = cached
        return cached

    def _choose(self, position: Position, rng: random.Random | None, *, port: int | None = None,
                ipv6: bool = False, exclude: Sequence[PathNode] = (), avoid: Collection[bytes] = (),
                directory_guard: bool = False, stable: bool = False) -> PathNode:
        rng = rng if rng is not None else random.SystemRandom()
        strict_list = self._weighted(position, port, ipv6, directory_guard, True, stable)
        choice = self._choose_from(strict_list, rng, exclude, avoid)
        if choice is not None:
            return choice
        relaxed_list = self._weighted(position, port, ipv6, directory_guard, False)
        if len(relaxed_list.nodes) > len(strict_list.nodes):
            choice = self._choose_from(relaxed_list, rng, exclude, avoid)
            if choice is not None:
                return choice
        raise NoPathError(self._explain(position, port, ipv6, directory_guard, relaxed_list, exclude, avoid))

    def _fits(self, node: PathNode, exclude: Sequence[PathNode], avoid: Collection[bytes]) -> bool:
        return node.relay.rsa_id not in avoid and self.conflicts(node, exclude) is None

    def _choose_from(self, weighted: _WeightedList, rng: random.Random, exclude: Sequence[PathNode],
                     avoid: Collection[bytes]) -> PathNode | None:
        if not weighted.nodes:
            return None
        if not exclude and not avoid:
            return weighted.draw(rng)
        if weighted.total > 0.0:
            for _ in range(MAX_REJECTION_DRAWS):
                node = weighted.draw(rng)
                if self._fits(node, exclude, avoid):
                    return node
        allowed = [(node, weight) for node, weight in zip(weighted.nodes, weighted.weights)
                   if self._fits(node, exclude, avoid)]
        if not allowed:
            return None
        return _WeightedList([node for node, _ in allowed], [weight for _, weight in allowed]).draw(rng)

    def _explain(self, position: Position, port: int | None, ipv6: bool, directory_guard: bool,
                 relaxed: _WeightedList, exclude: Sequence[PathNode], avoid: Collection[bytes]) -> str:
        what = position.value
        if position is Position.EXIT:
            what += f" for {'any port' if port is None else f'port {port}'}{' over IPv6' if ipv6 else ''}"
        if directory_guard:
            what = "directory guard"
        base = (f"no {what}: {len(self.nodes)} running relays have microdescriptors "
                f"({self.missing_microdescs} lack one)")
        if not relaxed.nodes:
            requirement = {
                Position.GUARD: "the Guard flag" + (" and V2Dir" if directory_guard else "")
                                + " (not MiddleOnly)",
                Position.MIDDLE: "no extra flag",
                Position.EXIT: "a policy accepting the port (and not BadExit/MiddleOnly)",
                Position.DIRECTORY: "the V2Dir flag",
            }[position]
            return f"{base}, and none has {requirement}"
        avoided = sum(1 for node in relaxed.nodes if node.relay.rsa_id in avoid)
        if avoided == len(relaxed.nodes):
            return f"{base}; all {avoided} candidates are excluded"
        reasons = sorted({self.conflicts(node, exclude) or "" for node in relaxed.nodes[:50]
                          if node.relay.rsa_id not in avoid} - {""})
        return (f"{base}; all {len(relaxed.nodes)} candidates conflict with the path so far "
                f"or are excluded ({avoided}) (e.g. {'; '.join(reasons[:3])})")
