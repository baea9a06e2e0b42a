"""The virtual hop to an onion service (rend-spec-v3 4.2.1): AES-256-CTR and running SHA3-256 digests, checked
against the service side written here from the spec (and a tor1 relay layer under it, as the rendezvous point
adds one)."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.ciphers.modes import CTR

from oppy.cell.commands import CELL_PAYLOAD_LEN, RelayCommand
from oppy.cell.relay import RELAY_DIGEST_LEN, RELAY_DIGEST_OFFSET, encode_relay_payload
from oppy.crypto.relay_crypto import Tor1ClientCrypto, Tor1Hop

DIGEST = slice(RELAY_DIGEST_OFFSET, RELAY_DIGEST_OFFSET + RELAY_DIGEST_LEN)


def ctr(key: bytes):
    return Cipher(AES(key), CTR(bytes(16))).encryptor()


class ServiceSide:
    """The onion service's end of the virtual hop, from rend-spec-v3 4.2.1 and tor-spec's relay cells."""

    def __init__(self, df: bytes, db: bytes, kf: bytes, kb: bytes) -> None:
        self.receive_cipher, self.send_cipher = ctr(kf), ctr(kb)
        self.receive_digest, self.send_digest = hashlib.sha3_256(df), hashlib.sha3_256(db)

    def receive(self, cell: bytes) -> bytes:
        plain = bytearray(self.receive_cipher.update(cell))
        claimed = bytes(plain[DIGEST])
        plain[DIGEST] = bytes(RELAY_DIGEST_LEN)
        self.receive_digest.update(plain)
        assert self.receive_digest.digest()[:RELAY_DIGEST_LEN] == claimed
        return bytes(plain)

    def send(self, payload: bytes) -> tuple[bytes, bytes]:
        self.send_digest.update(payload)
        tag = self.send_digest.digest()
        stamped = bytearray(payload)
        stamped[DIGEST] = tag[:RELAY_DIGEST_LEN]
        return self.send_cipher.update(bytes(stamped)), tag[:20]


def keys():
    return os.urandom(32), os.urandom(32), os.urandom(32), os.urandom(32)


@pytest.mark.parametrize("relays", [0, 1])
def test_cells_both_ways_through_the_virtual_hop(relays):
    service_keys = keys()
    relay_keys = [(os.urandom(20), os.urandom(20), os.urandom(16), os.urandom(16)) for _ in range(relays)]
    crypto = Tor1ClientCrypto([Tor1Hop(*k) for k in relay_keys] + [Tor1Hop.for_onion_service(*service_keys)])
    relay_forward = [ctr(k[2]) for k in relay_keys]
    relay_backward = [ctr(k[3]) for k in relay_keys]
    service = ServiceSide(*service_keys)
    virtual = relays
    for index in range(3):  # the running state carries over from cell to cell
        payload = encode_relay_payload(RelayCommand.DATA, 1, f"to the service {index}".encode())
        cells, tags = crypto.encrypt_outbound_many([payload], virtual)
        for layer in relay_forward:
            cells = layer.update(cells)
        assert service.receive(cells) == payload
        assert tags[0] == service.receive_digest.digest()[:20]

        reply = encode_relay_payload(RelayCommand.DATA, 1, f"from the service {index}".encode())
        cell, tag = service.send(reply)
        for layer in reversed(relay_backward):
            cell = layer.update(cell)
        received, error = crypto.decrypt_inbound_many(cell)
        assert error is None
        ((hop, buffer, offset, inbound_tag),) = received
        assert hop == virtual
        plain = bytearray(buffer[offset:offset + CELL_PAYLOAD_LEN])
        plain[DIGEST] = bytes(RELAY_DIGEST_LEN)
        assert bytes(plain) == reply
        assert inbound_tag == tag  # the SENDME v1 tag: the digest's first 20 bytes, as tor keeps it


def test_a_cell_with_a_wrong_digest_is_not_recognized():
    service_keys = keys()
    crypto = Tor1ClientCrypto([Tor1Hop.for_onion_service(*service_keys)])
    cell, _ = ServiceSide(*service_keys).send(encode_relay_payload(RelayCommand.DATA, 1, b"x"))
    tampered = bytearray(cell)
    tampered[100] ^= 1
    received, error = crypto.decrypt_inbound_many(bytes(tampered))
    assert received == [] and error is not None


def test_keys_of_the_wrong_size_are_refused():
    df, db, kf, kb = keys()
    with pytest.raises(ValueError):
        Tor1Hop.for_onion_service(df, db, kf[:16], kb)
    with pytest.raises(ValueError):
        Tor1Hop.for_onion_service(df[:20], db, kf, kb)
