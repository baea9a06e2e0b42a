"""tor1 relay-cell cryptography, client side: AES-128-CTR layers and running SHA-1 digests.

tor-spec "Routing relay cells" (routing-relay-cells.md) and "Setting circuit keys": every hop of a
circuit shares with the client a forward (Kf, Df) and a backward (Kb, Db) state. Each AES-CTR
keystream (IV 0) and each running SHA-1 (seeded with Df/Db) lasts for the whole life of the
circuit, so cells must go through here exactly once and in order.

This is the per-cell hot path: cipher contexts are created once per hop, the SHA-1 state is
advanced with `update`, and a candidate digest for an inbound cell is tried on a `copy()` that
replaces the running state only when the cell is recognized. A hop's running digests are hashlib
objects, SHA-1 or (the virtual hop to an onion service) SHA3-256, called directly: a tag is the
digest's first HASH_LEN bytes, which for SHA-1 is the whole digest (no copy).
"""

import hashlib
from hmac import compare_digest

from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.ciphers.modes import CTR

from oppy.cell.commands import CELL_PAYLOAD_LEN
from oppy.cell.relay import (
    RELAY_DIGEST_LEN,
    RELAY_DIGEST_OFFSET,
    RELAY_RECOGNIZED_LEN,
    RELAY_RECOGNIZED_OFFSET,
    SENDME_TAG_LEN,
)
from oppy.crypto.errors import RelayCryptoError
from oppy.crypto.kdf import HASH_LEN, KEY_LEN, CircuitKeys

__all__ = [
    "Tor1Hop",
    "Tor1ClientCrypto",
    "RELAY_DIGEST_OFFSET",
    "RELAY_DIGEST_LEN",
    "SENDME_TAG_LEN",
]

_DIGEST_END = RELAY_DIGEST_OFFSET + RELAY_DIGEST_LEN
_RECOGNIZED_END = RELAY_RECOGNIZED_OFFSET + RELAY_RECOGNIZED_LEN
_ZERO_RECOGNIZED = bytes(RELAY_RECOGNIZED_LEN)
_ZERO_DIGEST = bytes(RELAY_DIGEST_LEN)
# The AES-CTR initial counter block is all zeros (tor-spec "Routing relay cells").
_AES_BLOCK_LEN = 16
_ZERO_IV = bytes(_AES_BLOCK_LEN)


# rend-spec-v3 4.2.1: the virtual hop to an onion service uses AES-256 and SHA3-256 in place of AES-128 and
# SHA-1, cells otherwise as tor1 (the first four bytes of the running digest in the cell, its first
# HASH_LEN bytes as the SENDME v1 tag: tor relay_crypto_record_sendme_digest).
ONION_SERVICE_KEY_LEN = 32
ONION_SERVICE_DIGEST_LEN = 32


def _aes_ctr(key: bytes, key_len: int = KEY_LEN):
    """A long-lived AES-CTR context with IV 0 (AES-128 for tor1); `.update` continues the one keystream."""
    if len(key) != key_len:
        raise ValueError(f"relay cell AES key must be {key_len} bytes, got {len(key)}")
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
        self._forward_cipher = _aes_ctr(kf)
        self._backward_cipher = _aes_ctr(kb)
        self._forward_digest = _seeded_sha1(df)
        self._backward_digest = _seeded_sha1(db)
        # The running digest (its first HASH_LEN bytes) right after the last cell sent to / recognized
        # from this hop: the SENDME v1 tag. None until the first such cell.
        self.last_outbound_digest: bytes | None = None
        self.last_inbound_digest: bytes | None = None

    @classmethod
    def from_keys(cls, keys: CircuitKeys) -> "Tor1Hop":
        """Build a hop from the keys a handshake produced."""
        return cls(keys.df, keys.db, keys.kf, keys.kb)

    @classmethod
    def for_onion_service(cls, df: bytes, db: bytes, kf: bytes, kb: bytes) -> "Tor1Hop":
        """The virtual hop to an onion service, from the hs-ntor keys of RENDEZVOUS2 (rend-spec-v3 4.2.1):
        AES-256-CTR layers and running SHA3-256 digests seeded with Df/Db."""
        hop = cls.__new__(cls)
        for seed in (df, db):
            if len(seed) != ONION_SERVICE_DIGEST_LEN:
                raise ValueError(f"onion-service digest seed must be {ONION_SERVICE_DIGEST_LEN} bytes, "
                                 f"got {len(seed)}")
        hop._forward_cipher = _aes_ctr(kf, ONION_SERVICE_KEY_LEN)
        hop._backward_cipher = _aes_ctr(kb, ONION_SERVICE_KEY_LEN)
        hop._forward_digest = hashlib.sha3_256(df)
        hop._backward_digest = hashlib.sha3_256(db)
        hop.last_outbound_digest = None
        hop.last_inbound_digest = None
        return hop

    def recognize(self, plaintext: bytes) -> bool:
        """True (and the backward digest advanced) iff this hop originated `plaintext`.

        The candidate digest is computed on a copy of the running digest; the running state moves
        on only when the 4-byte digest field matches, as tor-spec requires.
        """
        if plaintext[RELAY_RECOGNIZED_OFFSET:_RECOGNIZED_END] != _ZERO_RECOGNIZED:
            return False
        candidate = self._backward_digest.copy()
        candidate.update(plaintext[:RELAY_DIGEST_OFFSET])
        candidate.update(_ZERO_DIGEST)
        candidate.update(plaintext[_DIGEST_END:])
        tag = candidate.digest()[:HASH_LEN]
        if not compare_digest(tag[:RELAY_DIGEST_LEN], plaintext[RELAY_DIGEST_OFFSET:_DIGEST_END]):
            return False
        self._backward_digest = candidate
        self.last_inbound_digest = tag
        return True


class Tor1ClientCrypto:
    """All tor1 layers of one client circuit, hop 0 being the guard.

    `encrypt_outbound_many` and `decrypt_inbound_many` take and return 509-byte relay cell payloads back to
    back, as many as one read brought or one flush sends; a single cell is a batch of one.
    """

    __slots__ = ("hops", "_scratch")

    def __init__(self, hops: list[Tor1Hop] | None = None) -> None:
        self.hops: list[Tor1Hop] = list(hops) if hops else []
        # Two buffers the inner layers of `decrypt_inbound_many` decrypt into, in turn (no allocation and
        # no zero-filling of a new buffer per layer and batch). They grow to the largest batch seen.
        self._scratch = (bytearray(), bytearray())

    def add_hop(self, hop: Tor1Hop) -> None:
        """Append the layer of a newly created (or extended-to) hop."""
        self.hops.append(hop)

    def __len__(self) -> int:
        return len(self.hops)

    def decrypt_inbound_many(self, payloads: bytes) -> tuple[list[tuple], RelayCryptoError | None]:
        """Peel layers from hop 0 outward until a hop recognizes each cell: their payloads back to back.

        Each layer is removed from all the cells still encrypted in one AES call: a layer's keystream is
        used by exactly the cells that reach it, in order, so this is the same as peeling them one by one.
        Returns (cells, error): cells are (hop_index, buffer, offset, tag) for each cell recognized, in
        order, its plaintext being buffer[offset:offset + 509] and tag the hop's running digest right after
        it (the SENDME v1 tag). When a cell is recognized by no hop, cells holds those before it and error
        says why; the keystreams have then moved on and the circuit must be closed.
        """
        count, rest = divmod(len(payloads), CELL_PAYLOAD_LEN)
        error = None
        if rest:
            error = RelayCryptoError(f"relay payloads must be {CELL_PAYLOAD_LEN} bytes each, got {len(payloads)} "
                                     f"bytes in all")
        hops = self.hops
        if not hops and count:
            return [], RelayCryptoError("inbound relay cell not recognized by any of the 0 hops")
        results: list = [None] * count
        waiting = list(range(count))  # cells still under a layer, in order; `buffer` holds them back to back
        buffer = payloads[:count * CELL_PAYLOAD_LEN] if rest else payloads
        last_index = len(hops) - 1
        first_unrecognized = count
        for hop_index, hop in enumerate(hops):
            if not waiting:
                break
            if hop_index == last_index:
                first_unrecognized = self._recognize_at_last_hop(hop, hop_index, buffer, waiting, results)
                break
            # This layer's output lands in the scratch buffer the input is not in.
            out = self._scratch[hop_index & 1]
            size = len(buffer)
            if len(out) < size + _AES_BLOCK_LEN - 1:
                out.extend(bytes(size + _AES_BLOCK_LEN - 1 - len(out)))
            hop._backward_cipher.update_into(buffer, out)
            buffer = memoryview(out)[:size]
            # Only a zero "recognized" field is worth a digest computation: find those cells with one scan
            # of the field's first byte across the batch (a cell for a later hop has one 2**-16 of the time).
            first_bytes = out[RELAY_RECOGNIZED_OFFSET:size:CELL_PAYLOAD_LEN]
            stopped_here = set()
            position = first_bytes.find(0)
            while position != -1:
                offset = position * CELL_PAYLOAD_LEN
                if not out[offset + RELAY_RECOGNIZED_OFFSET + 1]:
                    plaintext = bytes(buffer[offset:offset + CELL_PAYLOAD_LEN])  # the scratch is reused
                    if hop.recognize(plaintext):
                        results[waiting[position]] = (hop_index, plaintext, 0, hop.last_inbound_digest)
                        stopped_here.add(position)
                position = first_bytes.find(0, position + 1)
            if stopped_here:
                passed_on = [p for p in range(len(waiting)) if p not in stopped_here]
                buffer = b"".join([buffer[p * CELL_PAYLOAD_LEN:(p + 1) * CELL_PAYLOAD_LEN] for p in passed_on])
                waiting = [waiting[p] for p in passed_on]
        if first_unrecognized < count:
            return results[:first_unrecognized], RelayCryptoError(
                f"inbound relay cell not recognized by any of the {len(hops)} hops")
        return results, error

    @staticmethod
    def _recognize_at_last_hop(hop: Tor1Hop, hop_index: int, ciphertext: bytes, waiting: list[int],
                               results: list) -> int:
        """Remove the last layer and check each cell's digest; the number of the first cell that fails.

        Nothing lies beyond the last hop, so a cell it does not recognize closes the circuit: the running
        digest is advanced in place, without the trial copy `recognize` makes. The plaintext goes into a
        bytearray so that the digest fields can be read and zeroed for the whole batch at once (four
        strided slice operations), leaving one digest update per cell (SHA-1, or SHA3-256 at an onion
        service's virtual hop, called with no wrapper in between).
        """
        count = len(waiting)
        end = count * CELL_PAYLOAD_LEN
        # CipherContext.update_into wants room for one block more than the input.
        plain = bytearray(end + _AES_BLOCK_LEN - 1)
        hop._backward_cipher.update_into(ciphertext, plain)
        # Cells before the first one with a non-zero "recognized" field.
        recognizable = count
        for field_offset in (RELAY_RECOGNIZED_OFFSET, RELAY_RECOGNIZED_OFFSET + 1):
            field = plain[field_offset:end:CELL_PAYLOAD_LEN]
            if field.count(0) != count:
                recognizable = min(recognizable, next(i for i, byte in enumerate(field) if byte))
        received = bytearray(RELAY_DIGEST_LEN * count)
        zeros = bytes(count)
        for index in range(RELAY_DIGEST_LEN):
            start = RELAY_DIGEST_OFFSET + index
            received[index::RELAY_DIGEST_LEN] = plain[start:end:CELL_PAYLOAD_LEN]
            plain[start:end:CELL_PAYLOAD_LEN] = zeros
        running = hop._backward_digest
        update = running.update
        digest = running.digest
        tags = []
        append = tags.append
        with memoryview(plain) as view:
            for offset in range(0, recognizable * CELL_PAYLOAD_LEN, CELL_PAYLOAD_LEN):
                update(view[offset:offset + CELL_PAYLOAD_LEN])
                append(digest()[:HASH_LEN])
        checked = len(tags)
        if not compare_digest(b"".join([tag[:RELAY_DIGEST_LEN] for tag in tags]),
                              received[:RELAY_DIGEST_LEN * checked]):
            checked = next(position for position, tag in enumerate(tags) if not compare_digest(
                tag[:RELAY_DIGEST_LEN], received[position * RELAY_DIGEST_LEN:(position + 1) * RELAY_DIGEST_LEN]))
        for position in range(checked):
            results[waiting[position]] = (hop_index, plain, position * CELL_PAYLOAD_LEN, tags[position])
        if checked:
            hop.last_inbound_digest = tags[checked - 1]
        return waiting[checked] if checked < count else len(results)

    def encrypt_outbound_many(self, payloads: list[bytes], hop_index: int) -> tuple[bytes, list[bytes]]:
        """Stamp the digest of each cell for hop `hop_index` and encrypt it with that hop's layer, then each
        layer down to 0: (the ciphertexts back to back, 509 bytes each, the hop's running digest right after
        each cell, which the SENDME v1 tag echoes).

        Each payload is a 509-byte plaintext relay payload with recognized and digest zeroed. The digests
        are stamped cell by cell (each depends on the ones before); each layer then encrypts all of them in
        one AES call.
        """
        hops = self.hops
        if not 0 <= hop_index < len(hops):
            raise IndexError(f"no hop {hop_index} on a circuit of {len(hops)} hops")
        hop = hops[hop_index]
        running = hop._forward_digest
        update = running.update
        stamped = bytearray()
        tags = []
        tag = None
        for payload in payloads:
            if len(payload) != CELL_PAYLOAD_LEN:
                raise ValueError(f"relay payload must be {CELL_PAYLOAD_LEN} bytes, got {len(payload)}")
            if payload[RELAY_DIGEST_OFFSET:_DIGEST_END] != _ZERO_DIGEST:
                raise ValueError("relay payload must have its digest field zeroed before encryption")
            update(payload)
            tag = running.digest()[:HASH_LEN]
            tags.append(tag)
            start = len(stamped)
            stamped += payload
            stamped[start + RELAY_DIGEST_OFFSET:start + _DIGEST_END] = tag[:RELAY_DIGEST_LEN]
        if tag is not None:
            hop.last_outbound_digest = tag
        cells = hop._forward_cipher.update(stamped)
        while hop_index:
            hop_index -= 1
            cells = hops[hop_index]._forward_cipher.update(cells)
        return cells, tags

    def last_outbound_digest(self, hop_index: int) -> bytes | None:
        """The 20-byte forward running digest right after the last cell sent to `hop_index`."""
        return self.hops[hop_index].last_outbound_digest

    def last_inbound_digest(self, hop_index: int) -> bytes | None:
        """The 20-byte backward running digest right after the last cell from `hop_index`."""
        return self.hops[hop_index].last_inbound_digest
