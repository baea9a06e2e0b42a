"""tor's hashed control passwords: RFC 2440 iterated and salted S2K, checked against the real tor's
``--hash-password`` and an independent S2K written the obvious way."""

import base64
import hashlib
import os
import re
import shutil
import subprocess

import pytest

from oppy.crypto.s2k import (
    HashedPasswordFormatError,
    check_hashed_password,
    decode_hashed_password,
    hash_password,
    s2k_count,
    s2k_rfc2440,
)

# `tor --hash-password x` output of tor 0.4.9.11.
TOR_HASH_OF_X = "16:B4BCEC21BFCEF4AD60F47424BB7C4A2705B00C356CB436F68697534469"


def independent_s2k(secret: bytes, salt: bytes, count_byte: int) -> bytes:
    """RFC 2440 iterated+salted S2K written the slow, obvious way (tor hashes exactly count bytes)."""
    count = (16 + (count_byte & 15)) << ((count_byte >> 4) + 6)
    block = salt + secret
    stream = block * (count // len(block) + 1)
    return hashlib.sha1(stream[:count]).digest()


def tor_binary() -> str:
    path = shutil.which("tor") or "/usr/bin/tor"
    assert os.access(path, os.X_OK), "tor must be installed (apt-get install tor) for the compatibility check"
    return path


def tor_hash_password(password: str) -> str:
    result = subprocess.run(
        [tor_binary(), "--quiet", "--hash-password", password], capture_output=True, text=True, timeout=30, check=True
    )
    (line,) = [line for line in result.stdout.split() if line.startswith("16:")]
    return line


class TestHashedPassword:
    def test_count_formula(self):
        assert s2k_count(96) == 65536
        assert s2k_count(0) == 1024
        assert s2k_count(0xFF) == 31 << 21

    def test_known_vector_from_tor(self):
        assert check_hashed_password(TOR_HASH_OF_X, "x")
        assert check_hashed_password("16:" + TOR_HASH_OF_X[3:].lower(), b"x")  # tor decodes either case
        assert not check_hashed_password(TOR_HASH_OF_X, "y")
        salt = bytes.fromhex(TOR_HASH_OF_X[3:19])
        assert hash_password("x", salt=salt) == TOR_HASH_OF_X

    @pytest.mark.parametrize("password", ["x", "correct horse battery staple", 'quo"te\\', "pässwörd", ""])
    def test_matches_the_real_tor(self, password):
        hashed = tor_hash_password(password)
        assert check_hashed_password(hashed, password)
        assert not check_hashed_password(hashed, password + "!")
        assert hash_password(password, salt=bytes.fromhex(hashed[3:19])) == hashed

    def test_format_is_tors(self):
        hashed = hash_password("secret")
        assert re.fullmatch(r"16:[0-9A-F]{16}60[0-9A-F]{40}", hashed)
        assert hash_password("secret") != hashed  # fresh salt each time

    @pytest.mark.parametrize("count_byte", [0, 1, 96, 0x2F])
    @pytest.mark.parametrize("secret", [b"", b"pw", b"z" * 3000])
    def test_s2k_against_independent_implementation(self, secret, count_byte):
        salt = b"saltsalt"
        assert s2k_rfc2440(secret, salt + bytes([count_byte])) == independent_s2k(secret, salt, count_byte)

    def test_base64_spelling_is_accepted(self):
        specifier, digest = decode_hashed_password(TOR_HASH_OF_X)
        spelled = base64.b64encode(specifier + digest).decode().rstrip("=")
        assert decode_hashed_password(spelled) == (specifier, digest)
        assert check_hashed_password(spelled, "x")

    @pytest.mark.parametrize(
        "bad", ["16:", "16:ABCD", TOR_HASH_OF_X + "00", TOR_HASH_OF_X[:-2] + "ZZ", "not base64!", "QUJD"]
    )
    def test_malformed_hashes_raise_their_own_error(self, bad):
        with pytest.raises(HashedPasswordFormatError):
            check_hashed_password(bad, "x")

    def test_bad_salt_is_refused(self):
        with pytest.raises(ValueError):
            hash_password("x", salt=b"short")
