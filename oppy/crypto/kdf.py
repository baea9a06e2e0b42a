"""The two key derivation functions Tor circuits use.

tor-spec "Setting circuit keys" (setting-circuit-keys.md):

* KDF-TOR, the legacy SHA-1 construction, survives only in CREATE_FAST.
* KDF-RFC5869, i.e. HKDF-SHA256, turns the ntor secret input into circuit keys.
"""

import hashlib
import hmac
from typing import NamedTuple

from oppy.cell.link import HASH_LEN

# SHA-1 output length; KDF-TOR produces its stream in blocks of this size.
_SHA1_LEN = 20
# SHA-256 output length; HKDF-SHA256 produces its stream in blocks of this size.
_SHA256_LEN = 32
# KDF-TOR's counter is one byte and starts at 0 (tor-spec "KDF-TOR"), so it yields at most 256
# blocks.
KDF_TOR_MAX_LEN = 256 * _SHA1_LEN
# RFC 5869 section 2.3: L <= 255 * HashLen.
HKDF_SHA256_MAX_LEN = 255 * _SHA256_LEN


def kdf_tor(key_material: bytes, length: int) -> bytes:
    """KDF-TOR: SHA1(K0 | [00]) | SHA1(K0 | [01]) | ..., truncated to `length` bytes."""
    if not 0 <= length <= KDF_TOR_MAX_LEN:
        raise ValueError(f"KDF-TOR cannot produce {length} bytes (at most {KDF_TOR_MAX_LEN})")
    blocks = []
    for counter in range((length + _SHA1_LEN - 1) // _SHA1_LEN):
        blocks.append(hashlib.sha1(key_material + bytes((counter,))).digest())
    return b"".join(blocks)[:length]


def hkdf_sha256_extract(salt: bytes, input_key_material: bytes) -> bytes:
    """RFC 5869 HKDF-Extract with SHA-256: PRK = HMAC(salt, IKM). Tor calls PRK the KEY_SEED."""
    return hmac.digest(salt, input_key_material, "sha256")


def hkdf_sha256_expand(pseudo_random_key: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-Expand with SHA-256: T(i) = HMAC(PRK, T(i-1) | info | i)."""
    if not 0 <= length <= HKDF_SHA256_MAX_LEN:
        raise ValueError(
            f"HKDF-SHA256 cannot produce {length} bytes (at most {HKDF_SHA256_MAX_LEN})"
        )
    blocks = []
    previous = b""
    for counter in range(1, (length + _SHA256_LEN - 1) // _SHA256_LEN + 1):
        previous = hmac.digest(pseudo_random_key, previous + info + bytes((counter,)), "sha256")
        blocks.append(previous)
    return b"".join(blocks)[:length]


def hkdf_sha256(input_key_material: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-SHA256 (Tor's KDF-RFC5869): extract with `salt`, expand with `info`."""
    return hkdf_sha256_expand(hkdf_sha256_extract(salt, input_key_material), info, length)


# tor-spec "Preliminaries": KEY_LEN (AES-128 key) in bytes; HASH_LEN (SHA-1 output) is the cell layer's.
KEY_LEN = 16
# tor-spec "Setting circuit keys": Df, Db (HASH_LEN each), Kf, Kb (KEY_LEN each) come first ...
TOR1_KEY_MATERIAL_LEN = 2 * HASH_LEN + 2 * KEY_LEN
# ... followed by KH (HASH_LEN), which only onion services use.
CIRCUIT_KEY_MATERIAL_LEN = TOR1_KEY_MATERIAL_LEN + HASH_LEN


class CircuitKeys(NamedTuple):
    """The keys one circuit handshake yields for one hop (tor-spec "Setting circuit keys").

    df/db seed the forward/backward running SHA-1 digests, kf/kb key the forward/backward
    AES-128-CTR streams, kh is the extra HASH_LEN bytes (onion-service nonce; CREATE_FAST's KH).
    """

    df: bytes
    db: bytes
    kf: bytes
    kb: bytes
    kh: bytes

    @classmethod
    def from_key_material(cls, key_material: bytes) -> "CircuitKeys":
        """Split the first CIRCUIT_KEY_MATERIAL_LEN bytes of a KDF stream as Df Db Kf Kb KH."""
        if len(key_material) < CIRCUIT_KEY_MATERIAL_LEN:
            raise ValueError(
                f"need {CIRCUIT_KEY_MATERIAL_LEN} bytes of key material, got {len(key_material)}"
            )
        kf_start = 2 * HASH_LEN
        kb_start = kf_start + KEY_LEN
        kh_start = kb_start + KEY_LEN
        return cls(
            df=key_material[:HASH_LEN],
            db=key_material[HASH_LEN:kf_start],
            kf=key_material[kf_start:kb_start],
            kb=key_material[kb_start:kh_start],
            kh=key_material[kh_start:CIRCUIT_KEY_MATERIAL_LEN],
        )
