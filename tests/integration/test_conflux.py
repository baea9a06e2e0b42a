"""Conflux (prop 329) with the private network's 0.4.9 exits, which all list Conflux=1: oppy links two legs
to one exit, carries 50 MB down and 20 MB up byte-exact over the set with cells on both legs, and with
`ConfluxEnabled 0` builds no set at all."""

from __future__ import annotations

import ast
import hashlib
import re
import time

import pytest
from stem.control import Controller

from tests.integration.test_congestion_control import MB, curl
from tests.support.network import TestNetwork
from tests.support.oppy_process import OppyProcess, free_port
from tests.support.relays import fetch

LINKED = re.compile(r"Conflux set ([0-9A-F]{16}) linked: legs \[(\d+), (\d+)\] to \$[0-9A-F]{40}~(\S+), RTTs")
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


def test_conflux_disabled_builds_single_circuits(network, tmp_path):
    process = OppyProcess(network, tmp_path / "data", extra_lines=["ConfluxEnabled 0"]).wait_ready()
    try:
        result = curl(process, network.url(f"/bytes/{MB}"))
        assert hashlib.sha256(result).hexdigest() == fetch(network.url(f"/sha256/{MB}")).decode().strip()
        assert "Conflux set" not in process.info_log
        assert "Launching conflux set" not in process.info_log
    finally:
        assert process.stop() == 0
