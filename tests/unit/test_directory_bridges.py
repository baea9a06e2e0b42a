"""The directory service with UseBridges: each bridge's own descriptor first, then every document from the
bridges alone; no authority, fallback or relay is asked anything. The synthetic, genuinely signed network of
test_directory_service, with a bridge (a real RSA identity, a signed descriptor) that serves it too."""

from __future__ import annotations

import logging
import random

from oppy.config import parse_bridge_line
from oppy.control.status import bootstrap_phase_text
from oppy.directory.cache import CACHED_DESCRIPTORS_FILE, DirectoryCache, split_router_descriptors
from oppy.directory.service import (
    BOOTSTRAP_PROBLEM_THRESHOLD,
    BRIDGE_DESCRIPTOR_REFETCH,
    BootstrapPhase,
    BootstrapStatus,
    SourceKind,
)
from oppy.logs import NOTICE
from oppy.netdoc.router import parse_router_descriptor
from oppy.path.bridges import BridgeSet
from oppy.path.chooser import PathChooser
from tests.unit.test_directory_service import T0, DirectoryServer, FakeClient, make_world, run
from tests.unit.test_netdoc_router import identity_key, make_descriptor, rsa_id

SERVICE_LOGGER = "oppy.directory.service"


class BridgeServer(DirectoryServer):
    """A bridge: the network's documents, and its own descriptor at /tor/server/authority."""

    def __init__(self, network, consensus, descriptor: bytes):
        super().__init__(network, consensus)
        self.descriptor = descriptor

    def answer(self, path, if_modified_since):
        if path.startswith("/tor/server/authority") and not self.down:
            return self.descriptor
        return super().answer(path, if_modified_since)


class BridgeClient(FakeClient):
    """Answers BEGIN_DIR requests by the RSA identity of the relay asked (a bridge has no nickname at first)."""

    def __init__(self, by_nickname: FakeClient):
        super().__init__()
        self.relays = by_nickname.relays
        self.by_id: dict[bytes, DirectoryServer] = {}
        self.asked: list[bytes] = []

    def fetch_over_circuit(self, circuit, path, max_size, *, relay=None, if_modified_since=None):
        relay = relay or circuit.path[-1]
        self.requests.append(("begin_dir", relay.nickname, path))
        self.asked.append(relay.rsa_id)
        return self._answer(self.by_id.get(relay.rsa_id), f"${relay.fingerprint} (BEGIN_DIR)", path,
                            if_modified_since)


def bridge_world(tmp_path, lines: list[str], descriptors: dict[bytes, bytes]):
    """A world whose client reaches the bridges serving ``descriptors`` (by RSA identity); a service with
    the PathChooser of ``lines``."""
    world = make_world(tmp_path)
    client = BridgeClient(world.client)
    consensus = world.network.consensus()
    for identity, descriptor in descriptors.items():
        client.by_id[identity] = BridgeServer(world.network, consensus, descriptor)
    world.client = client
    clock = world.clock
    paths = PathChooser(rng=random.Random(3), clock=lambda: T0 + 600 + clock.seconds(),
                        enforce_distinct_subnets=False, bridges=BridgeSet(parse_bridge_line(line) for line in lines))
    return world, world.service(paths=paths)


def line(index: int, port: int = 9000) -> str:
    return f"127.0.0.{index + 1}:{port} {rsa_id(identity_key(index)).hex().upper()}"


def test_bootstrap_through_a_bridge_asks_nobody_else(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="oppy")
    bridge = rsa_id(identity_key(0))
    world, service = bridge_world(tmp_path, [line(0)], {bridge: make_descriptor(identity_key(0), "bridge0")})
    assert run(service.start()) is service and service.enough_dir_info
    client = world.client
    assert set(client.asked) == {bridge}, "a relay or authority other than the bridge was asked"
    assert client.requests[0][2] == "/tor/server/authority.z"
    assert client.kinds().count("consensus") == 1 and "microdescriptors" in client.kinds()
    # The first one-hop circuit went to a bridge whose onion key was unknown (CREATE_FAST).
    assert world.circuits.got[0] == "Unnamed"
    assert service.fetch_counts["consensus:bridge"] == 1 and service.fetch_counts["consensus:authority"] == 0
    assert [source.kind for source in service._directory_sources()] == [SourceKind.BRIDGE]
    assert service._directory_sources(authorities_only=True)[0].target.rsa_id == bridge
    notices = [record.getMessage() for record in caplog.records if record.name == SERVICE_LOGGER]
    assert f"new bridge descriptor 'bridge0' (fresh): ${bridge.hex().upper()}~bridge0 at 127.0.0.1" in notices
    run(service.stop())
    state = DirectoryCache(world.directory).read_state()
    assert [guard["fingerprint"] for guard in state["bridges"]["guards"]] == [bridge.hex().upper()]
    assert state["bridges"]["guards"][0]["confirmed_idx"] == 0 and "guards" not in state


def test_the_relays_guard_state_is_kept_while_bridges_are_used(tmp_path):
    bridge = rsa_id(identity_key(0))
    world, service = bridge_world(tmp_path, [line(0)], {bridge: make_descriptor(identity_key(0), "bridge0")})
    relays_state = {"version": 2, "guards": []}
    DirectoryCache(world.directory).write_state({"guards": relays_state})
    run(service.start())
    run(service.stop())
    state = DirectoryCache(world.directory).read_state()
    assert state["guards"] == relays_state and state["bridges"]["guards"][0]["fingerprint"] == bridge.hex().upper()


def test_a_bridge_proving_another_identity_is_refused_and_the_other_used(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="oppy")
    good, liar = rsa_id(identity_key(0)), rsa_id(identity_key(1))
    # The second bridge answers with the descriptor of a third identity.
    world, service = bridge_world(tmp_path, [line(0), line(1)], {
        good: make_descriptor(identity_key(0), "good"), liar: make_descriptor(identity_key(2), "liar")})
    run(service.start())
    assert service.enough_dir_info
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    expected = (f"Bridge ${liar.hex().upper()} at 127.0.0.2:9000 is not used until its retry time: it sent the "
                f"descriptor of ${rsa_id(identity_key(2)).hex().upper()}, but its Bridge line says "
                f"${liar.hex().upper()}")
    assert expected in warnings
    assert service.paths.bridges.descriptor(liar.hex()) is None
    for _ in range(10):
        path, _ = service.paths.choose_circuit_path(80)
        assert path[0].rsa_id == good
    run(service.stop())


def test_an_unreachable_bridge_is_warned_about_once_and_retried(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="oppy")
    bridge = rsa_id(identity_key(0))
    world, service = bridge_world(tmp_path, [line(0)], {bridge: make_descriptor(identity_key(0), "bridge0")})
    server = world.client.by_id[bridge]
    server.down = True
    service.start()
    for _ in range(3):
        world.clock.advance(30)
    assert not service.enough_dir_info
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert sum("is not used until its retry time" in message for message in warnings) == 1
    assert any(message.startswith("No bridge could be reached") for message in warnings)
    assert set(world.client.asked) == {bridge}
    server.down = False
    world.clock.advance(30)
    assert service.enough_dir_info
    run(service.stop())


def test_a_bridge_descriptor_is_fetched_again_three_hours_after_it_was_learned(tmp_path):
    bridge = rsa_id(identity_key(0))
    world, service = bridge_world(tmp_path, [line(0)], {bridge: make_descriptor(identity_key(0), "bridge0")})
    run(service.start())

    def descriptor_fetches() -> int:
        return sum(path.startswith("/tor/server/authority") for _, _, path in world.client.requests)

    assert descriptor_fetches() == 1
    world.clock.advance(BRIDGE_DESCRIPTOR_REFETCH - 1)
    assert descriptor_fetches() == 1
    rotated = make_descriptor(identity_key(0), "bridge0", ntor=b"\x07" * 32)
    world.client.by_id[bridge].descriptor = rotated
    world.clock.advance(1)
    assert descriptor_fetches() == 2
    assert service.paths.bridges.descriptor(bridge.hex()).ntor_onion_key == b"\x07" * 32
    run(service.stop())


# ------------------------------------------------------------------------------------------ bootstrap problems


def test_a_bootstrap_problem_is_reported_as_tor_reports_it_until_the_bootstrap_moves(caplog):
    caplog.set_level(logging.INFO, logger="test.bootstrap")
    status = BootstrapStatus(logging.getLogger("test.bootstrap"))
    heard = []
    status.add_problem_observer(heard.append)
    status.report(BootstrapPhase.HANDSHAKE)
    for count in range(1, BOOTSTRAP_PROBLEM_THRESHOLD + 1):
        status.report_problem("Connection refused", "CONNECTREFUSED", "$" + "AB" * 20 + "~relay", "127.0.0.1:9")
        assert status.problem.count == count
        assert status.problem.recommendation == ("warn" if count == BOOTSTRAP_PROBLEM_THRESHOLD else "ignore")
    assert len(heard) == BOOTSTRAP_PROBLEM_THRESHOLD and heard[-1] is status.problem
    assert caplog.records[-1].getMessage() == (
        "Problem bootstrapping. Stuck at 14% (handshake): Handshaking with a relay. (Connection refused; "
        f"CONNECTREFUSED; count 10; recommendation warn; host ${'AB' * 20}~relay at 127.0.0.1:9)")
    assert all(record.levelno == logging.INFO for record in caplog.records if "Problem" in record.getMessage())
    assert bootstrap_phase_text(*status.as_tuple(), status.problem) == (
        'WARN BOOTSTRAP PROGRESS=14 TAG=handshake SUMMARY="Handshaking with a relay" WARNING="Connection refused" '
        f"REASON=CONNECTREFUSED COUNT=10 RECOMMENDATION=warn HOST=${'AB' * 20}~relay HOSTADDR=127.0.0.1:9")
    status.report(BootstrapPhase.HANDSHAKE_DONE)
    assert status.problem is None
    assert bootstrap_phase_text(*status.as_tuple(), status.problem).startswith("NOTICE BOOTSTRAP PROGRESS=15 ")
    status.report_problem('a "quoted"\nwarning', "MISC", "$" + "AB" * 20, "127.0.0.1:9", warn=True)
    assert status.problem.recommendation == "warn" and status.problem.count == 11
    assert 'WARNING="a \\"quoted\\" warning" REASON=MISC' in bootstrap_phase_text(*status.as_tuple(), status.problem)


def test_with_bridges_a_bridge_that_cannot_be_reached_is_a_problem_to_warn_about(tmp_path):
    bridge = rsa_id(identity_key(0))
    world, service = bridge_world(tmp_path, [line(0)], {bridge: make_descriptor(identity_key(0), "bridge0")})
    world.circuits.broken.add("Unnamed")
    service.start()
    problem = service.bootstrap_problem
    assert problem is not None and problem.recommendation == "warn" and problem.count >= 1
    assert (problem.host, problem.hostaddr) == (f"${bridge.hex().upper()}~Unnamed", "127.0.0.1:9000")
    world.circuits.broken.clear()
    world.clock.advance(30)
    assert service.enough_dir_info and service.bootstrap_problem is None
    run(service.stop())


def test_a_bridge_down_at_a_restart_with_a_live_cache_is_asked_again_soon(tmp_path, caplog):
    """The cached consensus is live, so no consensus fetch comes for a long while: the bridge's descriptor is
    asked for again on its own backoff, and the bridge is used as soon as it answers."""
    caplog.set_level(logging.INFO, logger="oppy")
    bridge = rsa_id(identity_key(0))
    world, service = bridge_world(tmp_path, [line(0)], {bridge: make_descriptor(identity_key(0), "bridge0")})
    run(service.start())
    run(service.stop())
    server = world.client.by_id[bridge]
    server.down = True
    world.client.requests.clear()
    clock = world.clock
    paths = PathChooser(rng=random.Random(4), clock=lambda: T0 + 600 + clock.seconds(),
                        enforce_distinct_subnets=False, bridges=BridgeSet([parse_bridge_line(line(0))]))
    again = world.service(paths=paths)
    again.start()
    assert again.netdir is not None and not again.enough_dir_info        # the cache, but no descriptor
    for _ in range(5):
        clock.advance(4)
    asked = [path for _, _, path in world.client.requests]
    assert asked.count("/tor/server/authority.z") >= 3 and not any("consensus" in path for path in asked)
    server.down = False
    clock.advance(20)
    assert again.enough_dir_info
    run(again.stop())


def test_bridge_descriptors_are_cached_and_used_at_a_restart(tmp_path, caplog):
    bridge = rsa_id(identity_key(0))
    world, service = bridge_world(tmp_path, [line(0)], {bridge: make_descriptor(identity_key(0), "bridge0")})
    run(service.start())
    run(service.stop())
    cached = (world.directory / CACHED_DESCRIPTORS_FILE).read_bytes()
    assert cached == b"@purpose bridge\n" + make_descriptor(identity_key(0), "bridge0")
    caplog.set_level(logging.INFO, logger="oppy")
    clock = world.clock
    paths = PathChooser(rng=random.Random(4), clock=lambda: T0 + 600 + clock.seconds(),
                        enforce_distinct_subnets=False, bridges=BridgeSet([parse_bridge_line(line(0))]))
    again = world.service(paths=paths)
    assert run(again.start()) is again and again.enough_dir_info
    learned = [(record.levelno, record.getMessage()) for record in caplog.records
               if record.getMessage().startswith("new bridge descriptor")]
    name = f"${bridge.hex().upper()}~bridge0 at 127.0.0.1"
    # The cached descriptor first, then the same one asked anew (tor fetches at start too): not news.
    assert learned == [(NOTICE, f"new bridge descriptor 'bridge0' (cached): {name}"),
                       (logging.INFO, f"new bridge descriptor 'bridge0' (fresh): {name}")]
    run(again.stop())


def test_a_cached_bridge_descriptor_that_does_not_verify_is_ignored(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="oppy")
    bridge = rsa_id(identity_key(0))
    world, service = bridge_world(tmp_path, [line(0)], {bridge: make_descriptor(identity_key(0), "bridge0")})
    DirectoryCache(world.directory).write_bridge_descriptors(
        [make_descriptor(identity_key(0), "bridge0").replace(b"reject *:*", b"accept *:*")])
    run(service.start())
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith("Ignoring a cached bridge descriptor: RouterSignatureError") for message in messages)
    assert f"new bridge descriptor 'bridge0' (fresh): ${bridge.hex().upper()}~bridge0 at 127.0.0.1" in messages
    run(service.stop())


def test_cached_descriptors_split_into_descriptors_that_each_verify(tmp_path):
    cache = DirectoryCache(tmp_path)
    texts = [make_descriptor(identity_key(index), f"bridge{index}") for index in range(2)]
    cache.write_bridge_descriptors(texts)
    chunks = split_router_descriptors(cache.read_bridge_descriptors())
    assert [parse_router_descriptor(chunk).nickname for chunk in chunks] == ["bridge0", "bridge1"]
    assert chunks[1] == texts[1]


def unidentified_world(tmp_path, proves: bytes, serves: bytes):
    """One Bridge line without a fingerprint (127.0.0.1:9000): its link proves ``proves``, and it serves the
    descriptor ``serves``."""
    world, service = bridge_world(tmp_path, ["127.0.0.1:9000"], {b"": serves})
    world.client.by_id[proves] = world.client.by_id[b""]        # once learned, asked by that identity too
    world.circuits.proven_identity = lambda address, port: proves if (address, port) == ("127.0.0.1", 9000) else None
    return world, service


def test_a_bridge_without_fingerprint_learns_the_identity_its_link_proved_and_its_descriptor_carries(tmp_path,
                                                                                                    caplog):
    caplog.set_level(logging.INFO, logger="oppy")
    bridge = rsa_id(identity_key(0))
    world, service = unidentified_world(tmp_path, bridge, make_descriptor(identity_key(0), "bridge0"))
    assert run(service.start()) is service and service.enough_dir_info
    client = world.client
    assert client.asked[0] == b"" and set(client.asked) <= {b"", bridge}      # nobody else was asked
    assert client.requests[0][2] == "/tor/server/authority.z"
    messages = [record.getMessage() for record in caplog.records]
    assert f"Learned fingerprint ${bridge.hex().upper()} for bridge 127.0.0.1:9000." in messages
    for _ in range(5):
        path, _ = service.paths.choose_circuit_path(80)
        assert (path[0].rsa_id, path[0].address, path[0].or_port) == (bridge, "127.0.0.1", 9000)
    run(service.stop())
    state = DirectoryCache(world.directory).read_state()
    assert [(guard["fingerprint"], guard["bridge_addr"]) for guard in state["bridges"]["guards"]] == [
        (bridge.hex().upper(), "127.0.0.1:9000")]


def test_a_bridge_without_fingerprint_whose_descriptor_is_not_the_identity_proved_is_not_used(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="oppy")
    proved, other = rsa_id(identity_key(0)), rsa_id(identity_key(1))
    world, service = unidentified_world(tmp_path, proved, make_descriptor(identity_key(1), "other"))
    started = service.start()
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert ("Bridge (fingerprint not known yet) at 127.0.0.1:9000 is not used until its retry time: it sent the "
            f"descriptor of ${other.hex().upper()}, but its link handshake proved ${proved.hex().upper()}") \
        in warnings
    bridges = service.paths.bridges
    assert bridges.fingerprints() == [] and bridges.learned_fingerprint("127.0.0.1", 9000) is None
    assert not service.enough_dir_info and not started.called
    run(service.stop())


def test_a_restart_reuses_the_identity_learned_and_takes_a_new_one_the_bridge_proves(tmp_path, caplog):
    first, second = rsa_id(identity_key(0)), rsa_id(identity_key(1))
    world, service = unidentified_world(tmp_path, first, make_descriptor(identity_key(0), "bridge0"))
    run(service.start())
    run(service.stop())
    # Restarted: the state names the identity learned for 127.0.0.1:9000, whose cached descriptor is used; the
    # bridge there now proves another identity, taken since the line names none.
    caplog.set_level(logging.INFO, logger="oppy")
    clock = world.clock
    paths = PathChooser(rng=random.Random(4), clock=lambda: T0 + 600 + clock.seconds(),
                        enforce_distinct_subnets=False, bridges=BridgeSet([parse_bridge_line("127.0.0.1:9000")]))
    server = world.client.by_id[b""]
    server.descriptor = make_descriptor(identity_key(1), "bridge1")
    world.client.by_id[second] = server
    world.circuits.proven_identity = lambda address, port: second
    again = world.service(paths=paths)
    assert run(again.start()) is again and again.enough_dir_info
    messages = [(record.levelno, record.getMessage()) for record in caplog.records]
    assert (NOTICE, f"new bridge descriptor 'bridge0' (cached): ${first.hex().upper()}~bridge0 at 127.0.0.1") \
        in messages
    assert (NOTICE, f"Bridge at 127.0.0.1:9000 now proves the identity ${second.hex().upper()} instead of "
                    f"${first.hex().upper()}; its Bridge line gives no fingerprint, so the new one is used.") \
        in messages
    assert not any(text.startswith("Learned fingerprint") for _, text in messages)
    path, _ = again.paths.choose_circuit_path(80)
    assert path[0].rsa_id == second
    run(again.stop())
