"""ntor (CREATE2 htype 2) and CREATE_FAST, client side: vectors and an independent relay."""

import hashlib
import hmac
import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from oppy.crypto.errors import HandshakeError
from oppy.crypto.ntor import (
    NTOR_ONIONSKIN_LEN,
    NTOR_REPLY_LEN,
    CircuitKeys,
    CreateFastHandshake,
    NtorClientHandshake,
)

PROTOID = b"ntor-curve25519-sha256-1"


def relay_ntor_reply(onionskin: bytes, relay_id: bytes, b_private: bytes, y_private: bytes):
    """The relay's half of ntor written straight from tor-spec, sharing no code with oppy.

    Returns (reply, 92 bytes of key material) the way a relay would compute them.
    """
    node_id, key_id, client_public = onionskin[:20], onionskin[20:52], onionskin[52:84]
    b = X25519PrivateKey.from_private_bytes(b_private)
    y = X25519PrivateKey.from_private_bytes(y_private)
    big_b = b.public_key().public_bytes_raw()
    big_y = y.public_key().public_bytes_raw()
    assert node_id == relay_id and key_id == big_b
    big_x = X25519PublicKey.from_public_bytes(client_public)
    secret_input = (
        y.exchange(big_x) + b.exchange(big_x) + relay_id + big_b + client_public + big_y + PROTOID
    )
    verify = hmac.new(PROTOID + b":verify", secret_input, hashlib.sha256).digest()
    auth_input = verify + relay_id + big_b + big_y + client_public + PROTOID + b"Server"
    auth = hmac.new(PROTOID + b":mac", auth_input, hashlib.sha256).digest()
    keys = HKDF(
        algorithm=hashes.SHA256(),
        length=92,
        salt=PROTOID + b":key_extract",
        info=PROTOID + b":key_expand",
    ).derive(secret_input)
    return big_y + auth, keys


# Test vector from arti, crates/tor-proto/src/crypto/handshake/ntor.rs, `fn testvec()`
# (https://gitlab.torproject.org/tpo/core/arti); 72 bytes of keys = Df Db Kf Kb.
VECTOR_B_PRIVATE = bytes.fromhex(
    "4820544f4c4420594f5520444f474954204b454550532048415050454e494e47"
)
VECTOR_B_PUBLIC = bytes.fromhex("ccbc8541904d18af08753eae967874749e6149f873de937f57f8fd903a21c471")
VECTOR_X_PRIVATE = bytes.fromhex(
    "706f6461792069207075742e2e2e2e2e2e2e2e4a454c4c59206f6e2074686973"
)
VECTOR_Y_PRIVATE = bytes.fromhex(
    "70686520737175697272656c2e2e2e2e2e2e2e2e686173206869732067616d65"
)
VECTOR_ID = bytes.fromhex("69546f6c64596f7541626f75745374616972732e")
VECTOR_CLIENT_HANDSHAKE = bytes.fromhex(
    "69546f6c64596f7541626f75745374616972732eccbc8541904d18af08753eae967874749e6149f873de937f57f8"
    "fd903a21c471e65dfdbef8b2635837fe2cebc086a8096eae3213e6830dc407516083d412b078"
)
VECTOR_SERVER_HANDSHAKE = bytes.fromhex(
    "390480a14362761d6aec1fea840f6e9e928fb2adb7b25c670be1045e35133a371cbdf68b89923e1f85e8e18ee6e8"
    "05ea333fe4849c790ffd2670bd80fec95cc8"
)
VECTOR_KEYS = bytes.fromhex(
    "0c62dee7f48893370d0ef896758d35729867beef1a5121df80e00f79ed349af39b51cae125719182f19d932a667d"
    "ae1afbf2e336e6910e7822223e763afad0a13342157969dc6b79"
)


def test_ntor_matches_arti_test_vector():
    client = NtorClientHandshake(
        VECTOR_ID, VECTOR_B_PUBLIC, ephemeral_private_key=VECTOR_X_PRIVATE
    )
    assert client.onionskin == VECTOR_CLIENT_HANDSHAKE
    keys = client.complete(VECTOR_SERVER_HANDSHAKE)
    assert keys.df + keys.db + keys.kf + keys.kb == VECTOR_KEYS


def test_independent_relay_reproduces_the_vector():
    reply, material = relay_ntor_reply(
        VECTOR_CLIENT_HANDSHAKE, VECTOR_ID, VECTOR_B_PRIVATE, VECTOR_Y_PRIVATE
    )
    assert reply == VECTOR_SERVER_HANDSHAKE
    assert material[:72] == VECTOR_KEYS


def _fresh_relay():
    b_private = os.urandom(32)
    b_public = X25519PrivateKey.from_private_bytes(b_private).public_key().public_bytes_raw()
    return os.urandom(20), b_private, b_public


def test_round_trip_with_random_keys_gives_relay_keys_including_kh():
    relay_id, b_private, b_public = _fresh_relay()
    client = NtorClientHandshake(relay_id, b_public)
    assert len(client.onionskin) == NTOR_ONIONSKIN_LEN
    reply, material = relay_ntor_reply(client.onionskin, relay_id, b_private, os.urandom(32))
    assert len(reply) == NTOR_REPLY_LEN
    assert client.complete(reply) == CircuitKeys.from_key_material(material)


def test_each_handshake_uses_a_fresh_ephemeral_key():
    relay_id, _, b_public = _fresh_relay()
    assert (
        NtorClientHandshake(relay_id, b_public).onionskin
        != NtorClientHandshake(relay_id, b_public).onionskin
    )


@pytest.mark.parametrize("position", [0, 17, 31, 32, 45, 63])
def test_tampered_reply_is_rejected(position):
    relay_id, b_private, b_public = _fresh_relay()
    client = NtorClientHandshake(relay_id, b_public)
    reply, _ = relay_ntor_reply(client.onionskin, relay_id, b_private, os.urandom(32))
    tampered = bytearray(reply)
    tampered[position] ^= 0x01
    with pytest.raises(HandshakeError):
        client.complete(bytes(tampered))


def test_reply_from_relay_with_other_onion_key_is_rejected():
    relay_id, b_private, b_public = _fresh_relay()
    client = NtorClientHandshake(relay_id, b_public)
    other_private = os.urandom(32)
    other_public = (
        X25519PrivateKey.from_private_bytes(other_private).public_key().public_bytes_raw()
    )
    # The relay answers as if the client had named its other key.
    forged_skin = client.onionskin[:20] + other_public + client.onionskin[52:]
    reply, _ = relay_ntor_reply(forged_skin, relay_id, other_private, os.urandom(32))
    with pytest.raises(HandshakeError, match="AUTH"):
        client.complete(reply)


def test_reply_for_other_relay_identity_is_rejected():
    relay_id, b_private, b_public = _fresh_relay()
    client = NtorClientHandshake(relay_id, b_public)
    other_id = os.urandom(20)
    reply, _ = relay_ntor_reply(
        other_id + client.onionskin[20:], other_id, b_private, os.urandom(32)
    )
    with pytest.raises(HandshakeError):
        client.complete(reply)


# Curve25519 points of small order: x25519 with any of them yields the all-zero shared secret.
SMALL_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


@pytest.mark.parametrize("point", SMALL_ORDER_POINTS)
def test_degenerate_server_key_is_rejected(point):
    relay_id, _, b_public = _fresh_relay()
    client = NtorClientHandshake(relay_id, b_public)
    with pytest.raises(HandshakeError, match="degenerate"):
        client.complete(point + os.urandom(32))


def test_degenerate_onion_key_is_rejected():
    client = NtorClientHandshake(os.urandom(20), bytes(32))
    y_public = X25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(HandshakeError, match="degenerate"):
        client.complete(y_public + os.urandom(32))


@pytest.mark.parametrize("length", [0, 32, 63, 65, 509])
def test_wrong_reply_length_is_rejected(length):
    relay_id, _, b_public = _fresh_relay()
    with pytest.raises(HandshakeError):
        NtorClientHandshake(relay_id, b_public).complete(os.urandom(length))


def test_constructor_checks_key_lengths():
    with pytest.raises(ValueError):
        NtorClientHandshake(bytes(19), bytes(32))
    with pytest.raises(ValueError):
        NtorClientHandshake(bytes(20), bytes(31))


# CREATE_FAST test vectors from arti crates/tor-proto/src/crypto/handshake/fast.rs `fn testvec()`
# ("Generated from Tor"): client X, server Y | KH, then 100 bytes of keys. arti's TAP key generator
# starts KDF-TOR at counter 1, so these are bytes 20..120 of KDF-TOR(X | Y): KH (bytes 0..20) is
# the relay's proof, and Df Db Kf Kb follow it.
CREATE_FAST_VECTORS = [
    (
        "080E247DF7C252FCD2DC10F459703480C223E3A6",
        "BA95C0D092335428BF80093BBED0B7A26C49E1E8696FBF9C8D6BE26504219C000D26AFE370FCEF04",
        "AFA89B4FC8CF882335A582C52478B5FCB1E08DAF707E2C2D23B8C27D30BD461F3DF98A3AF82221CB658AD0AA"
        "8680B99067E4F7DBC546970EA9A56B26433C71DA867BDD09C14A1308BC327D6A448D71D2382B3AB6AF0BB4E1"
        "9649A8DFF607DB9C57A04AC3",
    ),
    (
        "5F786C724C2F5978474A04FA63772057AD896A03",
        "6210B037001405742FE78B6F5B34E6DB3C9F2F7E24239498613E0ED872E110A00774A3FCB37A7507",
        "D41B65D83FB4B34A322B658BE4D706EDCD8B62813757E719118C394E1F22E1C8EA8959BAB30E856A914C3054"
        "946F547397094DE031F5BCA384C65C8880BF7AAB9CE7BEE33971F9DE8C22A23366F46BF8B5E5112321E216B0"
        "E02C62EEA3ABB72A0E062592",
    ),
]


@pytest.mark.parametrize(("client_hex", "server_hex", "keys_hex"), CREATE_FAST_VECTORS)
def test_create_fast_matches_tor_vectors(client_hex, server_hex, keys_hex):
    handshake = CreateFastHandshake(client_material=bytes.fromhex(client_hex))
    assert handshake.onionskin == bytes.fromhex(client_hex)
    stream_after_kh = bytes.fromhex(keys_hex)
    reply = bytes.fromhex(server_hex)
    # A CREATED_FAST payload arrives zero-padded to 509 bytes.
    keys = handshake.complete(reply + bytes(509 - 40))
    assert keys.kh == reply[20:40]
    assert (keys.df, keys.db, keys.kf, keys.kb) == (
        stream_after_kh[0:20],
        stream_after_kh[20:40],
        stream_after_kh[40:56],
        stream_after_kh[56:72],
    )


def test_create_fast_rejects_wrong_kh_and_short_reply():
    client_hex, server_hex, _ = CREATE_FAST_VECTORS[0]
    reply = bytearray.fromhex(server_hex)
    reply[35] ^= 0x10
    with pytest.raises(HandshakeError, match="KH"):
        CreateFastHandshake(client_material=bytes.fromhex(client_hex)).complete(bytes(reply))
    with pytest.raises(HandshakeError):
        CreateFastHandshake().complete(bytes(39))


def test_create_fast_uses_fresh_randomness():
    assert CreateFastHandshake().onionskin != CreateFastHandshake().onionskin
    assert len(CreateFastHandshake().onionskin) == 20
