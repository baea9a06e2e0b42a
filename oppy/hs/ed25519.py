"""Ed25519 group arithmetic for what ``cryptography`` has no API for: key blinding and torsion checks.

rend-spec-v3 appendix A.2 [KEYBLIND] multiplies a service's public key by a clamped scalar, and
section 2.2.7 asks clients to reject keys with a torsion component (multiply by the group order and
expect the identity). Points are decoded and encoded as RFC 8032 section 5.1 says; arithmetic uses
extended twisted-Edwards coordinates (Hisil-Wong-Carter-Dawson 2008, a = -1). Public data only, so
variable time is fine.
"""

from __future__ import annotations

import hashlib

from oppy.hs.errors import BadPublicKey

__all__ = [
    "ED25519_KEY_LEN",
    "GROUP_ORDER",
    "decode_point",
    "encode_point",
    "scalar_mult",
    "is_torsion_free",
    "validate_public_key",
    "clamp_scalar",
    "blind_public_key_with_param",
    "expand_secret_key",
    "blind_expanded_secret_key",
    "public_key_from_scalar",
]

#: RFC 8032 5.1: field prime, curve constant d, group order l, base point.
FIELD_PRIME = 2**255 - 19
_D = -121665 * pow(121666, FIELD_PRIME - 2, FIELD_PRIME) % FIELD_PRIME
_D2 = 2 * _D % FIELD_PRIME
GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493
_SQRT_M1 = pow(2, (FIELD_PRIME - 1) // 4, FIELD_PRIME)
_BASE_Y = 4 * pow(5, FIELD_PRIME - 2, FIELD_PRIME) % FIELD_PRIME
ED25519_KEY_LEN = 32

#: A point as extended coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, x*y = T/Z.
Point = tuple[int, int, int, int]
_IDENTITY: Point = (0, 1, 1, 0)


def _recover_x(y: int, sign: int) -> int | None:
    """RFC 8032 5.1.3 steps 2-4: the x with this sign bit, or None if y is on no point."""
    p = FIELD_PRIME
    u = (y * y - 1) % p
    v = (_D * y * y + 1) % p
    x = u * pow(v, 3, p) * pow(u * pow(v, 7, p), (p - 5) // 8, p) % p
    check = v * x * x % p
    if check == (-u) % p:
        x = x * _SQRT_M1 % p
    elif check != u:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = p - x
    return x


def decode_point(data: bytes) -> Point:
    """RFC 8032 5.1.3: 32 bytes as a curve point; BadPublicKey if they encode none (canonical y only)."""
    if len(data) != ED25519_KEY_LEN:
        raise BadPublicKey(f"an Ed25519 key is {ED25519_KEY_LEN} bytes, got {len(data)}")
    value = int.from_bytes(data, "little")
    sign = value >> 255
    y = value & ((1 << 255) - 1)
    if y >= FIELD_PRIME:
        raise BadPublicKey("Ed25519 key has a non-canonical y coordinate")
    x = _recover_x(y, sign)
    if x is None:
        raise BadPublicKey("Ed25519 key is not a point on the curve")
    return (x, y, 1, x * y % FIELD_PRIME)


def encode_point(point: Point) -> bytes:
    """RFC 8032 5.1.2: y little-endian with the sign of x in the top bit."""
    x_proj, y_proj, z, _ = point
    z_inv = pow(z, FIELD_PRIME - 2, FIELD_PRIME)
    x = x_proj * z_inv % FIELD_PRIME
    y = y_proj * z_inv % FIELD_PRIME
    return (y | ((x & 1) << 255)).to_bytes(ED25519_KEY_LEN, "little")


def _add(p1: Point, p2: Point) -> Point:
    """HWCD 2008 "add-2008-hwcd-3" for a = -1."""
    p = FIELD_PRIME
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % p
    b = (y1 + x1) * (y2 + x2) % p
    c = t1 * _D2 * t2 % p
    d = 2 * z1 * z2 % p
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % p, g * h % p, f * g % p, e * h % p)


def _double(point: Point) -> Point:
    """HWCD 2008 "dbl-2008-hwcd" for a = -1."""
    p = FIELD_PRIME
    x1, y1, z1, _ = point
    a = x1 * x1 % p
    b = y1 * y1 % p
    c = 2 * z1 * z1 % p
    h = a + b
    e = h - (x1 + y1) * (x1 + y1) % p
    g = a - b
    f = c + g
    return (e * f % p, g * h % p, f * g % p, e * h % p)


def scalar_mult(scalar: int, point: Point) -> Point:
    """scalar * point, with a 4-bit fixed window (about 256 doublings and 64 additions)."""
    table = [_IDENTITY, point]
    for _ in range(14):
        table.append(_add(table[-1], point))
    result = _IDENTITY
    for shift in range(((max(scalar.bit_length(), 1) + 3) // 4 - 1) * 4, -1, -4):
        for _ in range(4):
            result = _double(result)
        nibble = (scalar >> shift) & 0xF
        if nibble:
            result = _add(result, table[nibble])
    return result


def _is_identity(point: Point) -> bool:
    x, y, z, _ = point
    return x % FIELD_PRIME == 0 and (y - z) % FIELD_PRIME == 0


def is_torsion_free(point: Point) -> bool:
    """rend-spec-v3 2.2.7: l * A is the identity exactly when A has no small-order component."""
    return _is_identity(scalar_mult(GROUP_ORDER, point))


def validate_public_key(key: bytes) -> Point:
    """The point of an Ed25519 public key that must be on the curve and torsion-free (tor
    ``ed25519_validate_pubkey``); BadPublicKey otherwise."""
    point = decode_point(key)
    if _is_identity(point) or not is_torsion_free(point):
        raise BadPublicKey("Ed25519 key has a torsion component")
    return point


def clamp_scalar(param: bytes) -> int:
    """rend-spec-v3 A.2: clamp a 32-byte blinding factor as ed25519 clamps secret scalars."""
    if len(param) != 32:
        raise ValueError(f"a blinding factor is 32 bytes, got {len(param)}")
    clamped = bytearray(param)
    clamped[0] &= 248
    clamped[31] &= 63
    clamped[31] |= 64
    return int.from_bytes(clamped, "little")


def blind_public_key_with_param(public_key: bytes, param: bytes) -> bytes:
    """rend-spec-v3 A.2: A' = h A for the clamped factor h (tor ``ed25519_public_blind``)."""
    return encode_point(scalar_mult(clamp_scalar(param), decode_point(public_key)))


# --- secret keys: only a service (and our tests, which play one) needs these ------------------------

#: rend-spec-v3 A.2: RH' = SHA-512(RH_BLIND_STRING | RH)[:32].
RH_BLIND_STRING = b"Derive temporary signing key hash input"


def expand_secret_key(seed: bytes) -> bytes:
    """RFC 8032 5.1.5: a 32-byte seed as tor's 64-byte expanded key (clamped scalar | hash prefix)."""
    digest = bytearray(hashlib.sha512(seed).digest())
    digest[0] &= 248
    digest[31] &= 127
    digest[31] |= 64
    return bytes(digest)


def blind_expanded_secret_key(expanded: bytes, param: bytes) -> bytes:
    """rend-spec-v3 A.2: a' = h a mod l and RH' (tor ``ed25519_keypair_blind``), 64 bytes."""
    scalar = int.from_bytes(expanded[:32], "little") * clamp_scalar(param) % GROUP_ORDER
    prefix = hashlib.sha512(RH_BLIND_STRING + expanded[32:]).digest()[:32]
    return scalar.to_bytes(32, "little") + prefix


def public_key_from_scalar(expanded: bytes) -> bytes:
    """The public key a B of an expanded secret key."""
    base = (_recover_x(_BASE_Y, 0), _BASE_Y, 1, _recover_x(_BASE_Y, 0) * _BASE_Y % FIELD_PRIME)
    return encode_point(scalar_mult(int.from_bytes(expanded[:32], "little"), base))
