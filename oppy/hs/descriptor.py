"""v3 onion-service descriptors, client side (rend-spec-v3 2.4 [DESC-OUTER], 2.5 [HS-DESC-ENC]).

A descriptor fetched from an HSDir is checked and opened in three steps, as tor's
``hs_client_decode_descriptor`` does:

1. the outer document: its signing-key certificate (type 08) must be signed by the blinded key the
   client derived from the address for this time period, unexpired, and its signing key must have
   signed the document;
2. the first layer (``superencrypted``), keyed by the blinded key and subcredential: the client
   authorization lines and the second layer;
3. the second layer (``encrypted``), keyed as well by the descriptor cookie when the service requires
   client authorization: create2-formats and the introduction points.

A malformed or forged descriptor raises :class:`InvalidDescriptor` (SOCKS F1); a second layer that does
not open raises :class:`ClientAuthMissing` (F4) without a client key, :class:`ClientAuthWrong` (F5)
with one. An introduction point that does not parse is skipped, as tor skips it. Sans-IO: bytes and a
clock in, a :class:`HsDescriptor` out.
"""

from __future__ import annotations

import hmac
import re
import struct
from dataclasses import dataclass
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from oppy.cell.errors import CellParseError
from oppy.cell.relay import LinkSpecifier, decode_link_specifier_list
from oppy.crypto.certs import Ed25519Certificate
from oppy.crypto.errors import CertParseError
from oppy.hs.errors import ClientAuthMissing, ClientAuthWrong, InvalidDescriptor
from oppy.hs.keys import subcredential as derive_subcredential
from oppy.hs.keys import verify_ed25519
from oppy.hs.ntor import aes256_ctr, hs_mac, shake256_kdf
from oppy.netdoc.fields import decode_base64, parse_decimal, parse_time, read_object

__all__ = [
    "HS_DESC_MAX_LEN",
    "HS_DESC_MAX_LIFETIME_MINUTES",
    "MAX_INTRO_POINTS",
    "CERT_TYPE_SIGNING_HS_DESC",
    "CERT_TYPE_AUTH_HS_IP_KEY",
    "CERT_TYPE_CROSS_HS_IP_KEYS",
    "AuthClient",
    "OuterDescriptor",
    "FirstLayer",
    "IntroductionPoint",
    "PowParams",
    "SecondLayer",
    "HsDescriptor",
    "parse_outer_descriptor",
    "decrypt_layer",
    "parse_first_layer",
    "parse_second_layer",
    "descriptor_cookie",
    "decode_descriptor",
]

#: rend-spec-v3 2.4: HSDirs take descriptors of up to 50k bytes (tor HS_DESC_MAX_LEN).
HS_DESC_MAX_LEN = 50000
#: tor HS_DESC_MAX_LIFETIME: 12 hours, in minutes as the document states it.
HS_DESC_MAX_LIFETIME_MINUTES = 12 * 60
#: rend-spec-v3 2.5.4: at most 20 introduction points (tor HS_CONFIG_V3_MAX_INTRO_POINTS).
MAX_INTRO_POINTS = 20
#: rend-spec-v3 appendix E / tor torcert.h: the certificate types inside descriptors.
CERT_TYPE_SIGNING_HS_DESC = 0x08
CERT_TYPE_AUTH_HS_IP_KEY = 0x09
CERT_TYPE_CROSS_HS_IP_KEYS = 0x0B
#: rend-spec-v3 2.4: the signature covers this prefix and the document up to "signature ".
DESC_SIG_PREFIX = b"Tor onion service descriptor sig v3"
#: rend-spec-v3 2.5.1.1 / 2.5.2.1: the layers' STRING_CONSTANTs.
SUPERENCRYPTED_CONSTANT = b"hsdir-superencrypted-data"
ENCRYPTED_CONSTANT = b"hsdir-encrypted-data"
#: rend-spec-v3 2.5.3: SALT, S_KEY_LEN, S_IV_LEN, MAC_KEY_LEN and the MAC.
SALT_LEN = 16
_KEY_LEN = 32
_IV_LEN = 16
_MAC_LEN = 32
#: rend-spec-v3 2.5.1.2 / tor hs_descriptor.h: auth-client field sizes and the descriptor cookie.
CLIENT_ID_LEN = 8
COOKIE_IV_LEN = 16
DESCRIPTOR_COOKIE_LEN = 16
_COOKIE_KEY_LEN = 32
#: tor ED25519_SIG_BASE64_LEN: 64 bytes as unpadded base64.
_SIGNATURE_BASE64_LEN = 86
_CURVE25519_KEY_LEN = 32
_ED25519_KEY_LEN = 32
#: rend-spec-v3 2.5.2.2: the CREATE2 handshake type a service must list (ntor), and the one
#: introduction-layer authentication type tor knows.
HTYPE_NTOR = 2
KNOWN_INTRO_AUTH_TYPES = ("ed25519",)
#: proposal 327 / tor hs_descriptor.c pow_types: the proof-of-work schemes, and the seed length.
KNOWN_POW_TYPES = ("v1",)
POW_SEED_LEN = 32
_MAX_HTYPE = 0xFFFF

_KEYWORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")


# ------------------------------------------------------------------------------------------ tokenizer


class _Item(NamedTuple):
    """One keyword line of a directory-style document, with its object if one follows."""

    keyword: str
    args: tuple[str, ...]
    object_type: str | None
    object_data: bytes | None
    offset: int


def _tokenize(text: str, what: str) -> list[_Item]:
    """dir-spec's meta-format: ``Keyword args NL`` lines, each optionally followed by a
    ``-----BEGIN TYPE-----`` base64 ``-----END TYPE-----`` object. Blank lines are skipped."""
    items: list[_Item] = []
    lines = text.split("\n")
    offsets = []
    position = 0
    for line in lines:
        offsets.append(position)
        position += len(line) + 1
    index = 0
    while index < len(lines):
        line, offset = lines[index], offsets[index]
        index += 1
        if not line.strip():
            continue
        parts = line.split()
        keyword = parts[0]
        if _KEYWORD_RE.match(keyword) is None or line[0] in " \t":
            raise InvalidDescriptor(f"{what}: bad line {line[:60]!r}")
        object_type = object_data = None
        if index < len(lines) and lines[index].startswith("-----BEGIN "):
            object_type, object_data, index = read_object(lines, index, InvalidDescriptor, f"{what} {keyword}")
        items.append(_Item(keyword, tuple(parts[1:]), object_type, object_data, offset))
    return items


class _Rule(NamedTuple):
    """How often a keyword may appear, how many arguments it needs, and its object (tor token_rule_t)."""

    min_count: int
    max_count: int | None
    min_args: int
    max_args: int | None
    object_type: str | None   # "" = no object allowed, None = optional, else required of that type


def _check_rules(items: list[_Item], rules: dict[str, _Rule], what: str) -> dict[str, list[_Item]]:
    """Group the items by keyword and enforce the rules; keywords without a rule are ignored."""
    found: dict[str, list[_Item]] = {keyword: [] for keyword in rules}
    for item in items:
        rule = rules.get(item.keyword)
        if rule is None:
            continue
        if len(item.args) < rule.min_args or (rule.max_args is not None and len(item.args) > rule.max_args):
            raise InvalidDescriptor(f"{what}: {item.keyword!r} has {len(item.args)} arguments")
        if rule.object_type == "" and item.object_type is not None:
            raise InvalidDescriptor(f"{what}: {item.keyword!r} must not carry an object")
        if rule.object_type and item.object_type != rule.object_type:
            raise InvalidDescriptor(f"{what}: {item.keyword!r} needs a {rule.object_type} object")
        found[item.keyword].append(item)
    for keyword, rule in rules.items():
        count = len(found[keyword])
        if count < rule.min_count or (rule.max_count is not None and count > rule.max_count):
            raise InvalidDescriptor(f"{what}: {keyword!r} appears {count} times")
    return found


def _decode_text(data: bytes | str, what: str) -> str:
    if isinstance(data, str):
        text = data
    elif isinstance(data, (bytes, bytearray, memoryview)):
        try:
            text = bytes(data).decode("ascii")
        except UnicodeDecodeError:
            raise InvalidDescriptor(f"{what} is not ASCII") from None
    else:
        raise InvalidDescriptor(f"{what} must be bytes, not {type(data).__name__}")
    if "\x00" in text or not text.isascii():
        raise InvalidDescriptor(f"{what} holds a NUL or non-ASCII character")
    return text


def _key(text: str, length: int, what: str) -> bytes:
    key = decode_base64(text, InvalidDescriptor, what)
    if len(key) != length:
        raise InvalidDescriptor(f"{what} is {len(key)} bytes, not {length}")
    return key


def _certificate(item: _Item, cert_type: int, now: float, what: str) -> Ed25519Certificate:
    """tor ``cert_parse_and_validate``: the type, the signing key extension, its signature, expiry."""
    try:
        certificate = Ed25519Certificate.parse(item.object_data or b"")
    except CertParseError as exc:
        raise InvalidDescriptor(f"{what}: {exc}") from None
    if certificate.cert_type != cert_type:
        raise InvalidDescriptor(f"{what} has type {certificate.cert_type:#04x}, not {cert_type:#04x}")
    if certificate.signing_key is None:
        raise InvalidDescriptor(f"{what} does not include its signing key")
    if not certificate.signature_is_valid(certificate.signing_key):
        raise InvalidDescriptor(f"{what} has a bad signature")
    if certificate.is_expired(now):
        raise InvalidDescriptor(f"{what} expired")
    return certificate


def _encrypted_blob(item: _Item, what: str) -> bytes:
    blob = item.object_data or b""
    if len(blob) <= SALT_LEN + _MAC_LEN:
        raise InvalidDescriptor(f"{what} is {len(blob)} bytes: too short for salt, data and MAC")
    return blob


# ------------------------------------------------------------------------------------------ outer


@dataclass(frozen=True, slots=True)
class OuterDescriptor:
    """The outer document, its form checked (rend-spec-v3 2.4)."""

    lifetime_minutes: int
    signing_key_cert: Ed25519Certificate
    revision_counter: int
    superencrypted: bytes
    signature: bytes
    #: The bytes signed: everything before ``signature``.
    signed_part: bytes

    @property
    def signing_key(self) -> bytes:
        """The descriptor signing key the certificate certifies."""
        return self.signing_key_cert.certified_key

    @property
    def blinded_key(self) -> bytes:
        """The blinded key that signed the certificate (its signed-with-ed25519-key extension)."""
        return self.signing_key_cert.signing_key


_OUTER_RULES = {
    "hs-descriptor": _Rule(1, 1, 1, 1, ""),
    "descriptor-lifetime": _Rule(1, 1, 1, 1, ""),
    "descriptor-signing-key-cert": _Rule(1, 1, 0, 0, "ED25519 CERT"),
    "revision-counter": _Rule(1, 1, 1, 1, ""),
    "superencrypted": _Rule(1, 1, 0, 0, "MESSAGE"),
    "signature": _Rule(1, 1, 1, 1, ""),
}


def parse_outer_descriptor(data: bytes | str, now: float) -> OuterDescriptor:
    """Read the outer document and check its certificate (type 08, signed by the key in its extension,
    unexpired at ``now``) and its signature by the certified signing key (tor
    ``desc_decode_plaintext_v3``). Whose blinded key signed is the caller's check."""
    what = "onion service descriptor"
    text = _decode_text(data, what)
    if len(text) > HS_DESC_MAX_LEN:
        raise InvalidDescriptor(f"{what} is {len(text)} bytes, more than {HS_DESC_MAX_LEN}")
    items = _tokenize(text, what)
    if not items or items[0].keyword != "hs-descriptor":
        raise InvalidDescriptor(f"{what} does not start with 'hs-descriptor'")
    if items[-1].keyword != "signature":
        raise InvalidDescriptor(f"{what} does not end with 'signature'")
    found = _check_rules(items, _OUTER_RULES, what)
    version = found["hs-descriptor"][0].args[0]
    if version != "3":
        raise InvalidDescriptor(f"{what} has unsupported version {version[:20]!r}")
    lifetime = parse_decimal(found["descriptor-lifetime"][0].args[0], InvalidDescriptor,
                             "descriptor-lifetime", 0, HS_DESC_MAX_LIFETIME_MINUTES)
    certificate = _certificate(found["descriptor-signing-key-cert"][0], CERT_TYPE_SIGNING_HS_DESC, now,
                               "descriptor-signing-key-cert")
    revision = parse_decimal(found["revision-counter"][0].args[0], InvalidDescriptor, "revision-counter",
                             0, 2**64 - 1)
    superencrypted = _encrypted_blob(found["superencrypted"][0], "superencrypted")
    signature_item = found["signature"][0]
    encoded_signature = signature_item.args[0]
    if len(encoded_signature) != _SIGNATURE_BASE64_LEN:
        raise InvalidDescriptor(f"descriptor signature has {len(encoded_signature)} characters, "
                                f"not {_SIGNATURE_BASE64_LEN}")
    signature = decode_base64(encoded_signature, InvalidDescriptor, "descriptor signature")
    signed_part = text[:signature_item.offset].encode("ascii")
    if not verify_ed25519(certificate.certified_key, signature, DESC_SIG_PREFIX + signed_part):
        raise InvalidDescriptor("descriptor signature does not verify with its signing key")
    return OuterDescriptor(lifetime, certificate, revision, superencrypted, signature, signed_part)


# ------------------------------------------------------------------------------------------ layers


def decrypt_layer(blob: bytes, secret_data: bytes, subcredential: bytes, revision_counter: int,
                  constant: bytes) -> bytes | None:
    """rend-spec-v3 2.5.3: check the MAC of SALT | ENCRYPTED | MAC and decrypt; the plaintext up to its
    NUL padding, or None if the MAC does not match or nothing is left (tor ``decrypt_desc_layer``)."""
    salt, encrypted, mac = blob[:SALT_LEN], blob[SALT_LEN:-_MAC_LEN], blob[-_MAC_LEN:]
    secret_input = secret_data + subcredential + struct.pack(">Q", revision_counter)
    keys = shake256_kdf(secret_input + salt + constant, _KEY_LEN + _IV_LEN + _MAC_LEN)
    key, iv, mac_key = keys[:_KEY_LEN], keys[_KEY_LEN:_KEY_LEN + _IV_LEN], keys[_KEY_LEN + _IV_LEN:]
    # D_MAC = H(mac_key_len | MAC_KEY | salt_len | SALT | ENCRYPTED): the spec's MAC with salt_len first
    expected = hs_mac(mac_key, struct.pack(">Q", len(salt)) + salt + encrypted)
    if not hmac.compare_digest(expected, mac):
        return None
    plaintext = aes256_ctr(key, encrypted, iv)
    end = plaintext.find(b"\x00")
    plaintext = plaintext if end < 0 else plaintext[:end]
    return plaintext or None


class AuthClient(NamedTuple):
    """An ``auth-client`` line: the descriptor cookie encrypted to one client (rend-spec-v3 2.5.1.2)."""

    client_id: bytes
    iv: bytes
    encrypted_cookie: bytes


@dataclass(frozen=True, slots=True)
class FirstLayer:
    """The plaintext of the superencrypted layer (rend-spec-v3 2.5.1.2)."""

    auth_type: str
    ephemeral_key: bytes
    auth_clients: tuple[AuthClient, ...]
    encrypted: bytes


_FIRST_LAYER_RULES = {
    "desc-auth-type": _Rule(1, 1, 1, None, ""),
    "desc-auth-ephemeral-key": _Rule(1, 1, 1, None, ""),
    "auth-client": _Rule(1, None, 3, None, ""),
    "encrypted": _Rule(1, 1, 0, 0, "MESSAGE"),
}


def parse_first_layer(plaintext: bytes) -> FirstLayer:
    """tor ``desc_decode_superencrypted_v3``: auth type x25519, the ephemeral key, the auth-client lines
    and the second layer's blob."""
    what = "descriptor first layer"
    items = _tokenize(_decode_text(plaintext, what), what)
    if not items or items[0].keyword != "desc-auth-type":
        raise InvalidDescriptor(f"{what} does not start with 'desc-auth-type'")
    found = _check_rules(items, _FIRST_LAYER_RULES, what)
    auth_type = found["desc-auth-type"][0].args[0]
    if auth_type != "x25519":
        raise InvalidDescriptor(f"{what} has unknown desc-auth-type {auth_type[:20]!r}")
    ephemeral = _key(found["desc-auth-ephemeral-key"][0].args[0], _CURVE25519_KEY_LEN, "desc-auth-ephemeral-key")
    clients = tuple(
        AuthClient(_key(item.args[0], CLIENT_ID_LEN, "auth-client id"),
                   _key(item.args[1], COOKIE_IV_LEN, "auth-client iv"),
                   _key(item.args[2], DESCRIPTOR_COOKIE_LEN, "auth-client cookie"))
        for item in found["auth-client"])
    encrypted = _encrypted_blob(found["encrypted"][0], "encrypted")
    return FirstLayer(auth_type, ephemeral, clients, encrypted)


def descriptor_cookie(first_layer: FirstLayer, subcredential: bytes, client_key: bytes) -> bytes | None:
    """rend-spec-v3 2.5.1.3: the descriptor cookie from the auth-client line our x25519 key opens, or
    None if no line carries our CLIENT-ID (tor ``decrypt_descriptor_cookie``)."""
    try:
        seed = X25519PrivateKey.from_private_bytes(client_key).exchange(
            X25519PublicKey.from_public_bytes(first_layer.ephemeral_key))
    except ValueError:
        return None
    keys = shake256_kdf(subcredential + seed, CLIENT_ID_LEN + _COOKIE_KEY_LEN)
    client_id, cookie_key = keys[:CLIENT_ID_LEN], keys[CLIENT_ID_LEN:]
    for client in first_layer.auth_clients:
        if hmac.compare_digest(client.client_id, client_id):
            return aes256_ctr(cookie_key, client.encrypted_cookie, client.iv)
    return None


# ------------------------------------------------------------------------------------------ second layer


@dataclass(frozen=True, slots=True)
class IntroductionPoint:
    """One introduction point (rend-spec-v3 2.5.2.2), with the keys a client uses to reach it.

    ``link_specifiers`` go verbatim, in this order, into the EXTEND2 to the point; ``onion_key`` is its
    ntor key for that extend; ``auth_key`` (Ed25519) and ``enc_key`` (x25519 B) feed hs-ntor.
    """

    link_specifiers: tuple[LinkSpecifier, ...]
    onion_key: bytes
    auth_key: bytes
    enc_key: bytes
    auth_key_cert: Ed25519Certificate
    enc_key_cert: Ed25519Certificate


class PowParams(NamedTuple):
    """``pow-params type seed-b64 suggested-effort expiration-time`` (proposal 327; tor 0.4.8
    ``decode_pow_params``). tor refetches a cached descriptor once ``expires`` has passed."""

    type: str
    seed: bytes
    suggested_effort: int
    expires: int


@dataclass(frozen=True, slots=True)
class SecondLayer:
    """The plaintext of the encrypted layer (rend-spec-v3 2.5.2.2)."""

    create2_formats: tuple[int, ...]
    intro_auth_required: tuple[str, ...]
    single_onion_service: bool
    #: ``flow-control`` (proposal 324): the FlowCtrl protocol versions and the service's sendme_inc;
    #: None if absent. tor refuses a sendme_inc more than 1 away from the consensus's cc_sendme_inc:
    #: the caller, who holds the consensus, checks that.
    flow_control: tuple[str, int] | None
    #: ``pow-params`` (proposal 327): the service's proof-of-work offer; None if absent.
    pow_params: PowParams | None
    introduction_points: tuple[IntroductionPoint, ...]


_SECOND_LAYER_RULES = {
    "create2-formats": _Rule(1, 1, 0, None, ""),
    "intro-auth-required": _Rule(0, 1, 1, None, ""),
    "single-onion-service": _Rule(0, 1, 0, None, ""),
    "flow-control": _Rule(0, 1, 2, None, ""),
    "pow-params": _Rule(0, 1, 4, None, ""),
}
_INTRO_POINT_RULES = {
    "introduction-point": _Rule(1, 1, 1, 1, ""),
    "onion-key": _Rule(1, None, 2, None, None),
    "auth-key": _Rule(1, 1, 0, 0, "ED25519 CERT"),
    "enc-key": _Rule(1, 1, 2, None, None),
    "enc-key-cert": _Rule(1, 1, 0, None, "ED25519 CERT"),
    "legacy-key": _Rule(0, 1, 0, None, None),
    "legacy-key-cert": _Rule(0, 1, 0, None, None),
}
_INTRO_POINT_START = "\nintroduction-point "


def _create2_formats(args: tuple[str, ...]) -> tuple[int, ...]:
    """tor ``decode_create2_list``: the handshake types, unparseable entries skipped."""
    formats = []
    for arg in args:
        try:
            formats.append(parse_decimal(arg, InvalidDescriptor, "create2-formats", 1, _MAX_HTYPE))
        except InvalidDescriptor:
            continue
    return tuple(formats)


def _pow_params(args: tuple[str, ...]) -> PowParams:
    """tor ``decode_pow_params``: a known type (by prefix, as tor compares), a 32-byte seed, a 32-bit
    effort and a ``YYYY-MM-DDTHH:MM:SS`` expiration."""
    kind, seed, effort, expiration = args[:4]
    if not any(kind.startswith(known) for known in KNOWN_POW_TYPES):
        raise InvalidDescriptor(f"pow-params type {kind[:20]!r} is unknown")
    if len(expiration) != 19 or expiration[10] != "T":
        raise InvalidDescriptor(f"pow-params expiration {expiration[:30]!r} is not YYYY-MM-DDTHH:MM:SS")
    return PowParams(kind, _key(seed, POW_SEED_LEN, "pow-params seed"),
                     parse_decimal(effort, InvalidDescriptor, "pow-params suggested effort", 0, 2**32 - 1),
                     parse_time(expiration[:10] + " " + expiration[11:], InvalidDescriptor))


def _introduction_point(text: str, signing_key: bytes, now: float) -> IntroductionPoint:
    what = "introduction point"
    found = _check_rules(_tokenize(text, what), _INTRO_POINT_RULES, what)
    encoded = decode_base64(found["introduction-point"][0].args[0], InvalidDescriptor, "link specifiers")
    try:
        link_specifiers = decode_link_specifier_list(encoded)
    except CellParseError as exc:
        raise InvalidDescriptor(f"{what} link specifiers: {exc}") from None
    ntor_keys = [item for item in found["onion-key"] if item.args[0] == "ntor"]
    if not ntor_keys:
        raise InvalidDescriptor(f"{what} has no ntor onion-key")
    onion_key = _key(ntor_keys[-1].args[1], _CURVE25519_KEY_LEN, "onion-key ntor")
    auth_cert = _certificate(found["auth-key"][0], CERT_TYPE_AUTH_HS_IP_KEY, now, "auth-key certificate")
    enc_item = found["enc-key"][0]
    if enc_item.args[0] != "ntor":
        raise InvalidDescriptor(f"{what} enc-key type {enc_item.args[0][:20]!r} is unknown")
    enc_key = _key(enc_item.args[1], _CURVE25519_KEY_LEN, "enc-key ntor")
    enc_cert = _certificate(found["enc-key-cert"][0], CERT_TYPE_CROSS_HS_IP_KEYS, now, "enc-key-cert")
    for certificate, name in ((auth_cert, "auth-key"), (enc_cert, "enc-key-cert")):
        if not hmac.compare_digest(certificate.signing_key, signing_key):
            raise InvalidDescriptor(f"{what} {name} is not signed by the descriptor signing key")
    return IntroductionPoint(link_specifiers, onion_key, auth_cert.certified_key, enc_key, auth_cert, enc_cert)


def parse_second_layer(plaintext: bytes, signing_key: bytes, now: float) -> SecondLayer:
    """tor ``desc_decode_encrypted_v3``: create2-formats must list ntor, intro-auth-required must name a
    type we know; introduction points that do not parse are skipped; at most 20 remain."""
    what = "descriptor second layer"
    text = _decode_text(plaintext, what)
    found = _check_rules(_tokenize(text, what), _SECOND_LAYER_RULES, what)
    if not text.startswith("create2-formats"):
        raise InvalidDescriptor(f"{what} does not start with 'create2-formats'")
    formats = _create2_formats(found["create2-formats"][0].args)
    if HTYPE_NTOR not in formats:
        raise InvalidDescriptor(f"{what}: create2-formats does not include ntor")
    auth_required: tuple[str, ...] = ()
    if found["intro-auth-required"]:
        auth_required = found["intro-auth-required"][0].args
        if not any(auth.startswith(known) for auth in auth_required for known in KNOWN_INTRO_AUTH_TYPES):
            raise InvalidDescriptor(f"{what}: intro-auth-required names no known type")
    flow_control = None
    if found["flow-control"]:
        versions, sendme_inc = found["flow-control"][0].args[:2]
        flow_control = (versions, parse_decimal(sendme_inc, InvalidDescriptor, "flow-control sendme_inc", 1, 255))
    points = []
    for chunk in text.split(_INTRO_POINT_START)[1:]:
        try:
            points.append(_introduction_point("introduction-point " + chunk, signing_key, now))
        except InvalidDescriptor:
            continue   # tor decode_intro_points: a malformed point is ignored, the others kept
    if len(points) > MAX_INTRO_POINTS:
        raise InvalidDescriptor(f"{what} has {len(points)} introduction points, more than {MAX_INTRO_POINTS}")
    pow_params = _pow_params(found["pow-params"][0].args) if found["pow-params"] else None
    return SecondLayer(formats, auth_required, bool(found["single-onion-service"]), flow_control, pow_params,
                       tuple(points))


# ------------------------------------------------------------------------------------------ all of it


@dataclass(frozen=True, slots=True)
class HsDescriptor:
    """A checked and decrypted descriptor: what a client needs to introduce itself, and to cache it."""

    outer: OuterDescriptor
    first_layer: FirstLayer
    second_layer: SecondLayer
    subcredential: bytes

    @property
    def revision_counter(self) -> int:
        return self.outer.revision_counter

    @property
    def lifetime(self) -> int:
        """descriptor-lifetime in seconds."""
        return self.outer.lifetime_minutes * 60

    @property
    def introduction_points(self) -> tuple[IntroductionPoint, ...]:
        return self.second_layer.introduction_points


def decode_descriptor(data: bytes | str, identity_key: bytes, blinded_key: bytes, now: float,
                      client_key: bytes | None = None) -> HsDescriptor:
    """Check and open a descriptor fetched for the service ``identity_key`` under ``blinded_key`` (the
    client's blinded key for the current period), with its x25519 client-authorization key if it has
    one (tor ``hs_client_decode_descriptor``)."""
    outer = parse_outer_descriptor(data, now)
    if not hmac.compare_digest(outer.blinded_key, blinded_key):
        raise InvalidDescriptor("descriptor signing key is not certified by the service's blinded key")
    subcredential = derive_subcredential(identity_key, blinded_key)
    first_plaintext = decrypt_layer(outer.superencrypted, blinded_key, subcredential, outer.revision_counter,
                                    SUPERENCRYPTED_CONSTANT)
    if first_plaintext is None:
        raise InvalidDescriptor("descriptor first layer does not decrypt (MAC mismatch)")
    first_layer = parse_first_layer(first_plaintext)
    cookie = descriptor_cookie(first_layer, subcredential, client_key) if client_key is not None else None
    secret_data = blinded_key + cookie if cookie is not None else blinded_key
    second_plaintext = decrypt_layer(first_layer.encrypted, secret_data, subcredential, outer.revision_counter,
                                     ENCRYPTED_CONSTANT)
    if second_plaintext is None:
        if client_key is None:
            raise ClientAuthMissing("descriptor second layer does not decrypt: the service likely requires "
                                    "client authorization")
        raise ClientAuthWrong("descriptor second layer does not decrypt with our client authorization key")
    second_layer = parse_second_layer(second_plaintext, outer.signing_key, now)
    return HsDescriptor(outer, first_layer, second_layer, subcredential)
