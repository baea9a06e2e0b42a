"""Bridges on the private network: oppy with UseBridges reaches the network through bridges the consensus does
not list (`scripts/testnet bridges`), and through nothing else.

The daemon runs under `strace -f -e trace=connect`: every TCP connection it makes must go to the bridge, none to
an authority or a relay of the consensus. A bridge proving another identity than its line's fingerprint is
refused, one that is down is skipped while another is used, and a restart takes the bridge sample from the
DataDirectory's state file.
"""

from __future__ import annotations

import ast
import hashlib
import json
import queue
import re
import subprocess
from pathlib import Path

from stem.control import Controller, EventType

from tests.integration.test_begin_dir_only import inet_connects, strace
from tests.integration.test_conflux import LEGS, LINKED, wait_for
from tests.support.network import TestNetwork
from tests.support.oppy_process import OppyProcess, free_port
from tests.support.relays import fetch

TEN_MB = 10 * 1000 * 1000
ONE_MB = 1000 * 1000
HELLO = b"hello from the oppy test target\n"
#: A well-formed identity no bridge has.
STRANGER = "0123456789ABCDEF0123456789ABCDEF01234567"


def bridge_process(network: TestNetwork, data_directory: Path, bridge_lines: list[str],
                   command_prefix: list[str] = ()) -> OppyProcess:
    """oppy with UseBridges and these Bridge values, and a control port (cookie authentication)."""
    control_port = free_port()
    process = OppyProcess(network, data_directory, extra_lines=[
        "UseBridges 1", *(f"Bridge {line}" for line in bridge_lines), "CookieAuthentication 1",
        f"ControlPort 127.0.0.1:{control_port}"], command_prefix=command_prefix)
    process.control_port = control_port
    return process


def traced(trace_file: Path) -> list[str]:
    """The command prefix that records every connect() of oppy's process tree in ``trace_file``."""
    return [strace(), "-f", "-qq", "-e", "trace=connect", "-o", str(trace_file), "--"]


def controller(oppy: OppyProcess) -> Controller:
    connected = Controller.from_port(port=oppy.control_port)
    connected.authenticate()
    return connected


def curl(oppy: OppyProcess, url: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", str(timeout), "--socks5-hostname",
                           f"127.0.0.1:{oppy.socks_port}", url], capture_output=True, timeout=timeout + 30)


def plain(network: TestNetwork) -> dict:
    return network.bridge(None)


def obfs4_bridge_as_plain_line(network: TestNetwork) -> str:
    """The obfs4 bridge's ORPort, which speaks plain Tor too: a second plain bridge."""
    bridge = network.bridge("obfs4")
    return f"127.0.0.1:{bridge['ports']['or']} {bridge['fingerprint']}"


def assert_byte_exact(network: TestNetwork, result: subprocess.CompletedProcess, size: int) -> None:
    """``/bytes/SIZE`` came through whole: its length and the target's own SHA-256 of it."""
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == size
    assert hashlib.sha256(result.stdout).hexdigest() == fetch(network.url(f"/sha256/{size}")).decode().strip()


def first_hops(connected: Controller) -> set[str]:
    """The first hop of every circuit built for traffic (not the one-hop directory circuits)."""
    return {circuit.path[0][0] for circuit in connected.get_circuits()
            if circuit.status == "BUILT" and len(circuit.path) == 3}


def first_hops_by_set(connected: Controller) -> tuple[set[str], dict[str, set[str]]]:
    """The first hops of the built single circuits for traffic, and those of each conflux set's linked legs
    (by CONFLUX_ID); legs still linking are neither."""
    singles: set[str] = set()
    sets: dict[str, set[str]] = {}
    for line in connected.get_info("circuit-status").splitlines():
        _, status, path, *_ = line.split() + [""]
        hops = path.split(",")
        if status != "BUILT" or len(hops) != 3:
            continue
        first = hops[0][1:41]
        conflux_id = re.search(r" CONFLUX_ID=([0-9A-F]+)", line)
        if " PURPOSE=CONFLUX_UNLINKED" in line:
            continue  # a leg still linking (or a replacement): it joins a set, through either bridge
        if conflux_id is None:
            singles.add(first)
        else:
            sets.setdefault(conflux_id[1], set()).add(first)
    return singles, sets


def fetch_then_stop(network: TestNetwork, oppy: OppyProcess) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Once oppy is ready: the test page fetched through it, and the first hops of its circuits; then stopped."""
    try:
        oppy.wait_ready()
        fetched = curl(oppy, network.url("/"))
        with controller(oppy) as connected:
            hops = first_hops(connected)
    finally:
        assert oppy.stop() == 0
    return fetched, hops


def bridges_in_use(connected: Controller) -> tuple[list[str], set[str], list[str]]:
    """``entry-guards``, the first hops of the circuits, and ``orconn-status``."""
    return (connected.get_info("entry-guards").splitlines(), first_hops(connected),
            connected.get_info("orconn-status").splitlines())


def bridge_state(data_directory: Path) -> dict[str, dict]:
    state = json.loads((data_directory / "state").read_text())
    return {guard["fingerprint"]: guard for guard in state["bridges"]["guards"]}


def test_bootstrap_through_the_plain_bridge_alone_then_ten_megabytes_and_an_onion_service(network: TestNetwork,
                                                                                           tmp_path: Path):
    bridge = plain(network)
    trace_file = tmp_path / "connect.strace"
    data_directory = tmp_path / "data"
    oppy = bridge_process(network, data_directory, [bridge["bridge_line"]],
                          command_prefix=traced(trace_file))
    try:
        oppy.wait_ready()
        wait_for(lambda: LINKED.search(oppy.info_log))  # conflux (the default): the download takes a set
        result = curl(oppy, network.url(f"/bytes/{TEN_MB}"))
        onion = network.onion
        onion_page = curl(oppy, f"http://{onion['plain']['address']}:{onion['virtual_port']}/")
        with controller(oppy) as connected:
            phase = connected.get_info("status/bootstrap-phase")
            guards, hops, orconns = bridges_in_use(connected)
            legs = [line for line in connected.get_info("circuit-status").splitlines()
                    if "PURPOSE=CONFLUX_LINKED" in line]
    finally:
        assert oppy.stop() == 0
    assert_byte_exact(network, result, TEN_MB)
    assert onion_page.returncode == 0 and onion_page.stdout == HELLO, onion_page.stderr     # through the bridge too

    connects = inet_connects(trace_file.read_text())
    assert connects, "strace saw no connect() at all"
    assert set(connects) == {("127.0.0.1", bridge["ports"]["or"])}, f"not the bridge: {sorted(set(connects))}"

    phases = [match.group(1) for line in oppy.lines if (match := re.search(r"Bootstrapped \d+% \((\w+)\)", line))]
    assert phases[:7] == ["starting", "conn", "conn_done", "handshake", "handshake_done", "onehop_create",
                          "requesting_status"]
    assert phases[-1] == "done"
    assert 'PROGRESS=100 TAG=done SUMMARY="Done"' in phase
    assert any(f"new bridge descriptor '{bridge['nickname']}' (fresh): ${bridge['fingerprint']}~{bridge['nickname']}"
               in line for line in oppy.lines)
    assert guards == [f"${bridge['fingerprint']}~{bridge['nickname']} up"]
    assert hops == {bridge["fingerprint"]}
    # The download went over a conflux set whose legs both start at the bridge (the only one) and both
    # carried its cells.
    assert len(legs) >= 2 and all(line.split()[2].startswith(f"${bridge['fingerprint']}") for line in legs), legs
    received = [ast.literal_eval(match[2]) for match in LEGS.finditer(oppy.info_log)]
    assert any(len(counts) == 2 and min(counts.values()) > 0 and sum(counts.values()) >= TEN_MB // 498
               for counts in received), received
    assert orconns == [f"${bridge['fingerprint']}~{bridge['nickname']} CONNECTED"]


def test_a_bridge_with_a_wrong_fingerprint_is_refused(network: TestNetwork, tmp_path: Path):
    bridge = plain(network)
    wrong = network.bridge("obfs4")["fingerprint"]
    port = bridge["ports"]["or"]
    oppy = bridge_process(network, tmp_path / "data", [f"127.0.0.1:{port} {wrong}"])
    try:
        line = oppy.wait_for_line(r"\[warn\] Bridge \$" + wrong, timeout=60)
        oppy.wait_for_line(r"No bridge could be reached", timeout=60)
        fetched = curl(oppy, network.url("/"), timeout=5)
        with controller(oppy) as connected:
            phase = connected.get_info("status/bootstrap-phase")
            failed = queue.Queue()
            connected.add_event_listener(lambda event: event.status == "FAILED" and failed.put(event),
                                         EventType.ORCONN)
            orconn = failed.get(timeout=60)        # the next retry of the bridge (backing off up to 20 s)
    finally:
        assert oppy.stop() == 0
    # tor's bootstrap problem: stuck at the handshake, the reason IDENTITY, the bridge named.
    assert phase.startswith('WARN BOOTSTRAP PROGRESS=14 TAG=handshake SUMMARY="Handshaking with a relay" '), phase
    assert " REASON=IDENTITY " in phase and " RECOMMENDATION=warn " in phase
    assert phase.endswith(f" HOST=${wrong}~Unnamed HOSTADDR=127.0.0.1:{port}")
    assert (orconn.endpoint_fingerprint, orconn.reason) == (wrong, "IDENTITY")
    assert f"Bridge ${wrong} at 127.0.0.1:{port} is not used until its retry time" in line
    assert f"relay has RSA identity {bridge['fingerprint']}, expected {wrong}" in line
    assert not any("Bootstrapped 75%" in text or "new bridge descriptor" in text for text in oppy.lines)
    assert fetched.returncode != 0


def test_a_bridge_that_is_down_is_skipped_while_the_other_is_used(network: TestNetwork, tmp_path: Path):
    bridge = plain(network)
    dead_port = free_port()             # nothing listens there
    oppy = bridge_process(network, tmp_path / "data", [f"127.0.0.1:{dead_port} {STRANGER}", bridge["bridge_line"]])
    try:
        oppy.wait_ready()
        fetched = curl(oppy, network.url("/"))
        with controller(oppy) as connected:
            guards = connected.get_info("entry-guards").splitlines()
            hops = first_hops(connected)
    finally:
        assert oppy.stop() == 0
    assert fetched.returncode == 0 and fetched.stdout == HELLO, fetched.stderr
    assert hops == {bridge["fingerprint"]}
    assert sum(f"Bridge ${STRANGER} at 127.0.0.1:{dead_port} is not used until its retry time" in line
               for line in oppy.lines) == 1
    assert f"${bridge['fingerprint']}~{bridge['nickname']} up" in guards
    assert any(line.startswith(f"${STRANGER} down ") for line in guards), guards


def test_a_restart_uses_the_remembered_bridge_state(network: TestNetwork, tmp_path: Path):
    bridge = plain(network)
    data_directory = tmp_path / "data"
    first = bridge_process(network, data_directory, [bridge["bridge_line"]])
    try:
        first.wait_ready()
        assert curl(first, network.url("/")).stdout == HELLO
    finally:
        assert first.stop() == 0
    remembered = bridge_state(data_directory)[bridge["fingerprint"]]
    assert remembered["confirmed_idx"] == 0 and remembered["nickname"] == bridge["nickname"]

    # Now a second bridge comes first on the torrc; the confirmed bridge of the state file stays the one used.
    second = bridge_process(network, data_directory, [obfs4_bridge_as_plain_line(network), bridge["bridge_line"]])
    try:
        second.wait_ready()
        wait_for(lambda: LINKED.search(second.info_log))
        fetched = curl(second, network.url("/"))
        with controller(second) as connected:
            singles, sets = first_hops_by_set(connected)
    finally:
        assert second.stop() == 0
    assert fetched.stdout == HELLO, fetched.stderr
    # Single circuits start at the remembered bridge; a conflux set's first leg does too, its other leg goes
    # through the other bridge (legs through different bridges where one fits, as tor builds them).
    # (A set that linked may be gone again when circuit-status is read: seen once in CI, the cause not found
    # yet. What is read is checked.)
    assert singles <= {bridge["fingerprint"]} and (singles or sets), (singles, sets)
    assert all(bridge["fingerprint"] in hops for hops in sets.values()), sets
    assert "Loaded the cached microdesc consensus" in second.info_log
    assert any(f"new bridge descriptor '{bridge['nickname']}' (cached): ${bridge['fingerprint']}" in line
               for line in second.lines)
    after = bridge_state(data_directory)
    kept = after[bridge["fingerprint"]]
    assert (kept["added_at"], kept["confirmed_on"], kept["confirmed_idx"]) == \
        (remembered["added_at"], remembered["confirmed_on"], 0)
    assert set(after) == {bridge["fingerprint"], network.bridge("obfs4")["fingerprint"]}


def test_a_bridge_line_without_fingerprint_learns_the_identity_then_a_restart_reuses_it(network: TestNetwork,
                                                                                      tmp_path: Path):
    """As tor: ``Bridge IP:PORT`` alone; the identity the link handshake proves (and the descriptor carries) is
    learned, used, and remembered in the state file by the bridge's address."""
    bridge = plain(network)
    address = f"127.0.0.1:{bridge['ports']['or']}"
    trace_file = tmp_path / "connect.strace"
    data_directory = tmp_path / "data"
    first = bridge_process(network, data_directory, [address],
                           command_prefix=traced(trace_file))
    try:
        first.wait_ready()
        result = curl(first, network.url(f"/bytes/{ONE_MB}"))
        with controller(first) as connected:
            guards, hops, orconns = bridges_in_use(connected)
    finally:
        assert first.stop() == 0
    assert_byte_exact(network, result, ONE_MB)
    connects = inet_connects(trace_file.read_text())
    assert set(connects) == {("127.0.0.1", bridge["ports"]["or"])}, f"not the bridge: {sorted(set(connects))}"
    assert any(f"Learned fingerprint ${bridge['fingerprint']} for bridge {address}." in line for line in first.lines)
    assert guards == [f"${bridge['fingerprint']}~{bridge['nickname']} up"]
    assert hops == {bridge["fingerprint"]}
    assert orconns == [f"${bridge['fingerprint']}~{bridge['nickname']} CONNECTED"]     # one link, shared
    remembered = bridge_state(data_directory)[bridge["fingerprint"]]
    assert remembered["bridge_addr"] == address and remembered["confirmed_idx"] == 0

    second = bridge_process(network, data_directory, [address])
    fetched, hops = fetch_then_stop(network, second)
    assert fetched.stdout == HELLO, fetched.stderr
    assert hops == {bridge["fingerprint"]}
    assert any(f"new bridge descriptor '{bridge['nickname']}' (cached): ${bridge['fingerprint']}" in line
               for line in second.lines)
    assert not any("Learned fingerprint" in line for line in second.lines)     # reused, not learned again
    kept = bridge_state(data_directory)
    assert set(kept) == {bridge["fingerprint"]}
    assert (kept[bridge["fingerprint"]]["added_at"], kept[bridge["fingerprint"]]["confirmed_idx"]) == \
        (remembered["added_at"], 0)
