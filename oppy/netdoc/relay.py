"""A relay as a client dials it and extends to it, taken from its consensus entry and microdescriptor.

It sits with the documents (not in ``link/``) because path choice, below the link layer, produces it.
"""

from __future__ import annotations

from typing import NamedTuple

from oppy.netdoc.documents import MicrodescRecord, RelayRecord

#: Length of an RSA identity digest (SHA-1; tor-spec "Preliminaries"), and of its hex form.
RSA_ID_LEN = 20
RSA_ID_HEX_LEN = 2 * RSA_ID_LEN


class RelayTarget(NamedTuple):
    """Everything needed to open a link to a relay and run a circuit handshake with it.

    Identities are raw bytes: the 20-byte RSA fingerprint (consensus `r` line / DirAuthority) and the
    32-byte Ed25519 identity (microdescriptor `id ed25519`) when known. `ntor_onion_key` is the 32-byte
    curve25519 key of the microdescriptor's `ntor-onion-key`. `congestion_control`: the relay's protocols
    offer congestion control with ntor v3 (FlowCtrl=2 and Relay=4, tor's supports_congestion_control).
    """

    nickname: str
    rsa_id: bytes
    address: str
    or_port: int
    ntor_onion_key: bytes | None = None
    ed25519_id: bytes | None = None
    congestion_control: bool = False

    @property
    def fingerprint(self) -> str:
        return self.rsa_id.hex().upper()

    def describe(self) -> str:
        """`$FP~nick` as tor names relays in logs and control-port events; a bridge dialled before its
        identity is known is `$` and 40 zeros, as tor names its connection (connection_or_init_conn_from_address)."""
        if not self.rsa_id:
            return "$" + "0" * 2 * RSA_ID_LEN
        return f"${self.fingerprint}~{self.nickname}"


def relay_target(relay: RelayRecord, microdesc: MicrodescRecord | None) -> RelayTarget:
    """The target of a consensus entry: its keys from its microdescriptor (None without one); the
    Ed25519 identity left out when the consensus says ``NoEdConsensus`` (the authorities did not agree
    on it, so a link must not insist on it)."""
    if microdesc is None:
        return RelayTarget(relay.nickname, relay.rsa_id, relay.address, relay.or_port)
    ed25519_id = microdesc.ed25519_id if "NoEdConsensus" not in relay.flags else None
    return RelayTarget(relay.nickname, relay.rsa_id, relay.address, relay.or_port, microdesc.ntor_onion_key,
                       ed25519_id, offers_congestion_control(relay))


# tor-spec "Subprotocol versioning": FlowCtrl=2 is congestion control, Relay=4 the ntor-v3 handshake that
# negotiates it.
PROTOVER_FLOWCTRL_CC = 2
PROTOVER_RELAY_NTOR_V3 = 4


def offers_congestion_control(relay: RelayRecord) -> bool:
    """The relay's `pr` line lists FlowCtrl=2 and Relay=4 (protover.c supports_congestion_control)."""
    return relay.supports_protocol("FlowCtrl", PROTOVER_FLOWCTRL_CC) and \
        relay.supports_protocol("Relay", PROTOVER_RELAY_NTOR_V3)


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def hex_identity(text: str) -> bytes | None:
    """The 20-byte identity in ``$FP`` or ``FP``, as tor's base16_decode reads it: exactly 40 hex digits
    (bytes.fromhex alone would also skip white space inside)."""
    if text.startswith("$"):
        text = text[1:]
    if len(text) != RSA_ID_HEX_LEN or not _HEX_DIGITS.issuperset(text):
        return None
    return bytes.fromhex(text)


def rsa_id_of(identity: bytes | str) -> bytes | None:
    """The 20-byte RSA identity named by raw bytes or by ``$HEX``, ``HEX``, ``$HEX~nick``, ``$HEX=nick``
    (control-spec "ServerID"); None if it names none."""
    if isinstance(identity, (bytes, bytearray)):
        return bytes(identity) if len(identity) == RSA_ID_LEN else None
    text = str(identity)
    for separator in ("~", "="):
        text = text.split(separator, 1)[0]
    return hex_identity(text)
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None
