"""The configured bridges (UseBridges) and what the client has learned of each: its identity and its own
descriptor.

A bridge is in no consensus: its Bridge line says where it is and, usually, which RSA identity it must
prove; the server descriptor it serves over BEGIN_DIR (``/tor/server/authority``) gives its onion key and
Ed25519 identity (tor ``bridges.c``: learned_bridge_descriptor). A line without a fingerprint is dialled
without an expected identity: the one its link handshake proves, which its descriptor must carry, is
learned (tor ``bridges.c`` learned_router_identity) and the bridge is used from then on like one whose line
gave it; the guard state remembers it by the bridge's address and port. Until the descriptor is held, the
bridge is reached for one-hop directory circuits only, created with CREATE_FAST; with it, it is the first
hop of every circuit. The guard sample (:mod:`oppy.path.guards`) says which bridge is used.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from oppy.config.bridges import BridgeLine
from oppy.logs import NOTICE
from oppy.netdoc.relay import RelayTarget
from oppy.netdoc.router import RouterDescriptor
from oppy.path.guards import UNNAMED

__all__ = ["BridgeSet"]

log = logging.getLogger(__name__)


class BridgeSet:
    """The Bridge lines, by RSA identity (given on the line, or learned for a line without one), with the
    descriptor learned from each."""

    def __init__(self, lines: Iterable[BridgeLine]) -> None:
        #: By fingerprint: the lines that give one, and the lines without one whose identity is learned.
        self.lines: dict[str, BridgeLine] = {}
        #: The lines without a fingerprint, by ``IP:PORT`` (tor matches them by address and port).
        self._unidentified: dict[str, BridgeLine] = {}
        #: ``IP:PORT`` -> the fingerprint learned for that line without one.
        self._learned: dict[str, str] = {}
        for line in lines:
            if line.fingerprint is None:
                self._unidentified.setdefault(line.addrport, line)
            else:
                self.lines.setdefault(line.fingerprint.hex().upper(), line)
        self._descriptors: dict[str, RouterDescriptor] = {}

    def fingerprints(self) -> list[str]:
        """The bridges whose identity is known: given on their lines or learned."""
        return list(self.lines)

    def addresses(self) -> dict[str, str]:
        """``IP:PORT`` of each bridge whose identity is known, by fingerprint (kept in the guard state)."""
        return {fingerprint: line.addrport for fingerprint, line in self.lines.items()}

    def nickname(self, fingerprint: str) -> str:
        descriptor = self._descriptors.get(fingerprint.upper())
        return descriptor.nickname if descriptor is not None else UNNAMED

    def descriptor(self, fingerprint: str) -> RouterDescriptor | None:
        return self._descriptors.get(fingerprint.upper())

    def unlearned_targets(self) -> list[RelayTarget]:
        """The lines without a fingerprint whose identity is not learned yet, as targets that take any
        identity (an empty ``rsa_id``): only a directory fetch goes there, to learn it."""
        return [RelayTarget(UNNAMED, b"", line.address, line.port)
                for addrport, line in self._unidentified.items() if addrport not in self._learned]

    def descriptor_target(self, target: RelayTarget) -> RelayTarget:
        """Where to fetch the descriptor of the bridge ``target`` is: a bridge whose line gives no
        fingerprint is asked without an expected identity, so that one proving a new identity is seen."""
        addrport = _addrport(target.address, target.or_port)
        if addrport in self._unidentified:
            return RelayTarget(UNNAMED, b"", target.address, target.or_port)
        return target

    def learned_fingerprint(self, address: str, port: int) -> str | None:
        """The identity learned for the line without a fingerprint at ``address:port``, if any."""
        return self._learned.get(_addrport(address, port))

    def learn_identity(self, address: str, port: int, fingerprint: str, *, remembered: bool = False) -> bool:
        """The bridge of the line without a fingerprint at ``address:port`` is ``fingerprint`` (proved by
        its link handshake and descriptor, or ``remembered`` from the guard state). A different identity
        than the one learned before replaces it, logged at notice (the line names none, so tor takes the
        new one). False if no such line, or if a line giving that fingerprint exists (that line is used)."""
        addrport = _addrport(address, port)
        line = self._unidentified.get(addrport)
        fingerprint = fingerprint.upper()
        if line is None or self.lines.get(fingerprint, line) is not line:
            return False
        previous = self._learned.get(addrport)
        if previous == fingerprint:
            return True
        if previous is not None:
            log.log(NOTICE, "Bridge at %s now proves the identity $%s instead of $%s; its Bridge line gives no "
                            "fingerprint, so the new one is used.", addrport, fingerprint, previous)
            del self.lines[previous]
            self._descriptors.pop(previous, None)
        elif not remembered:
            log.log(NOTICE, "Learned fingerprint $%s for bridge %s.", fingerprint, addrport)
        self._learned[addrport] = fingerprint
        self.lines[fingerprint] = line
        return True

    def learned(self, descriptor: RouterDescriptor) -> bool:
        """Keep a verified descriptor of a configured bridge; False if it is none of ours."""
        if descriptor.fingerprint not in self.lines:
            return False
        self._descriptors[descriptor.fingerprint] = descriptor
        return True

    def target(self, fingerprint: str) -> RelayTarget:
        """How to reach the bridge: at its Bridge line's address and port, with its descriptor's keys once
        known (else a target for CREATE_FAST only)."""
        line = self.lines[fingerprint.upper()]
        descriptor = self._descriptors.get(fingerprint.upper())
        if descriptor is None:
            return RelayTarget(UNNAMED, bytes.fromhex(fingerprint), line.address, line.port)
        return descriptor.target(line.address, line.port)


def _addrport(address: str, port: int) -> str:
    """``IP:PORT`` as a Bridge line's :attr:`~oppy.config.bridges.BridgeLine.addrport` writes it."""
    return BridgeLine(None, address, port).addrport
