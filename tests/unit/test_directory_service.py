"""The directory service's logic with a synthetic, genuinely signed network and fake transports.

Three authorities with real RSA keys sign microdesc consensuses built here; a fake
DirectoryClient answers BEGIN_DIR requests from those documents; time is a
``task.Clock`` and "threads" run inline, so bootstrap, fallback, backoff, refresh and trust
decisions can be stepped through deterministically. One test uses the real reactor and
the real 2017 directory to check that loading it never stalls the reactor.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import logging
import random
import shutil
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.internet import defer, task, threads

from oppy.circuit.circuit import CircuitState
from oppy.circuit.manager import CircuitManager
from oppy.directory.cache import CACHED_CONSENSUS_FILE, DirectoryCache
from oppy.directory.client import (
    MAX_MICRODESCS_PER_REQUEST,
    DirectoryClient,
    DirectoryConnectionError,
    DirectoryResponse,
    DirectoryStatusError,
)
from oppy.directory.service import (
    DIRECTORY_ROUND_DEADLINE,
    BootstrapPhase,
    BootstrapStatus,
    DirectoryService,
    SourceKind,
    signature_key_ids,
)
from oppy.link.connection import LinkConnected, LinkFailed, LinkLaunched, LinkOpened, LinkPool
from oppy.logs import NOTICE
from oppy.netdoc.authorities import DirAuthority, FallbackDir
from oppy.netdoc.documents import parse_consensus_header
from oppy.netdoc.errors import DirectoryError
from oppy.netdoc.fields import format_time, parse_time
from oppy.path.chooser import PathChooser
from oppy.path.selection import NoPathError
from tests.support.testdata import REAL_DIRECTORY
from tests.unit.dirsim import WireDirectory
from tests.unit.relaysim import CMD_CREATE2, CMD_CREATE_FAST, SimulatedRelay
from tests.unit.tlsrelay import DirectoryCacheRelay

T0 = parse_time("2030-01-01 00:00:00")
HOUR = 3600
SERVICE_LOGGER = "oppy.directory.service"


# ------------------------------------------------------------------------------------------ a signed network


@functools.cache
def rsa_key(index: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def der(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.PKCS1)


def raw_sign(key: rsa.RSAPrivateKey, digest: bytes) -> bytes:
    """PKCS#1 v1.5 type-1 padding over a bare digest, as tor signs."""
    size = (key.key_size + 7) // 8
    padded = b"\x00\x01" + b"\xff" * (size - 3 - len(digest)) + b"\x00" + digest
    numbers = key.private_numbers()
    return pow(int.from_bytes(padded, "big"), numbers.d, numbers.public_numbers.n).to_bytes(size, "big")


def pem(kind: str, data: bytes) -> str:
    body = base64.b64encode(data).decode()
    return (f"-----BEGIN {kind}-----\n" + "".join(body[i:i + 64] + "\n" for i in range(0, len(body), 64))
            + f"-----END {kind}-----\n")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


@dataclass
class Authority:
    index: int

    @property
    def nickname(self) -> str:
        return f"auth{self.index}"

    @property
    def identity(self) -> rsa.RSAPrivateKey:
        return rsa_key(2 * self.index)

    @property
    def signing(self) -> rsa.RSAPrivateKey:
        return rsa_key(2 * self.index + 1)

    @property
    def v3ident(self) -> str:
        return hashlib.sha1(der(self.identity)).hexdigest().upper()

    @property
    def dir_port(self) -> int:
        return 7000 + self.index

    def record(self) -> DirAuthority:
        return DirAuthority(self.nickname, self.v3ident, hashlib.sha1(self.nickname.encode()).hexdigest().upper(),
                            "127.0.0.1", self.dir_port, 5000 + self.index)

    def certificate(self) -> bytes:
        identity_digest = hashlib.sha1(der(self.identity)).digest()
        body = ("dir-key-certificate-version 3\n"
                f"fingerprint {self.v3ident}\n"
                f"dir-key-published {format_time(T0 - 30 * 24 * HOUR)}\n"
                f"dir-key-expires {format_time(T0 + 365 * 24 * HOUR)}\n"
                "dir-identity-key\n" + pem("RSA PUBLIC KEY", der(self.identity))
                + "dir-signing-key\n" + pem("RSA PUBLIC KEY", der(self.signing))
                + "dir-key-crosscert\n" + pem("ID SIGNATURE", raw_sign(self.signing, identity_digest))
                + "dir-key-certification\n")
        certification = raw_sign(self.identity, hashlib.sha1(body.encode()).digest())
        return (body + pem("SIGNATURE", certification)).encode()

    def signing_key_digest(self) -> str:
        return hashlib.sha1(der(self.signing)).hexdigest().upper()


@dataclass
class Relay:
    nickname: str
    flags: str
    bandwidth: int = 1000
    address: str = "127.0.0.1"
    key_version: int = 0
    policy: str = ""
    seed: bytes = b""

    def __post_init__(self):
        self.seed = self.seed or self.nickname.encode()
        self.rsa_id = hashlib.sha1(b"rsa" + self.seed).digest()
        self.ed25519_id = hashlib.sha256(b"ed" + self.seed).digest()
        self.or_port = 9000 + int(hashlib.sha1(self.seed).hexdigest()[:3], 16)

    @property
    def ntor_private_key(self) -> X25519PrivateKey:
        seed = hashlib.sha256(b"ntor" + self.seed + bytes([self.key_version])).digest()
        return X25519PrivateKey.from_private_bytes(seed)

    @property
    def ntor_key(self) -> bytes:
        return self.ntor_private_key.public_key().public_bytes_raw()

    def simulated(self) -> SimulatedRelay:
        """This relay as relaysim plays it: its identity and ntor onion key."""
        relay = SimulatedRelay(self.nickname, self.address, self.or_port)
        relay.rsa_id, relay.ed25519_id = self.rsa_id, self.ed25519_id
        relay.onion_private, relay.onion_key = self.ntor_private_key, self.ntor_key
        return relay

    @property
    def microdesc(self) -> bytes:
        policy = self.policy or ("p accept 1-65535\n" if "Exit" in self.flags else "")
        return (f"onion-key\nntor-onion-key {b64(self.ntor_key)}\n{policy}"
                f"id ed25519 {b64(self.ed25519_id)}\n").encode()

    @property
    def digest(self) -> str:
        return b64(hashlib.sha256(self.microdesc).digest())


GUARD_FLAGS = "Fast Guard Running Stable V2Dir Valid"
EXIT_FLAGS = "Exit Fast Running Stable V2Dir Valid"
BANDWIDTH_WEIGHTS = ("Wbd=0 Wbe=0 Wbg=4993 Wbm=10000 Wdb=10000 Web=10000 Wed=10000 Wee=10000 Weg=10000 "
                     "Wem=10000 Wgb=10000 Wgd=0 Wgg=5007 Wgm=5007 Wmb=10000 Wmd=0 Wme=0 Wmg=4993 Wmm=10000")


class SyntheticNetwork:
    """Three signing authorities and some relays; documents are built on demand."""

    def __init__(self, n_guards: int = 5, n_exits: int = 2, n_middles: int = 0):
        self.authorities = [Authority(i) for i in range(3)]
        self.relays = [Relay(f"guard{i}", GUARD_FLAGS, 1000 + 100 * i) for i in range(n_guards)]
        self.relays += [Relay(f"exit{i}", EXIT_FLAGS, 2000) for i in range(n_exits)]
        self.relays += [Relay(f"middle{i}", "Fast Running V2Dir Valid", 500) for i in range(n_middles)]

    def records(self) -> list[DirAuthority]:
        return [authority.record() for authority in self.authorities]

    def certificates(self) -> bytes:
        return b"".join(authority.certificate() for authority in self.authorities)

    def relay(self, nickname: str) -> Relay:
        return next(relay for relay in self.relays if relay.nickname == nickname)

    def consensus(self, valid_after: int = T0, interval: int = HOUR, signers=None, relays=None,
                  params: str = "") -> bytes:
        signers = self.authorities if signers is None else signers
        relays = self.relays if relays is None else relays
        lines = [
            "network-status-version 3 microdesc", "vote-status consensus", "consensus-method 35",
            f"valid-after {format_time(valid_after)}", f"fresh-until {format_time(valid_after + interval)}",
            f"valid-until {format_time(valid_after + 3 * interval)}", "voting-delay 4 4",
            "client-versions ", "server-versions ",
            "known-flags Exit Fast Guard NoEdConsensus Running Stable V2Dir Valid",
            "required-client-protocols Cons=2 Desc=2 FlowCtrl=1 Link=4 Microdesc=2 Relay=2",
        ]
        if params:
            lines.append(f"params {params}")
        for authority in self.authorities:
            lines += [f"dir-source {authority.nickname} {authority.v3ident} 127.0.0.1 127.0.0.1 "
                      f"{authority.dir_port} {5000 + authority.index}", "contact test",
                      f"vote-digest {'0' * 40}"]
        for relay in relays:
            lines += [f"r {relay.nickname} {b64(relay.rsa_id)} 2038-01-01 00:00:00 {relay.address} "
                      f"{relay.or_port} 0", f"m {relay.digest}", f"s {relay.flags}", "v Tor 0.4.9.11",
                      "pr Link=3-5 Relay=2-6", f"w Bandwidth={relay.bandwidth}"]
        lines += ["directory-footer", f"bandwidth-weights {BANDWIDTH_WEIGHTS}"]
        text = "\n".join(lines) + "\n"
        first = True
        for authority in signers:
            prefix = "directory-signature "
            line = f"sha256 {authority.v3ident} {authority.signing_key_digest()}\n"
            if first:
                signed = (text + prefix).encode()
                digest = hashlib.sha256(signed).digest()
                first = False
            text += prefix + line + pem("SIGNATURE", raw_sign(authority.signing, digest))
        return text.encode()

    def microdescs(self, digests) -> bytes:
        wanted = set(digests)
        return b"".join(relay.microdesc for relay in self.relays if relay.digest in wanted)


# ------------------------------------------------------------------------------------------ fakes


class DirectoryServer:
    """Answers directory URLs from a SyntheticNetwork's current documents, like a tor directory cache."""

    def __init__(self, network: SyntheticNetwork, consensus: bytes):
        self.network = network
        self.consensus = consensus
        self.refuse_digests: set[str] = set()
        self.tamper_digests: set[str] = set()
        #: Put before the microdescriptors of every reply.
        self.microdesc_annotation = b""
        self.down = False

    def answer(self, path: str, if_modified_since):
        if self.down:
            raise DirectoryConnectionError("cannot connect: Connection refused")
        if path.startswith("/tor/status-vote/current/consensus-microdesc"):
            try:
                valid_after = parse_consensus_header(self.consensus).valid_after
            except DirectoryError:
                valid_after = None      # a malformed document, served as it is
            if if_modified_since is not None and valid_after is not None and valid_after <= if_modified_since:
                raise DirectoryStatusError("HTTP 304 Not modified", 304)
            return self.consensus
        if path.startswith("/tor/keys/"):
            return self.network.certificates()
        if path.startswith("/tor/micro/d/"):
            digests = path[len("/tor/micro/d/"):].removesuffix(".z").split("-")
            assert len(digests) <= MAX_MICRODESCS_PER_REQUEST
            served = [d for d in digests if d not in self.refuse_digests]
            body = self.network.microdescs(served)
            for relay in self.network.relays:
                if relay.digest in self.tamper_digests and relay.digest in served:
                    body = body.replace(relay.microdesc, relay.microdesc.replace(b"id ed25519", b"id  ed25519"))
            # An unrequested extra is dropped by the client.
            extra = next(relay for relay in self.network.relays if relay.digest not in digests) \
                if len(digests) < len(self.network.relays) else None
            if extra is not None:
                body += extra.microdesc
            if not body:
                raise DirectoryStatusError("HTTP 404 Not found", 404)
            return self.microdesc_annotation + body
        raise DirectoryStatusError("HTTP 404 Not found", 404)


class FakeClient:
    """Stands in for DirectoryClient: BEGIN_DIR requests go to servers by relay nickname."""

    def __init__(self):
        self.relays: dict[str, DirectoryServer] = {}
        self.requests: list[tuple[str, str, str]] = []

    def _answer(self, server, source, path, if_modified_since):
        if server is None:
            return defer.fail(DirectoryConnectionError(f"{source}: cannot connect: Connection refused"))
        try:
            body = server.answer(path, if_modified_since)
        except Exception as exc:  # noqa: BLE001
            return defer.fail(exc)
        return defer.succeed(DirectoryResponse(200, "OK", {}, body, source, len(body)))

    def fetch_over_circuit(self, circuit, path, max_size, *, relay=None, if_modified_since=None):
        relay = relay or circuit.path[-1]
        self.requests.append(("begin_dir", relay.nickname, path))
        return self._answer(self.relays.get(relay.nickname), f"{relay.nickname} (BEGIN_DIR)", path,
                            if_modified_since)

    def kinds(self, transport=None):
        def kind(path):
            if "consensus" in path:
                return "consensus"
            return "certificates" if "/keys/" in path else "microdescriptors"
        return [kind(path) for t, _, path in self.requests if transport in (None, t)]


@dataclass
class FakeCircuit:
    path: list


@dataclass
class FakeCircuits:
    """Stands in for the circuit manager's directory circuits (FakeClient only reads their relay) and for the
    link pool beneath them, whose typed events it tells: a relay in ``broken`` refuses the connection."""

    broken: set = field(default_factory=set)
    got: list = field(default_factory=list)
    observers: list = field(default_factory=list)

    def add_observer(self, observer):
        self.observers.append(observer)

    def remove_observer(self, observer):
        self.observers.remove(observer)

    def directory_circuit(self, target):
        self.got.append(target.nickname)
        events = [LinkLaunched(target)] + ([LinkFailed(target, "Connection refused")] if target.nickname in self.broken
                                           else [LinkConnected(target), LinkOpened(target)])
        for event in events:
            for observer in list(self.observers):
                observer(event)
        if target.nickname in self.broken:
            return defer.fail(ConnectionRefusedError(f"link to {target.nickname} refused"))
        return defer.succeed(FakeCircuit([target]))


@dataclass
class World:
    network: SyntheticNetwork
    clock: task.Clock
    client: FakeClient
    circuits: FakeCircuits
    servers: list
    directory: Path

    def service(self, testing: bool = True, seed: int = 1, run_in_thread=None, **options) -> DirectoryService:
        """The service; "threads" run inline unless ``run_in_thread`` says otherwise."""
        return DirectoryService(
            self.network.records(), self.directory, self.circuits, testing, self.clock,
            lambda: T0 + 600 + self.clock.seconds(), links=self.circuits, rng=random.Random(seed), client=self.client,
            run_in_thread=run_in_thread or (lambda function, *args: defer.maybeDeferred(function, *args)),
            **options)

    def publish(self, consensus: bytes) -> None:
        for server in self.servers:
            server.consensus = consensus


def make_world(tmp_path, network=None, consensus=None) -> World:
    network = network or SyntheticNetwork()
    consensus = consensus or network.consensus()
    client = FakeClient()
    servers = []
    for authority in network.authorities:
        server = DirectoryServer(network, consensus)
        client.relays[authority.nickname] = server
        servers.append(server)
    for relay in network.relays:
        server = DirectoryServer(network, consensus)
        client.relays[relay.nickname] = server
        servers.append(server)
    return World(network, task.Clock(), client, FakeCircuits(), servers, tmp_path / "data")


def run(deferred):
    """The result of a Deferred that has fired (everything here is synchronous)."""
    results = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def bootstrap_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name == SERVICE_LOGGER and record.getMessage().startswith("Bootstrapped")]


def percents(caplog) -> list[int]:
    return [int(line.split()[1].rstrip("%")) for line in bootstrap_lines(caplog)]


# ------------------------------------------------------------------------------------------ bootstrap


def test_bootstrap_from_scratch_over_begin_dir_to_the_authorities_with_tors_phases(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="oppy")
    world = make_world(tmp_path)
    service = world.service()
    assert run(service.start()) is service
    assert service.enough_dir_info
    assert percents(caplog) == [0, 5, 10, 14, 15, 20, 25, 30, 40, 45, 50, 75]
    assert bootstrap_lines(caplog)[-1] == "Bootstrapped 75% (enough_dirinfo): Loaded enough directory info to " \
                                          "build circuits"
    assert all(record.levelno == NOTICE for record in caplog.records
               if record.getMessage().startswith("Bootstrapped"))
    assert service.bootstrap_phase == (75, "enough_dirinfo", "Loaded enough directory info to build circuits")
    assert world.client.kinds() == ["consensus", "certificates", "microdescriptors"]
    # No fallback is configured: the authorities are asked, at their ORPorts.
    assert {nickname for _, nickname, _ in world.client.requests} <= {"auth0", "auth1", "auth2"}
    assert service.fetch_counts == {"consensus": 1, "consensus:authority": 1, "certificates": 1,
                                    "certificates:authority": 1, "microdescriptors": 1,
                                    "microdescriptors:authority": 1}
    assert world.client.requests[0][2] == "/tor/status-vote/current/consensus-microdesc.z"
    keys = world.client.requests[1][2]
    assert keys.startswith("/tor/keys/fp-sk/") and keys.count("+") == 2
    assert len(service.netdir.microdescs) == len(world.network.relays)
    assert service.netdir.consensus.valid_after == T0
    for name in ("cached-certs", "cached-microdesc-consensus", "cached-microdescs", "state"):
        assert (world.directory / name).exists(), name
    assert (world.directory / CACHED_CONSENSUS_FILE).read_bytes() == world.network.consensus()
    run(service.stop())


def test_authorities_are_tried_in_random_order(tmp_path):
    world = make_world(tmp_path)
    orders = set()
    for seed in range(12):
        service = world.service(seed=seed)
        orders.add(tuple(source.nickname for source in service._directory_sources()))
    assert len(orders) > 1 and all(sorted(order) == ["auth0", "auth1", "auth2"] for order in orders)


def test_fallbacks_are_asked_first_and_the_authorities_last_all_at_their_orports(tmp_path):
    """C tor bootstraps from the fallback directories and spares the authorities; every source is a relay's
    ORPort (BEGIN_DIR), named by the RSA identity its line gives; an authority without one is never asked."""
    network = SyntheticNetwork()
    world = make_world(tmp_path, network)
    fallback_relays = [network.relay("guard1"), network.relay("exit0")]
    fallbacks = [FallbackDir(relay.address, relay.or_port, relay.rsa_id.hex().upper(), nickname=relay.nickname)
                 for relay in fallback_relays]
    records = network.records()
    records[2] = dataclasses.replace(records[2], or_port=None)          # a DirPort-only authority line
    service = DirectoryService(records, world.directory, world.circuits, True, world.clock,
                               lambda: T0 + 600 + world.clock.seconds(), fallback_dirs=fallbacks,
                               rng=random.Random(1), client=world.client,
                               run_in_thread=lambda function, *args: defer.maybeDeferred(function, *args))
    sources = service._directory_sources()
    assert [source.kind for source in sources] == [SourceKind.FALLBACK] * 2 + [SourceKind.AUTHORITY] * 2
    assert {source.target.rsa_id for source in sources[:2]} == {relay.rsa_id for relay in fallback_relays}
    assert {source.nickname for source in sources[:2]} == {"guard1", "exit0"}
    assert {(source.target.address, source.target.or_port) for source in sources[2:]} == {
        ("127.0.0.1", 5000), ("127.0.0.1", 5001)}
    # Nothing is known of their onion keys yet: their circuits are created with CREATE_FAST.
    assert all(source.target.ntor_onion_key is None for source in sources)
    run(service.start())
    assert service.fetch_counts["consensus:fallback"] == 1 and service.fetch_counts["consensus:authority"] == 0
    after = service._directory_sources()
    kinds = [source.kind for source in after]
    assert kinds[:4] == [SourceKind.DIRECTORY_GUARD] * 3 + [SourceKind.CACHE]
    assert kinds[4:] == [SourceKind.FALLBACK] * 2 + [SourceKind.AUTHORITY] * 2
    # Their microdescriptors are held now: a fallback is reached with ntor, its line's address kept.
    fallback = next(source.target for source in after if source.kind is SourceKind.FALLBACK
                    and source.target.rsa_id == fallback_relays[1].rsa_id)
    assert (fallback.ntor_onion_key, fallback.or_port) == (fallback_relays[1].ntor_key, fallback_relays[1].or_port)
    run(service.stop())


def test_unreachable_and_forged_sources_are_skipped(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="oppy")
    world = make_world(tmp_path)
    service = world.service(seed=3)
    order = [source.nickname for source in world.service(seed=3)._directory_sources()]
    world.client.relays[order[0]].down = True
    consensus = world.network.consensus()
    forged = consensus.replace(b"w Bandwidth=1000\n", b"w Bandwidth=9000\n", 1)
    assert len(forged) == len(consensus) and forged != consensus
    world.client.relays[order[1]].consensus = forged
    run(service.start())
    assert service.netdir.consensus.valid_after == T0 and service.enough_dir_info
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("Rejected the microdesc consensus from $") and f"~{order[1]} at" in warnings[0]
    assert "BadSignatureError" in warnings[0] and "did not verify" in warnings[0]
    assert "No consensus is in use yet" in warnings[0]


def test_no_reachable_authority_warns_once_and_backs_off(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="oppy")
    world = make_world(tmp_path)
    world.circuits.broken.update(authority.nickname for authority in world.network.authorities)
    service = world.service(testing=False)
    waiter = service.start()
    assert not waiter.called
    delays = []
    for _ in range(10):
        (call,) = world.clock.getDelayedCalls()
        delays.append(call.getTime() - world.clock.seconds())
        world.clock.advance(delays[-1])
    assert delays == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert len(world.circuits.got) == 3 * 11 and world.client.requests == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("No directory authority or cache could be reached")
    assert "auth0" in warnings[0] and "Retrying in 2 s" in warnings[0]
    assert service.bootstrap_phase[0] == 5           # stuck at "conn", like tor
    world.circuits.broken.clear()
    world.clock.advance(300)
    assert run(waiter) is service
    assert any("Got a usable consensus again" in r.getMessage() for r in caplog.records
               if r.levelno == NOTICE)
    run(service.stop())
    assert world.clock.getDelayedCalls() == []


def test_testing_network_backoff_is_capped_lower(tmp_path):
    world = make_world(tmp_path)
    world.circuits.broken.update(authority.nickname for authority in world.network.authorities)
    service = world.service(testing=True)
    service.start()
    delays = []
    for _ in range(7):
        (call,) = world.clock.getDelayedCalls()
        delays.append(call.getTime() - world.clock.seconds())
        world.clock.advance(delays[-1])
    assert delays == [1, 2, 4, 8, 16, 20, 20]


def test_microdescriptors_come_92_per_request_and_must_match_their_digests(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="oppy")
    network = SyntheticNetwork(n_guards=150, n_exits=40, n_middles=10)
    world = make_world(tmp_path, network)
    bad = network.relay("middle3").digest
    for server in world.servers:
        server.tamper_digests.add(bad)
    service = world.service()
    run(service.start())
    micro = [path for _, _, path in world.client.requests if path.startswith("/tor/micro/d/")]
    batches = [len(path[len("/tor/micro/d/"):-2].split("-")) for path in micro]
    # 200 digests: 92 + 92 + 16, and the tampered one is asked for again from the two other authorities.
    assert sorted(batches) == [1, 1, 16, 92, 92]
    assert len(service.netdir.microdescs) == 199 and bad not in service.netdir.microdescs
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and all("whose SHA-256 digest matches none" in m for m in warnings)
    for server in world.servers:
        server.tamper_digests.clear()
    (retry,) = [call for call in world.clock.getDelayedCalls() if call.getTime() - world.clock.seconds() < 60]
    world.clock.advance(retry.getTime() - world.clock.seconds())
    assert bad in service.netdir.microdescs and len(service.netdir.microdescs) == 200
    run(service.stop())


def test_not_enough_path_bandwidth_means_waiting_like_tor(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="oppy")
    network = SyntheticNetwork(n_guards=5, n_exits=2)
    network.relays[4].bandwidth = 20000          # guard4 carries most of the guard and middle weight
    world = make_world(tmp_path, network)
    for server in world.servers:
        server.refuse_digests.add(network.relays[4].digest)
    service = world.service()
    waiter = service.start()
    assert not waiter.called and not service.enough_dir_info
    assert service.dir_info_status.startswith("We need more microdescriptors: we have 6/7")
    assert 50 <= service.bootstrap_phase[0] < 75 and service.bootstrap_phase[1] == "loading_descriptors"
    for server in world.servers:
        server.refuse_digests.clear()
    world.clock.advance(1)
    assert run(waiter) is service and service.bootstrap_phase[0] == 75


# ------------------------------------------------------------------------------------------ cache and restart


def first_run(world: World) -> list[str]:
    """Bootstrap and stop a first service (filling the cache); the fingerprints of its primary guards."""
    first = world.service()
    run(first.start())
    primaries = [guard.fingerprint for guard in first.paths.guards.primary_guards()]
    run(first.stop())
    world.client.requests.clear()
    return primaries


def test_restart_with_a_live_cache_fetches_nothing(tmp_path, caplog):
    world = make_world(tmp_path)
    primaries = first_run(world)
    caplog.set_level(logging.INFO, logger="oppy")
    second = world.service(seed=99)
    run(second.start())
    assert world.client.requests == []
    assert second.netdir.consensus.valid_after == T0 and len(second.netdir.microdescs) == len(world.network.relays)
    assert [guard.fingerprint for guard in second.paths.guards.primary_guards()] == primaries
    assert percents(caplog) == [0, 75]
    path = second.paths.choose_path(443)
    assert path[0].fingerprint == primaries[0]
    run(second.stop())


def test_a_tampered_cache_is_discarded_and_refetched(tmp_path, caplog):
    world = make_world(tmp_path)
    run(world.service().start())
    cached = world.directory / CACHED_CONSENSUS_FILE
    cached.write_bytes(cached.read_bytes().replace(b"Bandwidth=1000", b"Bandwidth=1001", 1))
    world.client.requests.clear()
    caplog.set_level(logging.INFO, logger="oppy")
    service = world.service()
    run(service.start())
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and warning[0].startswith("Discarding the cached consensus: BadSignatureError")
    assert world.client.kinds() == ["consensus"]      # certificates and microdescriptors came from the cache
    assert service.enough_dir_info


def test_an_expired_cached_consensus_is_used_while_a_new_one_is_fetched(tmp_path):
    world = make_world(tmp_path)
    first = world.service()
    run(first.start())
    run(first.stop())
    world.publish(world.network.consensus(T0 + 4 * HOUR))
    world.clock.advance(4 * HOUR)                     # the cached one (valid until T0+3h) has expired
    world.client.requests.clear()
    service = world.service()
    run(service.start())
    assert service.netdir.consensus.valid_after == T0 and service.enough_dir_info   # reasonably live: usable
    world.clock.advance(0)
    assert world.client.kinds() == ["consensus"] and service.netdir.consensus.valid_after == T0 + 4 * HOUR


def test_a_corrupt_state_file_starts_a_new_guard_sample(tmp_path, caplog):
    world = make_world(tmp_path)
    world.directory.mkdir(parents=True)
    (world.directory / "state").write_text("{broken")
    caplog.set_level(logging.INFO, logger="oppy")
    service = world.service()
    run(service.start())
    assert any(r.getMessage().startswith("Ignoring the state file") for r in caplog.records)
    assert len(service.paths.guards.primary_guards()) == 3
    assert DirectoryCache(world.directory).read_state()["guards"]["guards"]


# ------------------------------------------------------------------------------------------ refresh


def test_refresh_on_schedule_over_begin_dir_fetches_only_new_microdescriptors(tmp_path):
    network = SyntheticNetwork()
    # One primary directory guard in use (the default, 3, would draw among the first three).
    world = make_world(tmp_path, network, network.consensus(params="guard-n-primary-dir-guards-to-use=1"))
    service = world.service()
    events = []
    service.add_netdir_observer(events.append)
    run(service.start())
    assert [event.netdir.consensus.valid_after for event in events if event.new_consensus] == [T0]
    assert events[-1].netdir is service.netdir and len(events) == 2     # the consensus, its microdescriptors
    (timer,) = world.clock.getDelayedCalls()
    fetch_at = T0 + 600 + timer.getTime()
    start = T0 + HOUR + 0.75 * HOUR                 # fresh-until + 3/4 interval
    assert start <= fetch_at <= start + 7 / 8 * (T0 + 3 * HOUR - start)
    network = world.network
    network.relay("guard2").key_version = 1        # rotated its ntor key: a new microdescriptor
    network.relays.append(Relay("guard9", GUARD_FLAGS))
    world.publish(network.consensus(T0 + HOUR, params="guard-n-primary-dir-guards-to-use=1"))
    world.client.requests.clear()
    world.clock.advance(timer.getTime() - world.clock.seconds())
    assert [event.netdir.consensus.valid_after for event in events if event.new_consensus] == [T0, T0 + HOUR]
    assert service.netdir.consensus.valid_after == T0 + HOUR
    first_primary = service.paths.guards.primary_guards()[0].nickname
    assert world.client.requests[0][:2] == ("begin_dir", first_primary)
    micro = [path for transport, _, path in world.client.requests if "/micro/" in path]
    assert len(micro) == 1
    assert sorted(micro[0][len("/tor/micro/d/"):-2].split("-")) == sorted(
        [network.relay("guard2").digest, network.relay("guard9").digest])
    guard2 = network.relay("guard2")
    assert service.netdir.relay_target(guard2.rsa_id).ntor_onion_key == guard2.ntor_key
    assert service.fetch_counts["consensus:directory_guard"] == 1


def test_a_broken_directory_guard_is_marked_down_and_the_next_source_used(tmp_path):
    network = SyntheticNetwork()
    world = make_world(tmp_path, network, network.consensus(params="guard-n-primary-dir-guards-to-use=1"))
    service = world.service()
    run(service.start())
    first = service.paths.guards.primary_guards()[0]
    world.circuits.broken.add(first.nickname)
    world.publish(world.network.consensus(T0 + HOUR, params="guard-n-primary-dir-guards-to-use=1"))
    world.clock.advance(HOUR)
    world.client.requests.clear()
    run(service.fetch_consensus_now())
    assert service.netdir.consensus.valid_after == T0 + HOUR
    assert world.client.requests[0][:2] == ("begin_dir", service.paths.guards.primary_guards()[1].nickname)
    assert first.is_down
    assert service.paths.choose_path(80)[0].nickname == service.paths.guards.primary_guards()[1].nickname


def test_a_forged_refresh_is_rejected_and_the_last_good_consensus_stays(tmp_path, caplog):
    world = make_world(tmp_path)
    service = world.service()
    run(service.start())
    good = service.netdir.consensus
    caplog.set_level(logging.INFO, logger="oppy")
    network = world.network
    world.publish(network.consensus(T0 + HOUR, signers=network.authorities[:1]))
    world.clock.advance(HOUR)
    assert run(service.fetch_consensus_now()) is None
    assert service.netdir.consensus is good and service.enough_dir_info
    rejections = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # Three directory guards and one other relay, then the three authorities.
    assert len(rejections) == 7 and sum("~auth" in message for message in rejections) == 3
    assert all(message.startswith("Rejected the microdesc consensus from") for message in rejections)
    assert all("NotEnoughSignaturesError" in m and "needs 2" in m and
               f"Still using the consensus valid-after {format_time(T0)}" in m for m in rejections)
    # The refresh is retried soon, with backoff; a good document is then taken.
    world.publish(network.consensus(T0 + HOUR))
    (retry,) = world.clock.getDelayedCalls()
    assert retry.getTime() - world.clock.seconds() == 1
    world.clock.advance(1)
    assert service.netdir.consensus.valid_after == T0 + HOUR


def test_an_older_or_same_consensus_is_not_taken(tmp_path):
    world = make_world(tmp_path)
    service = world.service()
    run(service.start())
    world.publish(world.network.consensus(T0 - HOUR))
    assert run(service.fetch_consensus_now()) is None
    assert service.netdir.consensus.valid_after == T0


def test_guards_follow_the_consensus_and_persist(tmp_path):
    world = make_world(tmp_path)
    service = world.service()
    run(service.start())
    dropped = service.paths.guards.primary_guards()[0]
    network = world.network
    world.publish(network.consensus(T0 + HOUR, relays=[r for r in network.relays
                                                      if r.nickname != dropped.nickname]))
    world.clock.advance(HOUR)
    run(service.fetch_consensus_now())
    assert dropped.fingerprint not in [g.fingerprint for g in service.paths.guards.primary_guards()]
    run(service.stop())
    state = DirectoryCache(world.directory).read_state()
    listed = {g["fingerprint"]: g["listed"] for g in state["guards"]["guards"]}
    assert listed[dropped.fingerprint] is False


# ------------------------------------------------------------------------ paths (the service's PathChooser)


def test_choose_path_exit_first_then_primary_guard_then_middle(tmp_path):
    network = SyntheticNetwork(n_guards=6, n_exits=3, n_middles=3)
    world = make_world(tmp_path, network)
    service = world.service()
    run(service.start())
    primaries = [g.fingerprint for g in service.paths.guards.primary_guards()]
    for seed in range(30):
        guard, middle, exit_ = service.paths.choose_path(443, rng=random.Random(seed))
        assert guard.fingerprint == primaries[0]
        assert "Exit" in service.netdir.consensus.relay_by_id(exit_.rsa_id).flags
        assert len({guard.rsa_id, middle.rsa_id, exit_.rsa_id}) == 3
        assert all(hop.ntor_onion_key is not None for hop in (guard, middle, exit_))
    guard, middle, exit_ = service.paths.choose_path(443, exclude={bytes.fromhex(primaries[0])})
    assert guard.fingerprint == primaries[1]
    exits = [r.rsa_id for r in network.relays if r.nickname.startswith("exit")]
    guard, middle, exit_ = service.paths.choose_path(80, exclude=set(exits[:2]))
    assert exit_.rsa_id == exits[2]
    service.paths.mark_guard_down(bytes.fromhex(primaries[0]))
    assert service.paths.choose_path(80)[0].fingerprint == primaries[1]
    service.paths.mark_guard_up("$" + primaries[0])
    assert service.paths.choose_path(80)[0].fingerprint == primaries[0]
    # A directory request takes one of the first three primaries (guard-n-primary-dir-guards-to-use).
    assert {service.paths.directory_guards(1)[0].fingerprint for _ in range(50)} == set(primaries[:3])
    with pytest.raises(NoPathError):
        service.paths.choose_path(80, exclude=set(exits))


def test_a_circuit_path_comes_with_its_guard_choice_and_its_success_confirms_the_guard(tmp_path):
    world = make_world(tmp_path)
    service = world.service()
    run(service.start())
    path, choice = service.paths.choose_circuit_path(443)
    assert choice.fingerprint == path[0].fingerprint == service.paths.guards.primary_guards()[0].fingerprint
    assert not choice.guard.is_confirmed
    assert service.paths.guard_succeeded(choice) is True and choice.guard.is_confirmed
    run(service.cache_writes_done())
    saved = DirectoryCache(world.directory).read_state()["guards"]["guards"]
    assert [g["fingerprint"] for g in saved if g.get("confirmed_on")] == [choice.fingerprint]
    other_path, other = service.paths.choose_circuit_path(443, exclude={path[0].rsa_id})
    service.paths.guard_failed(other)
    assert other.guard.is_down and service.paths.choose_path(443)[0].fingerprint == choice.fingerprint


def test_distinct_subnets_outside_a_testing_network(tmp_path):
    network = SyntheticNetwork(n_guards=4, n_exits=2, n_middles=2)
    for index, relay in enumerate(network.relays):
        relay.address = f"10.{index}.0.1"
    network.relays[-1].address = network.relays[-2].address = "10.99.0.1"     # two middles share a /16
    world = make_world(tmp_path, network)
    strict = world.service(testing=False)
    run(strict.start())
    assert strict.paths.enforce_distinct_subnets
    for seed in range(20):
        path = strict.paths.choose_path(80, rng=random.Random(seed))
        assert len({hop.address.split(".")[1] for hop in path}) == 3


def test_exit_policy_decides_the_exit(tmp_path):
    network = SyntheticNetwork(n_guards=4, n_exits=2)
    network.relay("exit0").policy = "p accept 80,443\n"
    network.relay("exit1").policy = "p reject 1-65535\n"
    world = make_world(tmp_path, network)
    service = world.service()
    run(service.start())
    assert service.paths.choose_path(443)[2].nickname == "exit0"
    with pytest.raises(NoPathError):
        service.paths.choose_path(25)


def test_relay_target_lookups(tmp_path):
    network = SyntheticNetwork()
    network.relay("guard1").flags += " NoEdConsensus"
    world = make_world(tmp_path, network)
    service = world.service()
    run(service.start())
    guard0 = network.relay("guard0")
    by_bytes = service.netdir.relay_target(guard0.rsa_id)
    assert by_bytes == service.netdir.relay_target("$" + guard0.rsa_id.hex().upper() + "~guard0") \
        == service.netdir.relay_target(guard0.rsa_id.hex())
    assert (by_bytes.nickname, by_bytes.or_port, by_bytes.ntor_onion_key, by_bytes.ed25519_id) == \
        ("guard0", guard0.or_port, guard0.ntor_key, guard0.ed25519_id)
    assert service.netdir.relay_target(network.relay("guard1").rsa_id).ed25519_id is None
    assert service.netdir.relay_target(b"\0" * 20) is None and service.netdir.relay_target("nonsense") is None


# ------------------------------------------------------------------------------------------ small parts


def test_bootstrap_status_only_moves_forward_and_logs_like_tor(caplog):
    caplog.set_level(logging.DEBUG, logger="test.bootstrap")
    status = BootstrapStatus(logging.getLogger("test.bootstrap"))
    seen = []
    status.add_observer(lambda *event: seen.append(event))
    assert status.as_tuple() == (0, "undef", "Undefined")
    assert status.report(BootstrapPhase.STARTING)
    assert status.report(BootstrapPhase.LOADING_STATUS)
    assert not status.report(BootstrapPhase.CONN)
    assert status.report(BootstrapPhase.LOADING_DESCRIPTORS, 0)
    assert status.report(BootstrapPhase.LOADING_DESCRIPTORS, 52)
    assert status.report(BootstrapPhase.LOADING_DESCRIPTORS, 56)
    assert not status.report(BootstrapPhase.LOADING_DESCRIPTORS, 55)
    assert status.report(BootstrapPhase.DONE)
    assert not status.report(BootstrapPhase.DONE)
    levels = [(r.getMessage(), r.levelno) for r in caplog.records]
    assert levels == [
        ("Bootstrapped 0% (starting): Starting", NOTICE),
        ("Bootstrapped 30% (loading_status): Loading networkstatus consensus", NOTICE),
        ("Bootstrapped 50% (loading_descriptors): Loading relay descriptors", NOTICE),
        ("Bootstrapped 52% (loading_descriptors): Loading relay descriptors", logging.INFO),
        ("Bootstrapped 56% (loading_descriptors): Loading relay descriptors", NOTICE),
        ("Bootstrapped 100% (done): Done", NOTICE),
    ]
    assert seen[-1] == (100, "done", "Done") and status.as_tuple() == (100, "done", "Done")


def test_signature_key_ids_of_a_real_consensus():
    data = (REAL_DIRECTORY / "2022-11-19-safetor" / "cached-microdesc-consensus").read_bytes()
    keys = signature_key_ids(data)
    assert len(keys) == 8 and all(len(ident) == len(key) == 40 for ident, key in keys)


def test_stopping_before_the_state_was_read_leaves_it_alone(tmp_path):
    world = make_world(tmp_path)
    first = world.service()
    run(first.start())
    run(first.stop())
    state = (world.directory / "state").read_bytes()
    run(world.service().stop())
    assert (world.directory / "state").read_bytes() == state


def test_the_consensus_document_is_kept_byte_for_byte(tmp_path):
    world = make_world(tmp_path)
    service = world.service()
    assert service.consensus_document is None
    run(service.start())
    assert service.consensus_document == world.network.consensus()


def test_stop_cancels_everything(tmp_path):
    world = make_world(tmp_path)
    service = world.service()
    run(service.start())
    assert world.clock.getDelayedCalls()
    run(service.stop())
    assert world.clock.getDelayedCalls() == []


# ------------------------------------------------------------------------------------------ hostile sources


class WireServer:
    """A DirectoryServer's answers as raw HTTP (deflated, as tor sends them), or ``hostile`` bytes instead."""

    def __init__(self, server: DirectoryServer):
        self.server = server
        self.hostile: bytes | None = None

    @property
    def reachable(self) -> bool:
        return not self.server.down

    def answer(self, path, if_modified_since) -> bytes:
        if self.hostile is not None:
            return self.hostile
        try:
            body = self.server.answer(path, if_modified_since)
        except DirectoryStatusError as exc:
            return f"HTTP/1.0 {exc.status} {str(exc).split(' ', 2)[-1]}\r\n\r\n".encode()
        return b"HTTP/1.0 200 OK\r\nContent-Encoding: deflate\r\n\r\n" + zlib.compress(body)


#: What the fuzzing found: a status line whose "digits" pass str.isdigit() but not int(), and a
#: Content-Length beyond int()'s 4300 digits.
HOSTILE_STATUS = b"HTTP/1.0 \xb2\xb2\xb2 OK\r\n\r\n" + b"x" * 100
HOSTILE_LENGTH = b"HTTP/1.0 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n"


def wire_service(tmp_path, network: SyntheticNetwork):
    """A service on the real DirectoryClient and circuit manager, its authorities and directory caches served
    over one-hop circuits by `WireDirectory`."""
    wire = WireDirectory()
    consensus = network.consensus()
    sites = {}
    for authority in network.authorities:
        wire.caches[authority.nickname] = sites[authority.nickname] = WireServer(DirectoryServer(network, consensus))
    for relay in network.relays:
        wire.caches[relay.nickname] = sites[relay.nickname] = WireServer(DirectoryServer(network, consensus))
        wire.relays[relay.nickname] = relay.simulated()

    def service():
        manager = CircuitManager(wire, PathChooser(), reactor=wire.reactor, clock=wire.reactor.seconds,
                                 preemptive_circuits=0)
        return DirectoryService(
            network.records(), tmp_path / "data", manager, True, wire.reactor,
            lambda: T0 + 600 + wire.reactor.seconds(), links=wire, rng=random.Random(5),
            client=DirectoryClient(wire.reactor),
            run_in_thread=lambda function, *args: defer.maybeDeferred(function, *args))

    return wire, sites, service


def advance_to_the_next_refresh(wire: WireDirectory) -> None:
    (timer,) = wire.reactor.getDelayedCalls()
    wire.reactor.advance(timer.getTime() - wire.reactor.seconds())
    wire.pump()


def test_hostile_sources_over_the_wire_never_stall_a_round_and_refreshes_go_on(tmp_path, caplog):
    """A hostile authority and a hostile directory guard fail their own request only: the round moves to the
    next source, no request is left pending, the guard's circuit stays up, and later refreshes still happen."""
    caplog.set_level(logging.INFO, logger="oppy")
    network = SyntheticNetwork()
    wire, sites, service = wire_service(tmp_path, network)
    order = [source.nickname for source in service()._directory_sources()]
    sites[order[0]].hostile = HOSTILE_STATUS
    sites[order[1]].hostile = HOSTILE_LENGTH
    service = service()
    waiter = service.start()
    wire.pump()
    assert run(waiter) is service and service.netdir.consensus.valid_after == T0
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Consensus fetch from")]
    assert f"~{order[0]} at 127.0.0.1:" in failed[0] and "non-ASCII byte in the status line" in failed[0]
    assert f"~{order[1]} at 127.0.0.1:" in failed[1] and "bad Content-Length" in failed[1]
    # Bootstrap as tor logs it; the authorities' onion keys were unknown: CREATE_FAST.
    assert percents(caplog) == [0, 5, 10, 14, 15, 20, 25, 30, 40, 45, 50, 75]
    assert {nickname for nickname, _ in wire.creates} == {"auth0", "auth1", "auth2"}
    assert {command for _, command in wire.creates} == {CMD_CREATE_FAST}
    assert len(wire.reactor.getDelayedCalls()) == 1          # the refresh; no request is left pending

    guard = service.paths.guards.primary_guards()[0].nickname
    sites[guard].hostile = HOSTILE_STATUS
    for valid_after in (T0 + HOUR, T0 + 2 * HOUR):
        for site in sites.values():
            site.server.consensus = network.consensus(valid_after)
        advance_to_the_next_refresh(wire)
        assert service.netdir.consensus.valid_after == valid_after
        assert wire.creates[-1][1] == CMD_CREATE2       # a directory guard: ntor with its microdescriptor's key
        # The guard was asked first; its answer failed that stream only (its circuit is replaced only
        # once it is too old, an hour later).
        hostile_circuit = wire.circuits[guard][-1]
        assert hostile_circuit.answered == ["/tor/status-vote/current/consensus-microdesc.z"]
        assert hostile_circuit.circuit.state is CircuitState.OPEN
        assert hostile_circuit.circuit.circ_id not in [circ_id for circ_id, _ in hostile_circuit.channel.destroyed]
        assert not service.paths.guards.primary_guards()[0].is_down
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == []
    run(service.stop())
    assert wire.reactor.getDelayedCalls() == []


@pytest.mark.parametrize("header_line, replacement", [
    (b"valid-after 2030-01-01 00:00:00", b"valid-after 0000-01-01 00:00:00"),
    (b"consensus-method 35", b"consensus-method " + b"1" * 5000),
    (b"consensus-method 35", "consensus-method \u0663\u0665".encode()),
    (b"vote-status consensus\n", b"vote-status consensus\nparams cc_alg=" + b"2" * 5000 + b"\n"),
])
def test_a_malformed_consensus_header_means_the_next_source(tmp_path, caplog, header_line, replacement):
    """The header is parsed before the signatures; its errors used to escape and end the whole round."""
    caplog.set_level(logging.INFO, logger="oppy")
    world = make_world(tmp_path)
    first = world.service(seed=3)._directory_sources()[0]
    hostile = world.network.consensus()
    assert header_line in hostile
    world.client.relays[first.nickname].consensus = hostile.replace(header_line, replacement, 1)
    service = world.service(seed=3)
    run(service.start())
    assert service.enough_dir_info and service.netdir.consensus.valid_after == T0
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.startswith(f"Rejected the microdesc consensus from {first.describe()}") and \
        "ConsensusParseError" in warning
    assert [kind for kind in world.client.kinds()].count("consensus") == 2


def first_call_answered(name: str, answer: defer.Deferred):
    """A run_in_thread that answers the first call of the function ``name`` with ``answer`` (a failure, or a
    Deferred that never fires) and runs everything else inline."""
    calls = []

    def run_in_thread(function, *args):
        if function.__name__ == name and not calls:
            calls.append(args)
            return answer
        return defer.maybeDeferred(function, *args)

    return run_in_thread


def test_a_consensus_round_that_cannot_end_is_abandoned_at_its_deadline(tmp_path, caplog):
    """Whatever hangs inside a round, it ends at DIRECTORY_ROUND_DEADLINE; later fetches do not join it."""
    caplog.set_level(logging.INFO, logger="oppy")
    world = make_world(tmp_path)
    service = world.service(run_in_thread=first_call_answered("_check_consensus", defer.Deferred()))
    waiter = service.start()
    joined = service.fetch_consensus_now()
    assert not waiter.called and not joined.called
    world.clock.advance(DIRECTORY_ROUND_DEADLINE)
    assert joined.called and run(joined) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings[0] == (f"The consensus fetch did not finish within {DIRECTORY_ROUND_DEADLINE:.0f} s; "
                           f"abandoning it (tried: none)")
    (retry,) = world.clock.getDelayedCalls()
    world.clock.advance(retry.getTime() - world.clock.seconds())
    assert run(waiter) is service and service.netdir.consensus.valid_after == T0


def test_microdescriptor_fetches_that_cannot_end_are_abandoned_at_the_deadline_and_retried(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="oppy")
    world = make_world(tmp_path)
    service = world.service(run_in_thread=first_call_answered("_parse_microdescs", defer.Deferred()))
    waiter = service.start()
    assert service.netdir is not None and not waiter.called
    world.clock.advance(DIRECTORY_ROUND_DEADLINE)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"Microdescriptor fetches did not finish within {DIRECTORY_ROUND_DEADLINE:.0f} s; "
                        f"the rest are retried later"]
    retry = min(call.getTime() for call in world.clock.getDelayedCalls())
    world.clock.advance(retry - world.clock.seconds())
    assert run(waiter) is service and len(service.netdir.microdescs) == len(world.network.relays)


def test_a_malformed_microdescriptor_is_rejected_alone_and_refetched(tmp_path, caplog):
    """A huge port in one microdescriptor used to drop its whole batch without a word; a reply with several
    bad ones gives one warning, and each one at info level."""
    caplog.set_level(logging.INFO, logger="oppy")
    network = SyntheticNetwork()
    odd = [Relay(f"odd{n}", GUARD_FLAGS, bandwidth=10, policy=f"a [::1]:{str(n + 1) * 5000}\n") for n in range(2)]
    network.relays.extend(odd)
    world = make_world(tmp_path, network)
    service = world.service()
    run(service.start())
    assert service.enough_dir_info
    assert set(service.netdir.microdescs) == {relay.digest for relay in network.relays} - {r.digest for r in odd}
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 3                           # asked of each authority in turn: one line per reply
    assert all(message.startswith("Rejected 2 microdescriptor(s) from") and "bad a line" in message
               for message in warned)
    detailed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Rejected microdescriptor")]
    assert len(detailed) == 3 and all(r.levelno == logging.INFO for r in caplog.records
                                      if r.getMessage().startswith("Rejected microdescriptor"))
    for relay in odd:
        assert sum(relay.digest in message for message in warned + detailed) == 3


def test_a_microdescriptor_reply_with_a_year_0_annotation_is_used(tmp_path, caplog):
    """An annotation with year 0000 used to make the whole reply raise ValueError and vanish."""
    world = make_world(tmp_path)
    for server in world.servers:
        server.microdesc_annotation = b"@last-listed 0000-01-01 00:00:00\n"
    service = world.service()
    run(service.start())
    assert len(service.netdir.microdescs) == len(world.network.relays)
    assert world.client.kinds().count("microdescriptors") == 1


def test_an_unparseable_microdescriptor_reply_is_logged_and_the_next_source_tried(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="oppy")
    world = make_world(tmp_path)
    service = world.service(run_in_thread=first_call_answered("_parse_microdescs",
                                                             defer.fail(RuntimeError("simulated parser bug"))))
    run(service.start())
    assert len(service.netdir.microdescs) == len(world.network.relays)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.startswith("Rejected the ") and "microdescriptor reply from $" in warning and "~auth" in warning
    assert warning.endswith("RuntimeError: simulated parser bug")
    assert world.client.kinds().count("microdescriptors") == 2


def test_a_damaged_microdescriptor_cache_costs_neither_the_guards_nor_the_consensus(tmp_path, caplog):
    world = make_world(tmp_path)
    primaries = first_run(world)
    cached = world.directory / "cached-microdescs"
    damaged = cached.read_bytes().replace(b"@last-listed 2030-", b"@last-listed 0000-")
    assert damaged.count(b"@last-listed 0000-") == len(world.network.relays)
    cached.write_bytes(damaged)
    caplog.set_level(logging.INFO, logger="oppy")
    second = world.service(seed=99)
    run(second.start())
    assert world.client.requests == []
    assert [guard.fingerprint for guard in second.paths.guards.primary_guards()] == primaries
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_state_file_with_a_huge_number_is_reported_not_fatal(tmp_path, caplog):
    world = make_world(tmp_path)
    first_run(world)
    (world.directory / "state").write_text('{"version": 1, "guards": ' + "9" * 5000 + "}")
    caplog.set_level(logging.INFO, logger="oppy")
    second = world.service()
    run(second.start())
    assert world.client.requests == []                # the cached consensus and microdescriptors are kept
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.startswith("Ignoring the state file") and "not valid JSON" in warning


# ------------------------------------------------------------------------------------------ the reactor


@pytest_twisted.inlineCallbacks
def test_loading_the_2017_directory_parses_off_the_reactor_thread(tmp_path):
    """7326 relays and 9576 microdescriptors are verified and parsed in worker threads, never on the
    reactor thread, so the reactor keeps serving while a full directory loads. (How long the reactor's
    longest pause is, is measured by `scripts/bench-directory --reactor-lag`, not asserted here.)"""
    from twisted.internet import reactor

    source = REAL_DIRECTORY / "2017-03-10-bitnym"
    for name in ("cached-certs", "cached-microdesc-consensus", "cached-microdescs", "cached-microdescs.new"):
        shutil.copy(source / name, tmp_path / name)
    header = parse_consensus_header((source / "cached-microdesc-consensus").read_bytes())
    # The 2017 authorities without an ORPort: nothing may leave the machine (there is no source to ask).
    authorities = [DirAuthority(s.nickname, s.v3ident, s.v3ident, "127.0.0.1", 9, None)
                   for s in header.dir_sources]
    now = header.valid_after + 30 * 60
    ran_in = []

    def run_in_thread(function, *args, **kwargs):
        def recorded(*a, **k):
            ran_in.append((function.__name__, threading.current_thread() is threading.main_thread()))
            return function(*a, **k)
        return threads.deferToThread(recorded, *args, **kwargs)

    service = DirectoryService(authorities, tmp_path, circuits=None, reactor=reactor, clock=lambda: now,
                               run_in_thread=run_in_thread)
    ticks = []
    ticker = task.LoopingCall(lambda: ticks.append(time.perf_counter()))
    ticker.start(0.005)
    try:
        yield service.start()
    finally:
        ticker.stop()
        yield service.stop()
    assert len(service.netdir.consensus.relays) == 7326 and len(service.netdir.microdescs) == 7326
    assert service.enough_dir_info and service.fetch_counts == {}
    assert len(ran_in) >= 2, ran_in
    assert not any(on_main for _, on_main in ran_in), ran_in
    assert len(ticks) > 5  # the reactor went on ticking while the workers parsed


# ------------------------------------------------------------------------------------------ over real TLS


@pytest_twisted.inlineCallbacks
def test_over_tls_a_directory_source_is_used_once_its_link_proved_the_identity_its_line_names(tmp_path, caplog):
    """Bootstrap over loopback TCP and TLS from relays in this process, by the real link pool and circuit
    manager: an authority's ORPort whose link proves another RSA identity than its line names is given up
    (nothing is asked of it); the next one proves it, gets a CREATE_FAST circuit, and serves the directory."""
    from twisted.internet import reactor

    caplog.set_level(logging.INFO, logger="oppy")
    network = SyntheticNetwork()
    site = WireServer(DirectoryServer(network, network.consensus()))
    relays = [DirectoryCacheRelay(lambda url: site.answer(url, None), slot=slot, nickname=f"auth{slot}")
              for slot in (0, 1)]
    for relay in relays:
        relay.listen(reactor)
    records = network.records()
    records[0] = pointed_to(records[0], relays[0], relays[0].fingerprint)
    records[1] = pointed_to(records[1], relays[1], records[1].fingerprint)    # the line names someone else
    records[2] = dataclasses.replace(records[2], or_port=None)
    links = LinkPool(reactor)

    def service(seed):
        return DirectoryService(records, tmp_path / "data", CircuitManager(links, PathChooser(),
                                                                           preemptive_circuits=0),
                                True, reactor, lambda: T0 + 600, links=links, rng=random.Random(seed),
                                run_in_thread=lambda function, *args: defer.maybeDeferred(function, *args))

    seed = next(seed for seed in range(50) if service(seed)._directory_sources()[0].nickname == "auth1")
    directory = service(seed)
    try:
        yield directory.start().addTimeout(30, reactor)
    finally:
        yield directory.stop()
        links.close_all()
        for relay in relays:
            yield relay.listening.stopListening()
    assert directory.netdir.consensus.valid_after == T0 and directory.enough_dir_info
    (refused,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Consensus fetch from")]
    assert f"relay has RSA identity {relays[1].fingerprint}, expected {records[1].fingerprint}" in refused
    assert relays[1].requests == [] and relays[1].creates == []
    assert relays[0].creates == [CMD_CREATE_FAST]
    assert relays[0].requests[0] == "/tor/status-vote/current/consensus-microdesc.z"


def pointed_to(authority: DirAuthority, relay: DirectoryCacheRelay, fingerprint: str) -> DirAuthority:
    return dataclasses.replace(authority, fingerprint=fingerprint, address="127.0.0.1",
                               or_port=relay.simulated.or_port)
