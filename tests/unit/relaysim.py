"""A simulated relay for sans-IO tests: the relay side of the link handshake, of ntor and of tor1.

Written from tor-spec ("Negotiating and initializing channels", "The ntor handshake", "Routing relay
cells", "Flow control") and sharing no code with oppy: cells are framed, relay cells built and parsed,
and key material computed here with struct, hashlib, hmac and `cryptography`. Certificates come from
tests.unit.certfactory, which is itself independent of oppy. The only oppy type used is RelayTarget,
the value a Circuit is built from.

Three pieces:
- link: `relay_handshake_cells` (VERSIONS, CERTS, AUTH_CHALLENGE, NETINFO as a responder sends them),
  `fixed_cell` / `var_cell` / `parse_cells` to frame cells either way;
- relays: `SimulatedRelay` (identity and ntor onion key) answers ntor and ntor-v3 onionskins (prop 332, with
  the congestion-control extensions of prop 324);
- circuits: `SimulatedPath` is the network side of one circuit (CREATE2, EXTEND2, tor1 in both
  directions) and `RecordingChannel` stands in for the link a Circuit rides; `build_circuit` drives a
  oppy Circuit through a full build against them.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import struct
from typing import NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from oppy.netdoc.relay import RelayTarget

# ------------------------------------------------------------------------------------------------ link

# tor-spec "Cell packet format".
PAYLOAD_LEN = 509
CMD_PADDING = 0
CMD_RELAY = 3
CMD_DESTROY = 4
CMD_CREATE_FAST = 5
CMD_CREATED_FAST = 6
CMD_VERSIONS = 7
CMD_NETINFO = 8
CMD_RELAY_EARLY = 9
CMD_CREATE2 = 10
CMD_CREATED2 = 11
CMD_PADDING_NEGOTIATE = 12
CMD_VPADDING = 128
CMD_CERTS = 129
CMD_AUTH_CHALLENGE = 130
CMD_AUTHENTICATE = 131
FIRST_VARIABLE_COMMAND = 128
# tor-spec "AUTH_CHALLENGE cells": 32 random bytes, then the methods; 0.4.9 offers method 3 only.
AUTH_CHALLENGE_LEN = 32
AUTH_METHOD_ED25519_SHA256_RFC5705 = 3
# tor-spec "NETINFO cells": address types.
NETINFO_IPV4 = 0x04
NETINFO_IPV6 = 0x06

_WIDE_FIXED = struct.Struct(">IB")
_WIDE_VAR = struct.Struct(">IBH")
_NARROW_VAR = struct.Struct(">HBH")


def is_variable(command: int) -> bool:
    return command == CMD_VERSIONS or command >= FIRST_VARIABLE_COMMAND


def fixed_cell(circ_id: int, command: int, payload: bytes = b"") -> bytes:
    """A fixed-length cell with a 4-byte circuit id (link version >= 4), zero-padded to 509 bytes."""
    assert len(payload) <= PAYLOAD_LEN
    return _WIDE_FIXED.pack(circ_id, command) + payload + bytes(PAYLOAD_LEN - len(payload))


def var_cell(circ_id: int, command: int, payload: bytes) -> bytes:
    """A variable-length cell with a 4-byte circuit id."""
    return _WIDE_VAR.pack(circ_id, command, len(payload)) + payload


def versions_cell(versions) -> bytes:
    """The responder's VERSIONS cell: 2-byte circuit id 0, whatever it offers."""
    body = b"".join(struct.pack(">H", version) for version in versions)
    return _NARROW_VAR.pack(0, CMD_VERSIONS, len(body)) + body


def parse_cells(data: bytes) -> list[tuple[int, int, bytes]]:
    """Split complete cells framed with 4-byte circuit ids; asserts nothing is left over."""
    cells = []
    offset = 0
    while offset < len(data):
        circ_id, command = _WIDE_FIXED.unpack_from(data, offset)
        if is_variable(command):
            (length,) = struct.unpack_from(">H", data, offset + 5)
            start = offset + 7
        else:
            start, length = offset + 5, PAYLOAD_LEN
        cells.append((circ_id, command, bytes(data[start:start + length])))
        offset = start + length
    assert offset == len(data), "trailing partial cell"
    return cells


def netinfo_address(address: str) -> bytes:
    packed = ipaddress.ip_address(address).packed
    return bytes((NETINFO_IPV4 if len(packed) == 4 else NETINFO_IPV6, len(packed))) + packed


def netinfo_body(timestamp: int, other_address: str, my_addresses=()) -> bytes:
    """TIME(4) OTHERADDR NMYADDR(1) MYADDR*."""
    body = struct.pack(">I", timestamp) + netinfo_address(other_address) + bytes((len(my_addresses),))
    return body + b"".join(netinfo_address(address) for address in my_addresses)


def auth_challenge_body(methods=(AUTH_METHOD_ED25519_SHA256_RFC5705,)) -> bytes:
    return os.urandom(AUTH_CHALLENGE_LEN) + struct.pack(">H", len(methods)) + b"".join(
        struct.pack(">H", method) for method in methods)


def relay_handshake_cells(certs_body: bytes, *, versions=(3, 4, 5), relay_time: int = 1_700_000_000,
                          client_address: str = "127.0.0.2", relay_address: str = "127.0.0.1") -> list[bytes]:
    """What a responder sends without waiting (tor-spec "Negotiating and initializing channels"):
    VERSIONS, CERTS, AUTH_CHALLENGE, NETINFO, each a separate bytes object."""
    return [
        versions_cell(versions),
        var_cell(0, CMD_CERTS, certs_body),
        var_cell(0, CMD_AUTH_CHALLENGE, auth_challenge_body()),
        fixed_cell(0, CMD_NETINFO, netinfo_body(relay_time, client_address, [relay_address])),
    ]


# ------------------------------------------------------------------------------------------------ ntor

# tor-spec "The ntor handshake".
NTOR_PROTOID = b"ntor-curve25519-sha256-1"
NTOR_T_MAC = NTOR_PROTOID + b":mac"
NTOR_T_KEY = NTOR_PROTOID + b":key_extract"
NTOR_T_VERIFY = NTOR_PROTOID + b":verify"
NTOR_M_EXPAND = NTOR_PROTOID + b":key_expand"
NTOR_ONIONSKIN_LEN = 84  # ID(20) B(32) X(32)
NTOR_REPLY_LEN = 64  # Y(32) AUTH(32)
HTYPE_NTOR = 2
# tor-spec "CREATE_FAST/CREATED_FAST cells": X and Y are HASH_LEN (20) random bytes; KDF-TOR keys the hop.
HASH_LEN = 20
# tor-spec "Setting circuit keys": Df(20) Db(20) Kf(16) Kb(16).
TOR1_KEY_MATERIAL_LEN = 72


# prop 332 A.2 / tor-spec "The ntor-v3 handshake".
HTYPE_NTOR_V3 = 3
NTOR3_PROTOID = b"ntor3-curve25519-sha3_256-1"
NTOR3_VERIFICATION = b"circuit extend"
# prop 324 / tor-spec "Congestion control": the ntor-v3 extensions that negotiate it.
EXT_CC_REQUEST = 1
EXT_CC_RESPONSE = 2


def _encap(data: bytes) -> bytes:
    return struct.pack(">Q", len(data)) + data


def _ntor3_hash(data: bytes, tweak: bytes) -> bytes:
    return hashlib.sha3_256(_encap(NTOR3_PROTOID + tweak) + data).digest()


def _ntor3_kdf(data: bytes, tweak: bytes, length: int) -> bytes:
    return hashlib.shake_256(_encap(NTOR3_PROTOID + tweak) + data).digest(length)


def _aes256_ctr(key: bytes, data: bytes) -> bytes:
    return Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(data)


def parse_extensions(message: bytes) -> list[tuple[int, bytes]]:
    """An ntor-v3 message: NUM(1), then NUM times type(1) len(1) body."""
    extensions, offset = [], 1
    for _ in range(message[0]):
        ext_type, length = message[offset], message[offset + 1]
        extensions.append((ext_type, message[offset + 2:offset + 2 + length]))
        offset += 2 + length
    return extensions


class SimulatedRelay:
    """One relay's identity and ntor onion key, answering CREATE2/EXTEND2 onionskins. `cc_sendme_inc` is
    what it answers a congestion-control request with (None: it does not turn congestion control on);
    `offers_congestion_control` is what its protocols say (FlowCtrl=2 and Relay=4)."""

    def __init__(self, nickname: str, address: str = "10.0.0.1", or_port: int = 9001,
                 with_ed25519: bool = True, offers_congestion_control: bool = False,
                 cc_sendme_inc: int | None = 31) -> None:
        self.nickname = nickname
        self.offers_congestion_control = offers_congestion_control
        self.cc_sendme_inc = cc_sendme_inc
        # The extensions of the last ntor-v3 client message it answered.
        self.client_extensions: list[tuple[int, bytes]] | None = None
        self.address = address
        self.or_port = or_port
        self.rsa_id = os.urandom(20)
        self.ed25519_id = os.urandom(32) if with_ed25519 else None
        self.onion_private = X25519PrivateKey.generate()
        self.onion_key = self.onion_private.public_key().public_bytes_raw()

    @property
    def target(self) -> RelayTarget:
        return RelayTarget(self.nickname, self.rsa_id, self.address, self.or_port, self.onion_key, self.ed25519_id,
                           self.offers_congestion_control)

    @property
    def fingerprint(self) -> str:
        return self.rsa_id.hex().upper()

    def answer_ntor(self, onionskin: bytes, *, corrupt_auth: bool = False) -> tuple[bytes, bytes]:
        """(Y | AUTH, 72 bytes Df Db Kf Kb) for a client onionskin ID | B | X."""
        assert len(onionskin) == NTOR_ONIONSKIN_LEN
        node_id, key_id, client_x = onionskin[:20], onionskin[20:52], onionskin[52:84]
        assert node_id == self.rsa_id, "onionskin names another relay"
        assert key_id == self.onion_key, "onionskin names another onion key"
        y_private = X25519PrivateKey.generate()
        big_y = y_private.public_key().public_bytes_raw()
        big_x = X25519PublicKey.from_public_bytes(client_x)
        secret_input = (y_private.exchange(big_x) + self.onion_private.exchange(big_x) + node_id + key_id
                        + client_x + big_y + NTOR_PROTOID)
        verify = hmac.new(NTOR_T_VERIFY, secret_input, hashlib.sha256).digest()
        auth_input = verify + node_id + key_id + big_y + client_x + NTOR_PROTOID + b"Server"
        auth = hmac.new(NTOR_T_MAC, auth_input, hashlib.sha256).digest()
        if corrupt_auth:
            auth = bytes([auth[0] ^ 1]) + auth[1:]
        material = HKDF(algorithm=hashes.SHA256(), length=TOR1_KEY_MATERIAL_LEN, salt=NTOR_T_KEY,
                        info=NTOR_M_EXPAND).derive(secret_input)
        return big_y + auth, material

    def answer_ntor_v3(self, onionskin: bytes) -> tuple[bytes, bytes]:
        """(Y | AUTH | MSG, 72 bytes Df Db Kf Kb) for a client onionskin ID | B | X | MSG | MAC (prop 332
        "Server operation"). MSG answers the congestion-control request with sendme_inc, or is empty (00)."""
        node_id, key_id, client_x = onionskin[:32], onionskin[32:64], onionskin[64:96]
        encrypted_message, client_mac = onionskin[96:-32], onionskin[-32:]
        assert node_id == self.ed25519_id, "onionskin names another relay"
        assert key_id == self.onion_key, "onionskin names another onion key"
        big_x = X25519PublicKey.from_public_bytes(client_x)
        xb = self.onion_private.exchange(big_x)
        phase1 = _ntor3_kdf(xb + node_id + client_x + key_id + NTOR3_PROTOID + _encap(NTOR3_VERIFICATION),
                            b":kdf_phase1", 64)
        expected_mac = hashlib.sha3_256(_encap(NTOR3_PROTOID + b":msg_mac") + _encap(phase1[32:]) + node_id
                                        + key_id + client_x + encrypted_message).digest()
        assert hmac.compare_digest(expected_mac, client_mac), "client message MAC does not verify"
        message = _aes256_ctr(phase1[:32], encrypted_message)
        assert message, "0.4.9 relays refuse an empty message"
        self.client_extensions = parse_extensions(message)
        asked = any(ext_type == EXT_CC_REQUEST for ext_type, _ in self.client_extensions)
        if asked and self.cc_sendme_inc is not None:
            server_message = bytes([1, EXT_CC_RESPONSE, 1, self.cc_sendme_inc])
        else:
            server_message = b"\x00"
        y_private = X25519PrivateKey.generate()
        big_y = y_private.public_key().public_bytes_raw()
        secret_input = (y_private.exchange(big_x) + xb + node_id + key_id + client_x + big_y + NTOR3_PROTOID
                        + _encap(NTOR3_VERIFICATION))
        key_seed = _ntor3_hash(secret_input, b":key_seed")
        verify = _ntor3_hash(secret_input, b":verify")
        keystream = _ntor3_kdf(key_seed, b":kdf_final", 32 + TOR1_KEY_MATERIAL_LEN)
        encrypted_reply = _aes256_ctr(keystream[:32], server_message)
        auth = _ntor3_hash(verify + node_id + key_id + big_y + client_x + client_mac + _encap(encrypted_reply)
                           + NTOR3_PROTOID + b"Server", b":auth_final")
        return big_y + auth + encrypted_reply, keystream[32:]


# ------------------------------------------------------------------------------------------------ tor1

# tor-spec "Relay cells": command(1) recognized(2) stream_id(2) digest(4) length(2) data.
_RELAY_HEADER = struct.Struct(">BHHIH")
RELAY_HEADER_LEN = 11
RELAY_DATA_LEN = PAYLOAD_LEN - RELAY_HEADER_LEN
RELAY_DATA = 2
RELAY_END = 3
RELAY_CONNECTED = 4
RELAY_SENDME = 5
RELAY_TRUNCATED = 9
RELAY_DROP = 10
RELAY_RESOLVED = 12
RELAY_EXTEND2 = 14
RELAY_EXTENDED2 = 15


class RelayMessage(NamedTuple):
    """A relay cell as the hop that recognized it reads it."""

    hop: int
    command: int
    stream_id: int
    data: bytes
    tag: bytes  # the hop's running forward digest right after this cell (what a SENDME v1 echoes)


def relay_plaintext(command: int, stream_id: int, data: bytes, length: int | None = None) -> bytes:
    """A 509-byte relay payload with recognized and digest zero (length field overridable)."""
    assert len(data) <= RELAY_DATA_LEN
    header = _RELAY_HEADER.pack(command, 0, stream_id, 0, len(data) if length is None else length)
    return header + data + bytes(RELAY_DATA_LEN - len(data))


class RelayHopCrypto:
    """tor1 at one relay: AES-128-CTR with IV 0 and a running SHA-1 per direction, for the circuit's life."""

    def __init__(self, material: bytes) -> None:
        df, db, kf, kb = material[:20], material[20:40], material[40:56], material[56:72]
        self._forward = Cipher(algorithms.AES(kf), modes.CTR(bytes(16))).decryptor()
        self._backward = Cipher(algorithms.AES(kb), modes.CTR(bytes(16))).encryptor()
        self._forward_digest = hashlib.sha1(df)
        self._backward_digest = hashlib.sha1(db)
        # Full 20-byte running digests after each cell recognized here / originated here: SENDME v1 tags.
        self.forward_tags: list[bytes] = []
        self.backward_tags: list[bytes] = []

    def take_forward(self, cell: bytes) -> tuple[bool, bytes]:
        """Remove our forward layer; if the cell is for us, advance the digest and say so."""
        plain = self._forward.update(cell)
        if plain[1:3] != b"\0\0":
            return False, plain
        zeroed = plain[:5] + bytes(4) + plain[9:]
        trial = self._forward_digest.copy()
        trial.update(zeroed)
        if trial.digest()[:4] != plain[5:9]:
            return False, plain
        self._forward_digest = trial
        self.forward_tags.append(trial.digest())
        return True, zeroed

    def originate_backward(self, plain: bytes) -> bytes:
        self._backward_digest.update(plain)
        tag = self._backward_digest.digest()
        self.backward_tags.append(tag)
        return self._backward.update(plain[:5] + tag[:4] + plain[9:])

    def add_backward_layer(self, cell: bytes) -> bytes:
        return self._backward.update(cell)


class ServiceHopCrypto(RelayHopCrypto):
    """The onion service's end of a rendezvous circuit's virtual hop (rend-spec-v3 4.2.1): AES-256-CTR and
    running SHA3-256 digests, keys Df Db Kf Kb of 32 bytes each; its SENDME v1 tags are the digests' first 20
    bytes (tor keeps DIGEST_LEN of them)."""

    def __init__(self, df: bytes, db: bytes, kf: bytes, kb: bytes) -> None:
        self._forward = Cipher(algorithms.AES(kf), modes.CTR(bytes(16))).decryptor()
        self._backward = Cipher(algorithms.AES(kb), modes.CTR(bytes(16))).encryptor()
        self._forward_digest = hashlib.sha3_256(df)
        self._backward_digest = hashlib.sha3_256(db)
        self.forward_tags = _TruncatedTags()
        self.backward_tags = _TruncatedTags()


class _TruncatedTags(list):
    """A list of running digests that keeps each one's first 20 bytes (a SENDME v1 tag)."""

    def append(self, digest: bytes) -> None:
        super().append(digest[:20])


class CircuitNotRecognized(AssertionError):
    """No hop of the simulated path recognized a cell the client sent."""


class SimulatedPath:
    """The network side of one circuit: the relays it goes through and the tor1 state of the hops built."""

    def __init__(self, relays: list[SimulatedRelay]) -> None:
        self.relays = relays
        self.hops: list[RelayHopCrypto] = []

    def answer_create2(self, payload: bytes, *, corrupt_auth: bool = False) -> bytes:
        """CREATE2 `HTYPE HLEN HDATA` -> CREATED2 `HLEN HDATA`; the first hop is then set up."""
        htype, hlen = struct.unpack_from(">HH", payload)
        assert (htype, hlen) == (HTYPE_NTOR, NTOR_ONIONSKIN_LEN)
        reply, material = self.relays[0].answer_ntor(payload[4:4 + hlen], corrupt_auth=corrupt_auth)
        if not corrupt_auth:
            self.hops.append(RelayHopCrypto(material))
        return struct.pack(">H", len(reply)) + reply

    def answer_create_fast(self, payload: bytes, *, corrupt_kh: bool = False) -> bytes:
        """CREATE_FAST `X` -> CREATED_FAST `Y KH`: K = KDF-TOR(X | Y) = SHA1(X|Y|00) | SHA1(X|Y|01) | ...,
        KH = K[:20], then Df Db Kf Kb (tor-spec "Setting circuit keys", KDF-TOR)."""
        client_material, server_material = payload[:HASH_LEN], os.urandom(HASH_LEN)
        stream = b"".join(hashlib.sha1(client_material + server_material + bytes([counter])).digest()
                          for counter in range(5))
        derivative_key = stream[:HASH_LEN]
        if corrupt_kh:
            derivative_key = bytes([derivative_key[0] ^ 1]) + derivative_key[1:]
        else:
            self.hops.append(RelayHopCrypto(stream[HASH_LEN:HASH_LEN + TOR1_KEY_MATERIAL_LEN]))
        return server_material + derivative_key

    def receive(self, payload: bytes) -> RelayMessage:
        """Take a RELAY / RELAY_EARLY payload from the client through the hops until one recognizes it."""
        cell = payload
        for index, hop in enumerate(self.hops):
            recognized, cell = hop.take_forward(cell)
            if recognized:
                command, _, stream_id, _, length = _RELAY_HEADER.unpack_from(cell)
                return RelayMessage(index, command, stream_id, cell[RELAY_HEADER_LEN:RELAY_HEADER_LEN + length],
                                    hop.forward_tags[-1])
        raise CircuitNotRecognized("no simulated hop recognized the client's relay cell")

    def originate(self, hop: int, plain: bytes) -> bytes:
        """A relay payload originated at `hop`, with every layer back to the client added."""
        cell = self.hops[hop].originate_backward(plain)
        for earlier in reversed(self.hops[:hop]):
            cell = earlier.add_backward_layer(cell)
        return cell

    def send(self, hop: int, command: int, stream_id: int = 0, data: bytes = b"") -> bytes:
        return self.originate(hop, relay_plaintext(command, stream_id, data))

    def answer_extend2(self, message: RelayMessage, *, corrupt_auth: bool = False) -> bytes:
        """EXTEND2 at the last hop -> the EXTENDED2 payload it sends back; the new hop is then set up."""
        assert message.command == RELAY_EXTEND2 and message.stream_id == 0
        assert message.hop == len(self.hops) - 1, "EXTEND2 must go to the last hop"
        extend = parse_extend2(message.data)
        next_relay = self.relays[len(self.hops)]
        if extend.handshake_type == HTYPE_NTOR_V3:
            reply, material = next_relay.answer_ntor_v3(extend.handshake_data)
        else:
            assert extend.handshake_type == HTYPE_NTOR
            reply, material = next_relay.answer_ntor(extend.handshake_data, corrupt_auth=corrupt_auth)
        payload = self.send(message.hop, RELAY_EXTENDED2, 0, struct.pack(">H", len(reply)) + reply)
        if not corrupt_auth:
            self.hops.append(RelayHopCrypto(material))
        return payload


class Extend2Body(NamedTuple):
    link_specifiers: list[tuple[int, bytes]]
    handshake_type: int
    handshake_data: bytes


def parse_extend2(body: bytes) -> Extend2Body:
    """tor-spec "EXTEND and EXTENDED cells": NSPEC {LSTYPE LSLEN LSPEC}* HTYPE HLEN HDATA."""
    count, offset = body[0], 1
    specifiers = []
    for _ in range(count):
        spec_type, spec_len = body[offset], body[offset + 1]
        specifiers.append((spec_type, body[offset + 2:offset + 2 + spec_len]))
        offset += 2 + spec_len
    htype, hlen = struct.unpack_from(">HH", body, offset)
    data = body[offset + 4:offset + 4 + hlen]
    assert len(data) == hlen
    return Extend2Body(specifiers, htype, data)


def sendme_v1_body(tag: bytes) -> bytes:
    """tor-spec "SENDME Cell Format" (prop 289): VERSION 1, DATA_LEN 20, the digest."""
    return b"\x01" + struct.pack(">H", len(tag)) + tag


# ------------------------------------------------------------------------------------------------ circuits

class RecordingChannel:
    """Stands in for the link a Circuit rides: it records what the circuit sends."""

    peer_address = "10.0.0.1:9001"
    paused = False
    is_open = True

    def __init__(self, circ_id: int = 0x80001234) -> None:
        self.next_circ_id = circ_id
        self.circuits: dict = {}
        self.sent: list[tuple[int, int, bytes]] = []
        self.destroyed: list[tuple[int, int]] = []
        # How many of the cells sent were to be written at once (circuit SENDMEs).
        self.urgent_cells = 0

    def allocate_circuit_id(self, circuit) -> int:
        circ_id = self.next_circ_id
        self.next_circ_id += 1
        self.circuits[circ_id] = circuit
        return circ_id

    def send_cell(self, circ_id: int, command: int, payload: bytes) -> None:
        self.sent.append((circ_id, command, bytes(payload)))

    def send_cells(self, circ_id: int, command: int, payloads: bytes, urgent: bool = False) -> None:
        assert len(payloads) % PAYLOAD_LEN == 0, "relay cells come as whole 509-byte payloads"
        if urgent:
            self.urgent_cells += len(payloads) // PAYLOAD_LEN
        for offset in range(0, len(payloads), PAYLOAD_LEN):
            self.send_cell(circ_id, command, payloads[offset:offset + PAYLOAD_LEN])

    def destroy_circuit(self, circ_id: int, reason: int = 0) -> None:
        self.circuits.pop(circ_id, None)
        self.destroyed.append((circ_id, reason))

    def take(self) -> list[tuple[int, int, bytes]]:
        sent, self.sent = self.sent, []
        return sent


class RecordingCircuitOwner:
    """Stands in for whoever owns a Circuit (the builder, the circuit manager): records what it hears."""

    def __init__(self) -> None:
        self.extended: list = []
        self.built: list = []
        self.closed: list = []  # the errors
        self.onion_service_messages: list = []

    def circuit_extended(self, circuit) -> None:
        self.extended.append(circuit)

    def circuit_built(self, circuit) -> None:
        self.built.append(circuit)

    def circuit_closed(self, circuit, error) -> None:
        self.closed.append(error)

    def onion_service_message(self, circuit, command, data) -> None:
        self.onion_service_messages.append((command, data))


def new_path(hops: int = 3, **relay_options) -> SimulatedPath:
    names = ["guard", "middle", "exit", "fourth", "fifth"]
    return SimulatedPath([SimulatedRelay(names[i], f"10.0.0.{i + 1}", 9001 + i, **relay_options)
                          for i in range(hops)])


def build_circuit(circuit_class, hops: int = 3, circuit_options: dict | None = None, **relay_options):
    """A oppy Circuit built through `hops` simulated relays: (circuit, channel, path); its owner is a
    RecordingCircuitOwner. `circuit_options` go to the Circuit, `relay_options` to every SimulatedRelay."""
    channel = RecordingChannel()
    path = new_path(hops, **relay_options)
    circuit = circuit_class(channel, [relay.target for relay in path.relays], RecordingCircuitOwner(),
                            **(circuit_options or {}))
    circuit.start()
    ((circ_id, command, payload),) = channel.take()
    assert command == CMD_CREATE2
    circuit.cell_received(CMD_CREATED2, path.answer_create2(payload))
    while len(path.hops) < hops:
        ((circ_id, command, payload),) = channel.take()
        assert command == CMD_RELAY_EARLY
        circuit.cell_received(CMD_RELAY, path.answer_extend2(path.receive(payload)))
    return circuit, channel, path
