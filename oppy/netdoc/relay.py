"""A relay as a client dials it and extends to it."""

from __future__ import annotations

from typing import NamedTuple


class RelayTarget(NamedTuple):
    """Everything needed to open a link to a relay and run a circuit handshake with it.

    Identities are raw bytes: the 20-byte RSA fingerprint (consensus `r` line / DirAuthority) and the
    32-byte Ed25519 identity (microdescriptor `id ed25519`) when known. `ntor_onion_key` is the 32-byte
    curve25519 key of the microdescriptor's `ntor-onion-key`.
    """

    nickname: str
    rsa_id: bytes
    address: str
    or_port: int
    ntor_onion_key: bytes | None = None
    ed25519_id: bytes | None = None

    @property
    def fingerprint(self) -> str:
        return self.rsa_id.hex().upper()

    def describe(self) -> str:
        """`$FP~nick` as tor names relays in logs and control-port events."""
        return f"${self.fingerprint}~{self.nickname}"
