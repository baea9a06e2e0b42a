"""ntor v3 (CREATE2 htype 3), client side: prop 332 vectors, an independent relay, extensions."""

import hashlib
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from oppy.crypto.errors import HandshakeError
from oppy.crypto.kdf import CircuitKeys
from oppy.crypto.ntor_v3 import (
    NtorV3ClientHandshake,
    NtorV3Extension,
    congestion_control_request,
    encode_ntor_v3_extensions,
    parse_congestion_control_response,
    parse_ntor_v3_extensions,
)

PROTOID = b"ntor3-curve25519-sha3_256-1"


def encap(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


def sha3(tweak: bytes, *parts: bytes) -> bytes:
    return hashlib.sha3_256(encap(PROTOID + tweak) + b"".join(parts)).digest()


def shake(tweak: bytes, data: bytes, length: int) -> bytes:
    return hashlib.shake_256(encap(PROTOID + tweak) + data).digest(length)


def aes256_ctr(key: bytes, data: bytes) -> bytes:
    return Cipher(algorithms.AES(key), modes.CTR(bytes(16))).decryptor().update(data)


def relay_ntor_v3(onionskin, relay_id, b_private, y_private, verification, respond):
    """The relay side of prop 332 "Server operation", written from the proposal alone.

    `respond(client_message) -> server_message`. Returns (reply, client_message, keystream of 124
    bytes after ENC_KEY, the server's ENC_KEY).
    """
    b = X25519PrivateKey.from_private_bytes(b_private)
    y = X25519PrivateKey.from_private_bytes(y_private)
    big_b, big_y = b.public_key().public_bytes_raw(), y.public_key().public_bytes_raw()
    node_id, key_id, big_x = onionskin[:32], onionskin[32:64], onionskin[64:96]
    message, mac = onionskin[96:-32], onionskin[-32:]
    assert node_id == relay_id and key_id == big_b
    client_key = X25519PublicKey.from_public_bytes(big_x)
    xb = b.exchange(client_key)
    phase1 = shake(
        b":kdf_phase1", xb + relay_id + big_x + big_b + PROTOID + encap(verification), 64
    )
    enc_k1, mac_k1 = phase1[:32], phase1[32:]
    assert sha3(b":msg_mac", encap(mac_k1), relay_id, big_b, big_x, message) == mac
    client_message = aes256_ctr(enc_k1, message)
    xy = y.exchange(client_key)
    secret_input = xy + xb + relay_id + big_b + big_x + big_y + PROTOID + encap(verification)
    key_seed = sha3(b":key_seed", secret_input)
    verify = sha3(b":verify", secret_input)
    raw_keystream = shake(b":kdf_final", key_seed, 32 + 124)
    enc_key, keystream = raw_keystream[:32], raw_keystream[32:]
    encrypted_reply = aes256_ctr(enc_key, respond(client_message))
    auth = sha3(
        b":auth_final",
        verify,
        relay_id,
        big_b,
        big_y,
        big_x,
        mac,
        encap(encrypted_reply),
        PROTOID,
        b"Server",
    )
    return big_y + auth + encrypted_reply, client_message, keystream, enc_key


# proposals/332-ntor-v3-with-extra-data.md, "X.2: Test vectors" (torproject/torspec).
V_B_PRIVATE = bytes.fromhex("4051daa5921cfa2a1c27b08451324919538e79e788a81b38cbed097a5dff454a")
V_B_PUBLIC = bytes.fromhex("f8307a2bc1870b00b828bb74dbb8fd88e632a6375ab3bcd1ae706aaa8b6cdd1d")
V_ID = bytes.fromhex("9fad2af287ef942632833d21f946c6260c33fae6172b60006e86e4a6911753a2")
V_X_PRIVATE = bytes.fromhex("b825a3719147bcbe5fb1d0b0fcb9c09e51948048e2e3283d2ab7b45b5ef38b49")
V_CLIENT_MESSAGE = bytes.fromhex("68656c6c6f20776f726c64")  # "hello world"
V_VERIFICATION = bytes.fromhex("78797a7a79")  # "xyzzy"
V_Y_PRIVATE = bytes.fromhex("4865a5b7689dafd978f529291c7171bc159be076b92186405d13220b80e2a053")
V_SERVER_MESSAGE = bytes.fromhex("486f6c61204d756e646f")  # "Hola Mundo"
V_SERVER_ENC_KEY = bytes.fromhex(
    "cab8a93eef62246a83536c4384f331ec26061b66098c61421b6cae81f4f57c56"
)
V_CLIENT_HANDSHAKE = bytes.fromhex(
    "9fad2af287ef942632833d21f946c6260c33fae6172b60006e86e4a6911753a2f8307a2bc1870b00b828bb74"
    "dbb8fd88e632a6375ab3bcd1ae706aaa8b6cdd1d252fe9ae91264c91d4ecb8501f79d0387e34ad8ca0f7c995"
    "184f7d11d5da4f463bebd9151fd3b47c180abc9e044d53565f04d82bbb3bebed3d06cea65db8be9c72b68cd4"
    "61942088502f67"
)
V_SERVER_HANDSHAKE = bytes.fromhex(
    "4bf4814326fdab45ad5184f5518bd7fae25dc59374062698201a50a22954246d2fc5f8773ca824542bc6cf6f"
    "57c7c29bbf4e5476461ab130c5b18ab0a91276651202c3e1e87c0d32054c"
)
V_KEYSTREAM = bytes.fromhex(
    "9c19b631fd94ed86a817e01f6c80b0743a43f5faebd39cfaa8b00fa8bcc65c3bfeaa403d91acbd68a821bf6e"
    "e8504602b094a254392a07737d5662768c7a9fb1b2814bb34780eaee6e867c773e28c212ead563e98a1cd5d5"
    "b4576f5ee61c59bde025ff2851bb19b721421694f263818e3531e43a9e4e3e2c661e2ad547d8984caa28ebec"
    "d3e4525452299be26b9185a20a90ce1eac20a91f2832d731b54502b09749b5a2a2949292f8cfcbeffb790c77"
    "90ed935a9d251e7e336148ea83b063a5618fcff674a44581585fd22077ca0e52c59a24347a38d1a1ceebddbf"
    "238541f226b8f88d0fb9c07a1bcd2ea764bbbb5dacdaf5312a14c0b9e4f06309b0333b4a"
)


def vector_client():
    return NtorV3ClientHandshake(
        V_ID,
        V_B_PUBLIC,
        V_CLIENT_MESSAGE,
        verification=V_VERIFICATION,
        ephemeral_private_key=V_X_PRIVATE,
    )


def test_client_handshake_matches_prop332_vector():
    assert vector_client().onionskin == V_CLIENT_HANDSHAKE


def test_completion_matches_prop332_vector():
    keys, server_message = vector_client().complete(V_SERVER_HANDSHAKE)
    assert server_message == V_SERVER_MESSAGE
    assert keys == CircuitKeys.from_key_material(V_KEYSTREAM)


def test_independent_relay_reproduces_prop332_vector():
    reply, client_message, keystream, enc_key = relay_ntor_v3(
        V_CLIENT_HANDSHAKE,
        V_ID,
        V_B_PRIVATE,
        V_Y_PRIVATE,
        V_VERIFICATION,
        lambda message: V_SERVER_MESSAGE,
    )
    assert reply == V_SERVER_HANDSHAKE
    assert client_message == V_CLIENT_MESSAGE
    assert enc_key == V_SERVER_ENC_KEY
    assert keystream == V_KEYSTREAM[: len(keystream)]


def _relay():
    b_private = os.urandom(32)
    return (
        os.urandom(32),
        b_private,
        X25519PrivateKey.from_private_bytes(b_private).public_key().public_bytes_raw(),
    )


def test_round_trip_negotiating_congestion_control():
    relay_id, b_private, b_public = _relay()
    client = NtorV3ClientHandshake(relay_id, b_public, congestion_control_request())
    seen = []

    def respond(message):
        seen.append(message)
        return encode_ntor_v3_extensions([(2, b"\x1f")])

    reply, _, keystream, _ = relay_ntor_v3(
        client.onionskin, relay_id, b_private, os.urandom(32), b"circuit extend", respond
    )
    keys, server_message = client.complete(reply)
    assert seen == [b"\x01\x01\x00"]
    assert server_message == b"\x01\x02\x01\x1f"
    assert parse_congestion_control_response(server_message) == 31
    assert keys == CircuitKeys.from_key_material(keystream)


def test_wrong_verification_string_fails():
    relay_id, b_private, b_public = _relay()
    client = NtorV3ClientHandshake(relay_id, b_public, b"\x00")
    with pytest.raises(AssertionError):  # the relay's MAC check on the client message fails
        relay_ntor_v3(client.onionskin, relay_id, b_private, os.urandom(32), b"other", bytes)


@pytest.mark.parametrize("position", [0, 31, 32, 63, 64, 73])
def test_tampered_reply_is_rejected(position):
    client = vector_client()
    reply = bytearray(V_SERVER_HANDSHAKE)
    reply[position] ^= 0x40
    with pytest.raises(HandshakeError):
        client.complete(bytes(reply))


def test_short_and_degenerate_replies_are_rejected():
    with pytest.raises(HandshakeError, match="at least 64"):
        vector_client().complete(V_SERVER_HANDSHAKE[:63])
    with pytest.raises(HandshakeError, match="degenerate"):
        vector_client().complete(bytes(32) + V_SERVER_HANDSHAKE[32:])
    with pytest.raises(HandshakeError, match="degenerate"):
        NtorV3ClientHandshake(V_ID, bytes(32), b"\x00")


def test_extension_encoding_sorts_and_round_trips():
    encoded = encode_ntor_v3_extensions([(3, b"\x02\x06"), (1, b"")])
    assert encoded == bytes.fromhex("02 0100 03020206")
    assert parse_ntor_v3_extensions(encoded) == [
        NtorV3Extension(1, b""),
        NtorV3Extension(3, b"\x02\x06"),
    ]
    assert encode_ntor_v3_extensions([]) == b"\x00"
    assert congestion_control_request() == b"\x01\x01\x00"
    with pytest.raises(ValueError):
        encode_ntor_v3_extensions([(1, bytes(256))])
    with pytest.raises(ValueError):
        encode_ntor_v3_extensions([(256, b"")])


def test_extension_parsing_tolerates_empty_and_trailing_but_not_truncation():
    assert parse_ntor_v3_extensions(b"") == []
    assert parse_ntor_v3_extensions(b"\x00junk") == []
    for truncated in (b"\x01", b"\x01\x02", b"\x01\x02\x02\x01", b"\x02\x01\x00"):
        with pytest.raises(HandshakeError):
            parse_ntor_v3_extensions(truncated)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=20)), max_size=8))
def test_extension_round_trip_property(extensions):
    parsed = parse_ntor_v3_extensions(encode_ntor_v3_extensions(extensions))
    assert parsed == sorted(NtorV3Extension(t, b) for t, b in extensions)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40))
def test_server_message_parsers_raise_only_handshake_errors(blob):
    try:
        parse_congestion_control_response(blob)
    except HandshakeError:
        pass


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"\x00", None),
        (b"", None),
        (b"\x01\x02\x01\x1f", 31),
        (b"\x01\x02\x01\x20", 32),
        (b"\x01\x02\x01\x1e", 30),
        (b"\x02\x02\x01\x1f\x02\x01\x63", 31),  # only the first 02 counts
        (b"\x01\x07\x00", None),
    ],
)
def test_congestion_control_response(message, expected):
    assert parse_congestion_control_response(message) == expected


@pytest.mark.parametrize("message", [b"\x01\x02\x01\x00", b"\x01\x02\x01\x21", b"\x01\x02\x00"])
def test_congestion_control_response_out_of_range(message):
    with pytest.raises(HandshakeError):
        parse_congestion_control_response(message)
