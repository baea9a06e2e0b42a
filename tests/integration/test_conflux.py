"""Conflux (prop 329) with the private network's 0.4.9 exits, which all list Conflux=1: oppy links two legs
to one exit, carries 50 MB down and 20 MB up byte-exact over the set with cells on both legs, and with
`ConfluxEnabled 0` builds no set at all."""

from __future__ import annotations

import ast
import hashlib
import re
import subprocess
import time
from pathlib import Path

import pytest
from stem.control import Controller

from tests.integration.test_congestion_control import MB, curl
from tests.support.network import TestNetwork
from tests.support.oppy_process import OppyProcess, free_port
from tests.support.relays import fetch
from tests.support.torture import relay_killed

LINKED = re.compile(r"Conflux set ([0-9A-F]{16}) linked: legs \[(\d+), (\d+)\] to \$[0-9A-F]{40}~(\S+), RTTs")
SET_CLOSED = re.compile(r"Conflux set ([0-9A-F]{16}) closed: (.*)")
SET_GOES_ON = re.compile(r"Conflux set ([0-9A-F]{16}): leg \d+ closed \(.*\); the set goes on")
LEGS = re.compile(r"Conflux set ([0-9a-f]{8}): stream \d+ done; multiplexed cells received per leg (\{.*?\}), "
                  r"sent per leg (\{.*?\}), (\d+) switches sent\.")


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def oppy(network: TestNetwork, tmp_path_factory):
    control_port = free_port()
    process = OppyProcess(network, tmp_path_factory.mktemp("oppy-conflux") / "data", extra_lines=[
        f"ControlPort 127.0.0.1:{control_port}", "CookieAuthentication 1"])
    process.control_port = control_port
    process.wait_ready()
    wait_for(lambda: LINKED.search(process.info_log))
    yield process
    assert process.stop() == 0


def last_leg_counts(oppy: OppyProcess) -> tuple[dict, dict, int]:
    matches = list(LEGS.finditer(oppy.info_log))
    assert matches, "no stream went over a conflux set"
    last = matches[-1]
    return ast.literal_eval(last[2]), ast.literal_eval(last[3]), int(last[4])


def test_sets_link_two_legs_to_one_exit(network, oppy):
    exits = {relay["nickname"] for relay in network.relays("exit")}
    linked = list(LINKED.finditer(oppy.info_log))
    assert linked and all(match[4] in exits and match[2] != match[3] for match in linked)


def test_the_control_port_shows_both_legs_with_their_set_and_rtt(oppy):
    with Controller.from_port(port=oppy.control_port) as controller:
        controller.authenticate()
        lines = controller.get_info("circuit-status").splitlines()
    linked = [line for line in lines if "PURPOSE=CONFLUX_LINKED" in line]
    sets: dict[str, list[int]] = {}
    for line in linked:
        conflux_id = re.search(r" CONFLUX_ID=([0-9A-F]{32})", line)[1]
        sets.setdefault(conflux_id, []).append(int(re.search(r" CONFLUX_RTT=(\d+)$", line)[1]))
    assert sets and all(len(rtts) == 2 and min(rtts) > 0 for rtts in sets.values()), lines


def test_fifty_megabytes_down_byte_exact_over_both_legs(network, oppy):
    result = curl(oppy, network.url(f"/bytes/{50 * MB}"))
    assert len(result) == 50 * MB
    assert hashlib.sha256(result).hexdigest() == fetch(network.url(f"/sha256/{50 * MB}")).decode().strip()
    wait_for(lambda: LEGS.search(oppy.info_log))
    received, _, _ = last_leg_counts(oppy)
    assert len(received) == 2
    # 50 MB is about 100 000 DATA cells; the exit's LowRTT scheduler (our ConfluxClientUX throughput) fills
    # both legs' windows.
    assert sum(received.values()) >= 50 * MB // 498
    assert min(received.values()) > 0, received


def test_twenty_megabytes_up_byte_exact(network, oppy, tmp_path):
    body = hashlib.shake_256(b"twenty megabytes up over conflux").digest(20 * MB)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(body)
    before = len(list(LEGS.finditer(oppy.info_log)))
    reply = curl(oppy, network.url("/upload"), "--data-binary", f"@{upload}")
    assert reply.decode().strip() == f"sha256={hashlib.sha256(body).hexdigest()} length={20 * MB}"
    wait_for(lambda: len(list(LEGS.finditer(oppy.info_log))) > before)
    _, sent, _ = last_leg_counts(oppy)
    assert sum(sent.values()) >= 20 * MB // 498


# The leg-kill test: a download long enough to be mid-way when the relay dies even at 30 MB/s, killed once
# this much has arrived; the killed relay is started again at the latest this long after the kill (the
# network is shared with the tests after this one).
KILL_DOWNLOAD = 100 * MB
KILL_AFTER = 10 * MB
RESTORE_AFTER = 8.0
# How long the download may take to end once a leg is gone, and the next request to be served.
END_WITHIN = 30.0
NEXT_REQUEST_WITHIN = 5.0


def circuit_paths(controller: Controller) -> dict[int, tuple[str | None, list[str]]]:
    """circuit-status: circuit id -> (CONFLUX_ID or None, the path's nicknames)."""
    circuits = {}
    for line in controller.get_info("circuit-status").splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[1] != "BUILT":
            continue
        conflux_id = re.search(r" CONFLUX_ID=([0-9A-F]{32})", line)
        circuits[int(fields[0])] = (conflux_id and conflux_id[1],
                                    [hop.split("~")[1] for hop in fields[2].split(",")])
    return circuits


def stream_set_legs(controller: Controller, http_port: int) -> tuple[str, list[list[str]]] | None:
    """The conflux set our newest stream to the target rides (stream-status names one of its legs) and its
    legs' paths; None when that stream is on a single circuit."""
    streams = {}
    for line in controller.get_info("stream-status").splitlines():
        fields = line.split()
        if fields[1] == "SUCCEEDED" and fields[3].endswith(f":{http_port}"):
            streams[int(fields[0])] = int(fields[2])
    circuits = circuit_paths(controller)
    circuit = streams[max(streams)] if streams else None
    if circuit not in circuits or circuits[circuit][0] is None:
        return None
    conflux_id = circuits[circuit][0]
    return conflux_id, [path for cid, path in circuits.values() if cid == conflux_id]


def leg_middle_to_kill(network: TestNetwork, legs: list[list[str]]) -> str | None:
    """A middle relay of one leg that this test may kill: a relay of the "middle" role (never an authority
    or the exit), preferably one the other legs do not use (then one leg dies, not all of them)."""
    killable = {relay["nickname"] for relay in network.relays("middle")}
    candidates = [path[1] for path in legs if path[1] in killable]
    alone = [middle for middle in candidates if sum(middle in path for path in legs) == 1]
    return (alone or candidates or [None])[0]


def start_download(oppy: OppyProcess, url: str, output: Path, user: str) -> subprocess.Popen:
    """curl writing to `output` as it reads; its own SOCKS username, so its stream takes a clean set
    (IsolateSOCKSAuth) rather than one an earlier download used."""
    return subprocess.Popen(["curl", "-sS", "--max-time", "120", "--proxy",
                             f"socks5h://{user}:x@127.0.0.1:{oppy.socks_port}", "-o", str(output), url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_a_legs_middle_killed_mid_download_ends_it_cleanly_and_the_next_request_works(network, oppy, tmp_path):
    """SIGKILL the middle relay of one leg of the set a 100 MB download rides, 10 MB in. As tor's
    linked_circuit_closed/cfx_del_leg (on both ends), the set goes with its stream when that leg had data in
    flight: the download either completes byte-exact or ends early with exactly the target's bytes so far,
    never hangs, oppy says what happened to the set in one line, and the next request is served at once."""
    url = network.url(f"/bytes/{KILL_DOWNLOAD}")
    downloads = []
    try:
        with Controller.from_port(port=oppy.control_port) as controller:
            controller.authenticate()
            for attempt in range(5):
                output = tmp_path / f"download-{attempt}"
                download = start_download(oppy, url, output, f"leg-kill-{attempt}")
                downloads.append(download)
                wait_for(lambda: download.poll() is not None
                         or output.exists() and output.stat().st_size >= KILL_AFTER, timeout=60)
                assert download.poll() is None, f"the download ended before the kill: {download.stderr.read()}"
                found = stream_set_legs(controller, network.http_port)
                assert found is not None, "the download does not ride a conflux set"
                conflux_id, legs = found
                victim = leg_middle_to_kill(network, legs)
                if victim is not None:
                    break
                download.kill()  # both legs' middles are authorities: another set
            else:
                pytest.fail("no conflux set with a killable middle relay in 5 attempts")
        log_mark = len(oppy.info_log)
        with relay_killed(network.node(victim), Path(network.state["dir"]) / "empty-defaults-torrc",
                          RESTORE_AFTER):
            killed_at = time.monotonic()
            received_at_kill = output.stat().st_size
            _, error = download.communicate(timeout=END_WITHIN)
            ended_after = time.monotonic() - killed_at
            started = time.monotonic()
            after = curl(oppy, network.url(f"/bytes/{MB}"), timeout=30)
            next_took = time.monotonic() - started
    finally:
        for process in downloads:
            process.kill()
            process.wait()
    body = output.read_bytes()
    log = oppy.info_log[log_mark:]
    print(f"set {conflux_id[:16]} legs {legs}, killed {victim} at {received_at_kill} bytes; curl exit "
          f"{download.returncode} after {ended_after:.2f} s with {len(body)} bytes ({error.decode().strip()}); "
          f"next request {next_took:.2f} s")
    assert received_at_kill < KILL_DOWNLOAD
    # Never a wrong byte: what arrived is the target's content up to where it stopped.
    assert body == fetch(network.url(f"/bytes/{len(body)}")), "corrupt bytes"
    # One line says what became of the set: closed with the stream (and why), or going on without the leg.
    closed = [match for match in SET_CLOSED.finditer(log) if match[1] == conflux_id[:16]]
    went_on = [match for match in SET_GOES_ON.finditer(log) if match[1] == conflux_id[:16]]
    if download.returncode == 0:
        assert len(body) == KILL_DOWNLOAD
        assert hashlib.sha256(body).hexdigest() == fetch(network.url(f"/sha256/{KILL_DOWNLOAD}")).decode().strip()
        assert len(went_on) == 1 and not closed, log[-3000:]
    else:
        assert len(body) < KILL_DOWNLOAD, error
        assert len(closed) == 1 and "closed" in closed[0][2], log[-3000:]
    assert hashlib.sha256(after).hexdigest() == fetch(network.url(f"/sha256/{MB}")).decode().strip()
    assert next_took < NEXT_REQUEST_WITHIN


def test_conflux_disabled_builds_single_circuits(network, tmp_path):
    process = OppyProcess(network, tmp_path / "data", extra_lines=["ConfluxEnabled 0"]).wait_ready()
    try:
        result = curl(process, network.url(f"/bytes/{MB}"))
        assert hashlib.sha256(result).hexdigest() == fetch(network.url(f"/sha256/{MB}")).decode().strip()
        assert "Conflux set" not in process.info_log
        assert "Launching conflux set" not in process.info_log
    finally:
        assert process.stop() == 0
