"""The onion-service client's relay messages, read back by a parser written here from tor's trunnel
definitions (cell_introduce1.trunnel, cell_rendezvous.trunnel) and rend-spec-v3 3.2-3.3 and 4."""

from __future__ import annotations

import os
import struct

import pytest

from oppy.cell.errors import CellParseError
from oppy.cell.onion_service import (
    INTRODUCE1_EXT_CC_REQUEST,
    INTRODUCE1_MIN_SIZE,
    IntroduceAckStatus,
    decode_introduce_ack_body,
    decode_rendezvous2_body,
    encode_establish_rendezvous_body,
    encode_introduce1_head,
    encode_introduce_plaintext,
)
from oppy.cell.relay import link_specifiers_for_relay


def parse_introduce1(cell: bytes) -> dict:
    """trn_cell_introduce1: legacy_key_id[20] auth_key_type u16 auth_key_len auth_key ext encrypted[]."""
    legacy, key_type = cell[:20], cell[20]
    (key_len,) = struct.unpack_from(">H", cell, 21)
    auth_key = cell[23:23 + key_len]
    n_ext = cell[23 + key_len]
    return {"legacy": legacy, "key_type": key_type, "auth_key": auth_key, "n_ext": n_ext,
            "encrypted": cell[24 + key_len:]}


def parse_introduce_encrypted(plain: bytes) -> dict:
    """trn_cell_introduce_encrypted: rend_cookie[20] ext onion_key_type onion_key_len onion_key nspec
    link_specifier[nspec] pad[]; ext is trn_extension: num u8, then num of (field_type u8, field_len u8,
    field[field_len])."""
    cookie, n_ext = plain[:20], plain[20]
    offset, extensions = 21, []
    for _ in range(n_ext):
        field_type, field_len = plain[offset], plain[offset + 1]
        extensions.append((field_type, plain[offset + 2:offset + 2 + field_len]))
        offset += 2 + field_len
    key_type = plain[offset]
    (key_len,) = struct.unpack_from(">H", plain, offset + 1)
    onion_key = plain[offset + 3:offset + 3 + key_len]
    offset += 3 + key_len
    nspec, offset = plain[offset], offset + 1
    specs = []
    for _ in range(nspec):
        spec_type, spec_len = plain[offset], plain[offset + 1]
        specs.append((spec_type, plain[offset + 2:offset + 2 + spec_len]))
        offset += 2 + spec_len
    return {"cookie": cookie, "n_ext": n_ext, "extensions": extensions, "key_type": key_type,
            "onion_key": onion_key, "specs": specs, "pad": plain[offset:]}


def test_establish_rendezvous_is_the_cookie():
    cookie = os.urandom(20)
    assert encode_establish_rendezvous_body(cookie) == cookie
    with pytest.raises(ValueError):
        encode_establish_rendezvous_body(cookie[:19])


def test_introduce1_head_and_plaintext_as_tor_reads_them():
    auth_key, onion_key, cookie = os.urandom(32), os.urandom(32), os.urandom(20)
    specs = link_specifiers_for_relay(os.urandom(20), ipv4=("127.0.0.1", 19030), ed25519_identity=os.urandom(32))
    head = encode_introduce1_head(auth_key)
    plain = encode_introduce_plaintext(cookie, onion_key, specs, len(head))
    fake_encrypted = os.urandom(32) + plain + os.urandom(32)  # CLIENT_PK | ENCRYPTED_DATA | MAC
    cell = parse_introduce1(head + fake_encrypted)
    assert (cell["legacy"], cell["key_type"], cell["auth_key"], cell["n_ext"]) == (bytes(20), 2, auth_key, 0)
    assert cell["encrypted"] == fake_encrypted
    inner = parse_introduce_encrypted(plain)
    assert (inner["cookie"], inner["n_ext"], inner["key_type"], inner["onion_key"]) == (cookie, 0, 1, onion_key)
    assert inner["specs"] == [(spec.spec_type, spec.data) for spec in specs]
    assert set(inner["pad"]) <= {0}
    assert len(head) + len(fake_encrypted) >= INTRODUCE1_MIN_SIZE


def test_the_congestion_control_request_is_an_empty_extension_01_of_the_encrypted_part():
    # prop 324 9.2: EXT_FIELD_TYPE [01], no payload; tor build_introduce_cc_extension.
    onion_key, cookie = os.urandom(32), os.urandom(20)
    specs = link_specifiers_for_relay(os.urandom(20), ipv4=("127.0.0.1", 19030), ed25519_identity=os.urandom(32))
    head = encode_introduce1_head(os.urandom(32))
    plain = encode_introduce_plaintext(cookie, onion_key, specs, len(head), congestion_control=True)
    assert plain[20:23] == bytes((1, INTRODUCE1_EXT_CC_REQUEST, 0))
    inner = parse_introduce_encrypted(plain)
    assert inner["extensions"] == [(0x01, b"")]
    assert (inner["cookie"], inner["key_type"], inner["onion_key"]) == (cookie, 1, onion_key)
    assert inner["specs"] == [(spec.spec_type, spec.data) for spec in specs]
    assert set(inner["pad"]) <= {0}
    # The extension takes two bytes of the padding: the message keeps tor's minimum size.
    without = encode_introduce_plaintext(cookie, onion_key, specs, len(head))
    assert parse_introduce_encrypted(without)["extensions"] == []
    assert len(plain) == len(without) == INTRODUCE1_MIN_SIZE - len(head) - 64


def test_a_short_introduce1_is_padded_to_tor_s_minimum():
    head = encode_introduce1_head(os.urandom(32))
    specs = link_specifiers_for_relay(os.urandom(20), ipv4=("127.0.0.1", 1))
    plain = encode_introduce_plaintext(os.urandom(20), os.urandom(32), specs, len(head))
    assert len(head) + 32 + len(plain) + 32 == INTRODUCE1_MIN_SIZE
    assert parse_introduce_encrypted(plain)["pad"] == bytes(len(parse_introduce_encrypted(plain)["pad"]))


@pytest.mark.parametrize("body, status", [
    (b"\x00\x00\x00", IntroduceAckStatus.SUCCESS),
    (b"\x00\x01\x00", IntroduceAckStatus.SERVICE_NOT_RECOGNIZED),
    (b"\x00\x02\x01\x07\x02ab", IntroduceAckStatus.BAD_MESSAGE_FORMAT),
])
def test_introduce_ack(body, status):
    assert decode_introduce_ack_body(body).status == status


@pytest.mark.parametrize("body", [b"", b"\x00\x00", b"\x00\x00\x01\x07\x05ab"])
def test_a_malformed_introduce_ack_is_refused(body):
    with pytest.raises(CellParseError):
        decode_introduce_ack_body(body)


def test_rendezvous2_is_the_handshake_info():
    info = os.urandom(64)
    assert decode_rendezvous2_body(info + bytes(100)) == info
    with pytest.raises(CellParseError):
        decode_rendezvous2_body(info[:63])
