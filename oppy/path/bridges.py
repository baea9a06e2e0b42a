"""The configured bridges (UseBridges) and what the client has learned of each: its own descriptor.

A bridge is in no consensus: its Bridge line says where it is and which RSA identity it must prove, and
the server descriptor it serves over BEGIN_DIR (``/tor/server/authority``) gives its onion key and Ed25519
identity (tor ``bridges.c``: learned_bridge_descriptor). Until that descriptor is held, the bridge is
reached for one-hop directory circuits only, created with CREATE_FAST; with it, it is the first hop of
every circuit. The guard sample (:mod:`oppy.path.guards`) says which bridge is used.
"""

from __future__ import annotations

from collections.abc import Iterable

from oppy.config.bridges import BridgeLine
from oppy.netdoc.relay import RelayTarget
from oppy.netdoc.router import RouterDescriptor
from oppy.path.guards import UNNAMED

__all__ = ["BridgeSet"]


class BridgeSet:
    """The Bridge lines, by RSA identity, with the descriptor learned from each."""

    def __init__(self, lines: Iterable[BridgeLine]) -> None:
        self.lines: dict[str, BridgeLine] = {}
        for line in lines:
            if line.fingerprint is None:
                raise ValueError(f"Bridge {line.to_line()} has no fingerprint")
            self.lines.setdefault(line.fingerprint.hex().upper(), line)
        self._descriptors: dict[str, RouterDescriptor] = {}

    def fingerprints(self) -> list[str]:
        return list(self.lines)

    def nickname(self, fingerprint: str) -> str:
        descriptor = self._descriptors.get(fingerprint.upper())
        return descriptor.nickname if descriptor is not None else UNNAMED

    def descriptor(self, fingerprint: str) -> RouterDescriptor | None:
        return self._descriptors.get(fingerprint.upper())

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
            return RelayTarget(UNNAMED, bytes(line.fingerprint or b""), line.address, line.port)
        return descriptor.target(line.address, line.port)
