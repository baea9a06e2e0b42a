"""Key blinding, subcredentials and time periods: tor's ed25519 blinding vectors (test_crypto.c,
ed25519_vectors.inc), the rend-spec-v3 [TIME-PERIODS] example and tor's test_hs_common.c cases."""

from __future__ import annotations

import calendar
import dataclasses
import hashlib
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from oppy.hs import ed25519
from oppy.hs.errors import BadPublicKey
from oppy.hs.keys import blinded_public_key, blinding_param, credential, subcredential, verify_ed25519
from oppy.hs.timeperiod import (
    TimePeriod,
    consensus_time_period,
    in_period_between_tp_and_srv,
    srv_run_start,
    time_period_at,
    time_period_length,
)
from oppy.netdoc.documents import parse_consensus_header
from tests.support.testdata import REAL_DIRECTORY

TESTDATA = REAL_DIRECTORY

#: tor src/test/ed25519_vectors.inc, one row per key: seed, expanded secret key, public key, blinding
#: parameter, blinded expanded secret key, blinded public key.
TOR_BLINDING_VECTORS = (
    (
        "26c76712d89d906e6672dafa614c42e5cb1caac8c6568e4d2493087db51f0d36",
        "c0a4de23cc64392d85aa1da82b3defddbea946d13bb053bf8489fa9296281f49"
        "5022f1f7ec0dcf52f07d4c7965c4eaed121d5d88d0a8ff546b06116a20e97755",
        "c2247870536a192d142d056abefca68d6193158e7c1a59c1654c954eccaff894",
        "54a513898b471d1d448a2f3c55c1de2c0ef718c447b04497eeb999ed32027823",
        "293c3acff4e902f6f63ddc5d5caa2a57e771db4f24de65d4c28df3232f47fa01"
        "171d43f24e3f53e70ec7ac280044ac77d4942dee5d6807118a59bdf3ee647e89",
        "1fc1fa4465bd9d4956fdbdc9d3acb3c7019bb8d5606b951c2e1dfe0b42eaeb41",
    ),
    (
        "fba7a5366b5cb98c2667a18783f5cf8f4f8d1a2ce939ad22a6e685edde85128d",
        "18a8a69a06790dac778e882f7e868baacfa12521a5c058f5194f3a729184514a"
        "2a656fe7799c3e41f43d756da8d9cd47a061316cfe6147e23ea2f90d1ca45f30",
        "1519a3b15816a1aafab0b213892026ebf5c0dc232c58b21088d88cb90e9b940d",
        "831e9b5325b5d31b7ae6197e9c7a7baf2ec361e08248bce055908971047a2347",
        "38b88f9f9440358da544504ee152fb475528f7c51c285bd1c68b14ade8e29a07"
        "b8ceff20dfcf53eb52b891fc078c934efbf0353af7242e7dc51bb32a093afa29",
        "1cbbd4a88ce8f165447f159d9f628ada18674158c4f7c5ead44ce8eb0fa6eb7e",
    ),
    (
        "67e3aa7a14fac8445d15e45e38a523481a69ae35513c9e4143eb1c2196729a0e",
        "58d84f8862d2ecfa30eb491a81c36d05b574310ea69dae18ecb57e992a896656"
        "b982187ee96c15bf4caeeab2d0b0ae4cd0b8d17470fc7efa98bb26428f4ef36d",
        "081faa81992e360ea22c06af1aba096e7a73f1c665bc8b3e4e531c46455fd1dd",
        "ac78a1d46faf3bfbbdc5af5f053dc6dc9023ed78236bec1760dadfd0b2603760",
        "4d03ce16a3f3249846aac9de0a0075061495c3b027248eeee47da4ddbaf9e004"
        "9217f52e92797462bd890fc274672e05c98f2c82970d640084781334aae0f940",
        "c5419ad133ffde7e0ac882055d942f582054132b092de377d587435722deb028",
    ),
    (
        "d51385942033a76dc17f089a59e6a5a7fe80d9c526ae8ddd8c3a506b99d3d0a6",
        "50702d20b3550c6e16033db5ad4fba16436f1ecc7485be6af62b0732ceb5d173"
        "c47ccd9d044b6ea99dd99256adcc9c62191be194e7cb1a5b58ddcec85d876a2b",
        "73cfa1189a723aad7966137cbffa35140bb40d7e16eae4c40b79b5f0360dd65a",
        "f9c84dc0ac31571507993df94da1b3d28684a12ad14e67d0a068aba5c53019fc",
        "51d7db01aaa0d937a9fd7c8c7381445a14d8fa61f43347af5460d7cd8fda9904"
        "509ecee77082ce088f7c19d5a00e955eeef8df6fa41686abc1030c2d76807733",
        "3e08d0dc291066272e313014bfac4d39ad84aa93c038478a58011f431648105f",
    ),
    (
        "5c8eac469bb3f1b85bc7cd893f52dc42a9ab66f1b02b5ce6a68e9b175d3bb433",
        "7077464c864c2ed5ed21c9916dc3b3ba6256f8b742fec67658d8d233dadc8d5a"
        "7a82c371083cc86892c2c8782dda2a09b6baf016aec51b689183ae59ce932ff2",
        "66c1a77104d86461b6f98f73acf3cd229c80624495d2d74d6fda1e940080a96b",
        "b1fe79d1dec9bc108df69f6612c72812755751f21ecc5af99663b30be8b9081f",
        "1f76cab834e222bd2546efa7e073425680ab88df186ff41327d3e40770129b00"
        "b57b95a440570659a440a3e4771465022a8e67af86bdf2d0990c54e7bb87ff9a",
        "59381f06acb6bf1389ba305f70874eed3e0f2ab57cdb7bc69ed59a9b8899ff4d",
    ),
    (
        "eda433d483059b6d1ff8b7cfbd0fe406bfb23722c8f3c8252629284573b61b86",
        "8883c1387a6c86fc0bd7b9f157b4e4cd83f6885bf55e2706d2235d4527a2f053"
        "11a3595953282e436df0349e1bb313a19b3ddbf7a7b91ecce8a2c34abadb38b3",
        "d21c294db0e64cb2d8976625786ede1d9754186ae8197a64d72f68c792eecc19",
        "81f1512b63ab5fb5c1711a4ec83d379c420574aedffa8c3368e1c3989a3a0084",
        "c23588c23ee76093419d07b27c6df5922a03ac58f96c53671456a7d1bdbf560e"
        "c492fc87d5ec2a1b185ca5a40541fdef0b1e128fd5c2380c888bfa924711bcab",
        "2b946a484344eb1c17c89dd8b04196a84f3b7222c876a07a4cece85f676f87d9",
    ),
    (
        "4377c40431c30883c5fbd9bc92ae48d1ed8a47b81d13806beac5351739b5533d",
        "186791ac8d03a3ac8efed6ac360467edd5a3bed2d02b3be713ddd5be53b3287e"
        "e37436e5fd7ac43794394507ad440ecfdf59c4c255f19b768a273109e06d7d8e",
        "c4d58b4cf85a348ff3d410dd936fa460c4f18da962c01b1963792b9dcc8a6ea6",
        "97f45142597c473a4b0e9a12d64561133ad9e1155fe5a9807fe6af8a93557818",
        "3ed249c6932d076e1a2f6916975914b14e8c739da00992358b8f37d3e7906506"
        "91b4768f8e556d78f4bdcb9a13b6f6066fe81d3134ae965dc48cd0785b3af2b8",
        "c6b585129b135f8769df2eba987e76e089e80ba3a2a6729134d3b28008ac098e",
    ),
    (
        "c6bbcce615839756aed2cc78b1de13884dd3618f48367a17597a16c1cd7a290b",
        "b003077c1e52a62308eef7950b2d532e1d4a7eea50ad22d8ac11b892851f1c40"
        "ffb9c9ff8dcd0c6c233f665a2e176324d92416bfcfcd1f787424c0c667452d86",
        "95126f14d86494020665face03f2d42ee2b312a85bc729903eb17522954a1c4a",
        "3f44f6a5a92cde816635dfc12ade70539871078d2ff097278be2a555c9859cd0",
        "288cbfd923cb286d48c084555b5bdd06c05e92fb81acdb45271367f57515380e"
        "053d9c00c81e1331c06ab50087be8cfc7dc11691b132614474f1aa9c2503cccd",
        "0eefdc795b59cabbc194c6174e34ba9451e8355108520554ec285acabebb34ac",
    ),
    (
        "c6bbcce615839756aed2cc78b1de13884dd3618f48367a17597a16c1cd7a290b",
        "b003077c1e52a62308eef7950b2d532e1d4a7eea50ad22d8ac11b892851f1c40"
        "ffb9c9ff8dcd0c6c233f665a2e176324d92416bfcfcd1f787424c0c667452d86",
        "95126f14d86494020665face03f2d42ee2b312a85bc729903eb17522954a1c4a",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "e5cd03eb4cc456e11bc36724b558873df0045729b22d8b748360067a7770ac02"
        "053d9c00c81e1331c06ab50087be8cfc7dc11691b132614474f1aa9c2503cccd",
        "312404d06a0a9de489904b18d5233e83a50b225977fa8734f2c897a73c067952",
    ),
    (
        "c6bbcce615839756aed2cc78b1de13884dd3618f48367a17597a16c1cd7a290b",
        "b003077c1e52a62308eef7950b2d532e1d4a7eea50ad22d8ac11b892851f1c40"
        "ffb9c9ff8dcd0c6c233f665a2e176324d92416bfcfcd1f787424c0c667452d86",
        "95126f14d86494020665face03f2d42ee2b312a85bc729903eb17522954a1c4a",
        "1111111111111111111111111111111111111111111111111111111111111111",
        "2cf7ed8b163f5af960d2fc62e1883aa422a6090736b4f18a5456ddcaf78ede0c"
        "053d9c00c81e1331c06ab50087be8cfc7dc11691b132614474f1aa9c2503cccd",
        "952a908a4a9e0e5176a2549f8f328955aca6817a9fdc59e3acec5dec50838108",
    ),
)


def _utc(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S"))


def _header(valid_after: str, fresh_until: str, **params: int):
    """The 2024 consensus header with its times and params replaced."""
    data = (TESTDATA / "2024-05-17-aziz" / "cached-microdesc-consensus").read_bytes()
    header = parse_consensus_header(data)
    return dataclasses.replace(header, valid_after=_utc(valid_after), fresh_until=_utc(fresh_until),
                               params=params)


def _sign_with_expanded_key(expanded: bytes, message: bytes) -> bytes:
    """RFC 8032 5.1.6 signing with an expanded key, as a service signs with its blinded key (the
    library signs only from seeds)."""
    public = ed25519.public_key_from_scalar(expanded)
    nonce = int.from_bytes(hashlib.sha512(expanded[32:] + message).digest(), "little") % ed25519.GROUP_ORDER
    commitment = ed25519.public_key_from_scalar(nonce.to_bytes(32, "little"))
    challenge = int.from_bytes(hashlib.sha512(commitment + public + message).digest(), "little")
    scalar = (nonce + challenge * int.from_bytes(expanded[:32], "little")) % ed25519.GROUP_ORDER
    return commitment + scalar.to_bytes(32, "little")


@pytest.mark.parametrize("seed, expanded, public, param, blinded_secret, blinded_public", TOR_BLINDING_VECTORS)
def test_tor_blinding_vectors(seed, expanded, public, param, blinded_secret, blinded_public):
    expanded_key = ed25519.expand_secret_key(bytes.fromhex(seed))
    assert expanded_key.hex() == expanded
    assert ed25519.public_key_from_scalar(expanded_key).hex() == public
    assert ed25519.blind_public_key_with_param(bytes.fromhex(public), bytes.fromhex(param)).hex() == blinded_public
    blinded = ed25519.blind_expanded_secret_key(expanded_key, bytes.fromhex(param))
    assert blinded.hex() == blinded_secret
    # the blinded secret and public keys belong together: a' B == h A
    assert ed25519.public_key_from_scalar(blinded).hex() == blinded_public


@pytest.mark.parametrize("row", TOR_BLINDING_VECTORS[:3])
def test_a_signature_by_the_blinded_secret_key_verifies_with_the_blinded_public_key(row):
    blinded_secret, blinded_public = bytes.fromhex(row[4]), bytes.fromhex(row[5])
    signature = _sign_with_expanded_key(blinded_secret, b"descriptor body")
    assert verify_ed25519(blinded_public, signature, b"descriptor body")
    assert not verify_ed25519(blinded_public, signature, b"descriptor bodY")
    assert not verify_ed25519(bytes.fromhex(row[2]), signature, b"descriptor body")


def test_blinding_refuses_a_key_off_the_curve():
    # tor test_crypto_ed25519_blinding_fail: the bad key fails, the good one blinds.
    bad = bytes.fromhex("e19c65de75c68cf3b7643ea732ba9eb1a3d20d6d57ba223c2ece1df66feb5af0")
    good = bytes.fromhex("4ba2e44760dff4c559ef3c38768c1c14a8a54740c782c8d70803e9d6e3ad8794")
    param = bytes([2]) + bytes(31)
    with pytest.raises(BadPublicKey):
        ed25519.blind_public_key_with_param(bad, param)
    assert len(ed25519.blind_public_key_with_param(good, param)) == 32


def test_blinding_by_period_matches_the_secret_side_and_is_fast():
    expanded = bytes.fromhex(TOR_BLINDING_VECTORS[0][1])
    identity = bytes.fromhex(TOR_BLINDING_VECTORS[0][2])
    period = TimePeriod(16903, 1440, 43200)
    started = time.perf_counter()
    blinded = blinded_public_key(identity, period)
    elapsed = time.perf_counter() - started
    param = blinding_param(identity, period)
    assert blinded == ed25519.public_key_from_scalar(ed25519.blind_expanded_secret_key(expanded, param))
    assert blinded != blinded_public_key(identity, period.next())
    assert elapsed < 0.05


def test_blinding_param_is_the_spec_hash():
    identity = bytes(range(32))
    period = TimePeriod(16903, 1440, 43200)
    nonce = b"key-blind" + (16903).to_bytes(8, "big") + (1440).to_bytes(8, "big")
    basepoint = (b"(15112221349535400772501151409588531511454012693041857206046113283949847762202, "
                 b"46316835694926478169428394003475163141307993866256225615783033603165251855960)")
    expected = hashlib.sha3_256(b"Derive temporary signing key\x00" + identity + basepoint + nonce).digest()
    assert blinding_param(identity, period) == expected


def test_subcredential_is_the_spec_hash_of_the_credential():
    identity, blinded = bytes([1]) * 32, bytes([2]) * 32
    assert credential(identity) == hashlib.sha3_256(b"credential" + identity).digest()
    assert subcredential(identity, blinded) == hashlib.sha3_256(
        b"subcredential" + credential(identity) + blinded).digest()


def test_the_spec_time_period_example():
    # rend-spec-v3 2.2.1: 2016-04-13 11:15:01 UTC is in period 16903, 2016-04-12 12:00 to 04-13 12:00.
    period = time_period_at(1460546101, 1440)
    assert period.number == 16903
    assert period.start == _utc("2016-04-12 12:00:00")
    assert period.end == _utc("2016-04-13 12:00:00")


def test_tor_time_period_cases():
    # tor test_time_period / test_start_time_of_next_time_period
    eleven = _utc("2016-04-13 11:00:00")
    assert time_period_at(eleven, 1440).number == 16903
    assert time_period_at(eleven + 3599, 1440).number == 16903
    assert time_period_at(eleven + 3599, 1440).end == _utc("2016-04-13 12:00:00")
    assert time_period_at(eleven + 3600, 1440).number == 16904
    assert time_period_at(eleven + 3600, 1440).next().number == 16905
    assert time_period_at(eleven + 3600, 1440).end == _utc("2016-04-14 12:00:00")
    # a test network voting every 10 seconds: 4-minute periods, offset by 120 seconds
    assert time_period_at(_utc("2016-04-13 00:00:00"), 4, 10).end == _utc("2016-04-13 00:02:00")
    assert time_period_at(_utc("2016-04-13 00:02:00"), 4, 10).end == _utc("2016-04-13 00:06:00")


def test_period_length_from_the_consensus_and_on_a_test_network():
    assert time_period_length(_header("2016-04-13 11:00:00", "2016-04-13 12:00:00")) == 1440
    assert time_period_length(_header("2016-04-13 11:00:00", "2016-04-13 12:00:00", hsdir_interval=60)) == 60
    # clamped to [30, 14400]
    assert time_period_length(_header("2016-04-13 11:00:00", "2016-04-13 12:00:00", hsdir_interval=5)) == 30
    assert time_period_length(_header("2016-04-13 11:00:00", "2016-04-13 12:00:00",
                                      hsdir_interval=99999)) == 14400
    # a consensus voted every 2 seconds would make 48-second periods: a minute at least
    assert time_period_length(_header("2016-04-13 11:00:00", "2016-04-13 11:00:02"), testing_network=True) == 1
    # the private network votes every 20 seconds: a period is 24 * 20 s = 8 minutes
    testnet = parse_consensus_header((TESTDATA / "testnet-0.4.9.11" / "cached-microdesc-consensus").read_bytes())
    assert time_period_length(testnet, testing_network=True) == 8
    period = consensus_time_period(testnet, testing_network=True)
    assert period.rotation_offset == 240
    assert period.start <= testnet.valid_after < period.end


def test_the_consensus_valid_after_not_the_clock_picks_the_period():
    header = _header("2016-04-13 11:00:00", "2016-04-13 12:00:00")
    assert consensus_time_period(header) == TimePeriod(16903, 1440, 43200)


@pytest.mark.parametrize("valid_after, fresh_until, between", [
    # tor test_time_between_tp_and_srv
    ("1985-10-26 00:00:00", "1985-10-26 01:00:00", False),
    ("1985-10-26 11:00:00", "1985-10-26 12:00:00", False),
    ("1985-10-26 12:00:00", "1985-10-26 13:00:00", True),
    ("1985-10-26 23:00:00", "1985-10-27 00:00:00", True),
    ("1985-10-27 00:00:00", "1985-10-27 01:00:00", False),
])
def test_tor_between_tp_and_srv(valid_after, fresh_until, between):
    header = _header(valid_after, fresh_until)
    assert in_period_between_tp_and_srv(header) is between
    assert srv_run_start(header) == _utc(valid_after[:10] + " 00:00:00")


@settings(max_examples=25, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), param=st.binary(min_size=32, max_size=32))
def test_point_arithmetic_agrees_with_the_library(seed, param):
    """The library derives public keys from seeds and verifies signatures: a differential oracle for our
    scalar multiplication, encoding and blinding."""
    library_key = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    library_public = library_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    expanded = ed25519.expand_secret_key(seed)
    assert ed25519.public_key_from_scalar(expanded) == library_public
    assert ed25519.encode_point(ed25519.validate_public_key(library_public)) == library_public
    blinded_secret = ed25519.blind_expanded_secret_key(expanded, param)
    blinded_public = ed25519.blind_public_key_with_param(library_public, param)
    assert verify_ed25519(blinded_public, _sign_with_expanded_key(blinded_secret, seed), seed)
