"""tor1 relay-cell cryptography, client side: AES-128-CTR layers and running SHA-1 digests.

tor-spec "Routing relay cells" (routing-relay-cells.md) and "Setting circuit keys": every hop of a
circuit shares with the client a forward (Kf, Df) and a backward (Kb, Db) state. Each AES-CTR
keystream (IV 0) and each running SHA-1 (seeded with Df/Db) lasts for the whole life of the
circuit, so cells must go through here exactly once and in order.

This is the per-cell hot path: cipher contexts are created once per hop, the SHA-1 state is
advanced with `update`, and a candidate digest for an inbound cell is tried on a `copy()` that
replaces the running state only when the cell is recognized.
"""

import hashlib
from hmac import compare_digest

from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.ciphers.modes import CTR

from oppy.cell.commands import CELL_PAYLOAD_LEN
from oppy.crypto.errors import RelayCryptoError
from oppy.crypto.kdf import HASH_LEN, KEY_LEN, CircuitKeys

__all__ = [
    "Tor1Hop",
    "Tor1ClientCrypto",
    "RELAY_DIGEST_OFFSET",
    "RELAY_DIGEST_LEN",
    "SENDME_TAG_LEN",
]

# tor-spec "Relay cells": command(1) recognized(2) stream_id(2) digest(4) length(2) data.
RELAY_RECOGNIZED_OFFSET = 1
RELAY_RECOGNIZED_LEN = 2
RELAY_DIGEST_OFFSET = 5
RELAY_DIGEST_LEN = 4
_DIGEST_END = RELAY_DIGEST_OFFSET + RELAY_DIGEST_LEN
_RECOGNIZED_END = RELAY_RECOGNIZED_OFFSET + RELAY_RECOGNIZED_LEN
_ZERO_RECOGNIZED = bytes(RELAY_RECOGNIZED_LEN)
_ZERO_DIGEST = bytes(RELAY_DIGEST_LEN)
# tor-spec "Sending and receiving SENDME" (flow-control.md): a v1 SENDME carries the full running
# digest.
SENDME_TAG_LEN = HASH_LEN
# The AES-CTR initial counter block is all zeros (tor-spec "Routing relay cells").
_ZERO_IV = bytes(16)


def _aes128_ctr(key: bytes):
    """A long-lived AES-128-CTR context with IV 0; `.update` continues the one keystream."""
    if len(key) != KEY_LEN:
        raise ValueError(f"tor1 AES key must be {KEY_LEN} bytes, got {len(key)}")
    return Cipher(AES(key), CTR(_ZERO_IV)).encryptor()


def _seeded_sha1(seed: bytes):
    if len(seed) != HASH_LEN:
        raise ValueError(f"tor1 digest seed must be {HASH_LEN} bytes, got {len(seed)}")
    running = hashlib.sha1()
    running.update(seed)
    return running


class Tor1Hop:
    """The tor1 state a client shares with one hop: forward (Kf, Df), backward (Kb, Db)."""

    __slots__ = (
        "_forward_cipher",
        "_backward_cipher",
        "_forward_digest",
        "_backward_digest",
        "last_outbound_digest",
        "last_inbound_digest",
    )

    def __init__(self, df: bytes, db: bytes, kf: bytes, kb: bytes) -> None:
        self._forward_cipher = _aes128_ctr(kf)
        self._backward_cipher = _aes128_ctr(kb)
        self._forward_digest = _seeded_sha1(df)
        self._backward_digest = _seeded_sha1(db)
        # The full running digest right after the last cell sent to / recognized from this hop:
        # the SENDME v1 tag. None until the first such cell.
        self.last_outbound_digest: bytes | None = None
        self.last_inbound_digest: bytes | None = None

    @classmethod
    def from_keys(cls, keys: CircuitKeys) -> "Tor1Hop":
        """Build a hop from the keys a handshake produced."""
        return cls(keys.df, keys.db, keys.kf, keys.kb)

    def originate(self, payload: bytes) -> bytes:
        """Stamp the digest of a cell addressed to this hop (digest field zero) and encrypt it."""
        running = self._forward_digest
        running.update(payload)
        tag = running.digest()
        self.last_outbound_digest = tag
        return self._forward_cipher.update(
            payload[:RELAY_DIGEST_OFFSET] + tag[:RELAY_DIGEST_LEN] + payload[_DIGEST_END:]
        )

    def encrypt_forward(self, cell: bytes) -> bytes:
        """Add this hop's forward layer to a cell addressed to a hop beyond it."""
        return self._forward_cipher.update(cell)

    def decrypt_backward(self, cell: bytes) -> bytes:
        """Remove this hop's backward layer."""
        return self._backward_cipher.update(cell)

    def recognize(self, plaintext: bytes) -> bool:
        """True (and the backward digest advanced) iff this hop originated `plaintext`.

        The candidate digest is computed on a copy of the running SHA-1; the running state moves
        on only when the 4-byte digest field matches, as tor-spec requires.
        """
        if plaintext[RELAY_RECOGNIZED_OFFSET:_RECOGNIZED_END] != _ZERO_RECOGNIZED:
            return False
        candidate = self._backward_digest.copy()
        candidate.update(plaintext[:RELAY_DIGEST_OFFSET])
        candidate.update(_ZERO_DIGEST)
        candidate.update(plaintext[_DIGEST_END:])
        tag = candidate.digest()
        if not compare_digest(tag[:RELAY_DIGEST_LEN], plaintext[RELAY_DIGEST_OFFSET:_DIGEST_END]):
            return False
        self._backward_digest = candidate
        self.last_inbound_digest = tag
        return True


class Tor1ClientCrypto:
    """All tor1 layers of one client circuit, hop 0 being the guard.

    `encrypt_outbound` and `decrypt_inbound` take and return 509-byte relay cell payloads.
    """

    __slots__ = ("hops",)

    def __init__(self, hops: list[Tor1Hop] | None = None) -> None:
        self.hops: list[Tor1Hop] = list(hops) if hops else []

    def add_hop(self, hop: Tor1Hop) -> None:
        """Append the layer of a newly created (or extended-to) hop."""
        self.hops.append(hop)

    def __len__(self) -> int:
        return len(self.hops)

    def encrypt_outbound(self, payload: bytes, hop_index: int) -> bytes:
        """Set the digest for hop `hop_index`, encrypt with its layer, then each layer down to 0.

        `payload` is the 509-byte plaintext relay payload with recognized and digest zeroed.
        """
        if len(payload) != CELL_PAYLOAD_LEN:
            raise ValueError(f"relay payload must be {CELL_PAYLOAD_LEN} bytes, got {len(payload)}")
        if payload[RELAY_DIGEST_OFFSET:_DIGEST_END] != _ZERO_DIGEST:
            raise ValueError("relay payload must have its digest field zeroed before encryption")
        hops = self.hops
        if not 0 <= hop_index < len(hops):
            raise IndexError(f"no hop {hop_index} on a circuit of {len(hops)} hops")
        cell = hops[hop_index].originate(payload)
        while hop_index:
            hop_index -= 1
            # Same as hops[hop_index].encrypt_forward(cell), without a method call per layer.
            cell = hops[hop_index]._forward_cipher.update(cell)
        return cell

    def decrypt_inbound(self, payload: bytes) -> tuple[int, bytes]:
        """Peel layers from hop 0 outward until one hop recognizes the cell.

        Returns (hop_index, plaintext payload). Raises RelayCryptoError when no hop recognizes it;
        the keystreams have then moved on and the circuit must be closed.
        """
        if len(payload) != CELL_PAYLOAD_LEN:
            raise RelayCryptoError(
                f"relay payload must be {CELL_PAYLOAD_LEN} bytes, got {len(payload)}"
            )
        cell = payload
        for hop_index, hop in enumerate(self.hops):
            # Using the hop's cipher directly saves a method call per layer on the hot path.
            cell = hop._backward_cipher.update(cell)
            # Only a zero "recognized" field is worth a digest computation.
            if cell[RELAY_RECOGNIZED_OFFSET:_RECOGNIZED_END] != _ZERO_RECOGNIZED:
                continue
            if hop.recognize(cell):
                return hop_index, cell
        raise RelayCryptoError(
            f"inbound relay cell not recognized by any of the {len(self.hops)} hops"
        )

    def last_outbound_digest(self, hop_index: int) -> bytes | None:
        """The 20-byte forward running digest right after the last cell sent to `hop_index`."""
        return self.hops[hop_index].last_outbound_digest

    def last_inbound_digest(self, hop_index: int) -> bytes | None:
        """The 20-byte backward running digest right after the last cell from `hop_index`."""
        return self.hops[hop_index].last_inbound_digest
