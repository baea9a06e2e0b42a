"""Circuit-setup padding on the private network's C tor 0.4.9 relays (padding-spec "Circuit-level padding"): an
onion-service fetch through oppy negotiates tor's two client machines with the middle relays, sends and takes
DROP cells, and stays byte-exact; after `SETCONF CircuitPadding=0` nothing is negotiated. The relays' logs are
checked for protocol warnings by test_zz_relay_logs."""

from __future__ import annotations

import hashlib
import re
import subprocess
import time

import pytest
from stem.control import Controller

from oppy.circuit.padding import INTRO_MACHINE_MAXIMUM_PADDING, INTRO_MACHINE_MINIMUM_PADDING
from tests.integration.test_onion_services import expected_sha256, onion_url, start
from tests.support.network import TestNetwork

ONE_MB = 1_000_000
# The middle's intro machine sends its 7 to 9 DROP cells and STOP within milliseconds of the negotiation.
PADDING_DONE_BOUND = 30.0

NEGOTIATED = re.compile(r"circuit (\d+): padding machine (\d) negotiated with .*: PADDING_NEGOTIATED OK")
NEGOTIATING = "negotiating padding machine"
DROP_SENT = "sending a padding cell (DROP)"
DROP_RECEIVED = "got a padding cell (DROP) from"
STOPPED = re.compile(r"circuit (\d+): padding machine 0 stopped by .* after (\d+) padding cells")


@pytest.fixture(scope="module")
def oppy(network: TestNetwork, tmp_path_factory):
    yield from start(network, tmp_path_factory, "oppy-padding")


def fetch_onion(network: TestNetwork, port: int, length: int, credentials: str = "") -> bytes:
    """`length` bytes from the plain onion service; other SOCKS `credentials` (user:password@) get circuits
    of their own (IsolateSOCKSAuth)."""
    result = subprocess.run(["curl", "-sS", "--max-time", "120", "--proxy", f"socks5h://{credentials}127.0.0.1:{port}",
                             onion_url(network, "plain", f"/bytes/{length}")], capture_output=True, timeout=150)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == length
    assert hashlib.sha256(result.stdout).hexdigest() == expected_sha256(network, length)
    return result.stdout


def wait_for(predicate, bound: float) -> bool:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_both_machines_are_negotiated_and_the_fetch_is_byte_exact(network, oppy):
    fetch_onion(network, oppy.socks_port, ONE_MB)
    # The rendezvous machine (1) at once, the introduction machine (0) once INTRODUCE1 went out.
    assert wait_for(lambda: {m[1] for m in NEGOTIATED.findall(oppy.info_log)} >= {"0", "1"}, PADDING_DONE_BOUND), \
        oppy.info_log[-3000:]
    assert DROP_SENT in oppy.info_log  # the rendezvous machine's one DROP to the middle
    # The middle's intro machine pads, then stops it; the introduction circuit is held open meanwhile.
    assert wait_for(lambda: STOPPED.search(oppy.info_log), PADDING_DONE_BOUND), oppy.info_log[-3000:]
    log = oppy.info_log
    intro, padding_cells = STOPPED.search(log).groups()
    # relay_ip_circ: a state length uniform in [INTRO_MACHINE_MINIMUM_PADDING, INTRO_MACHINE_MAXIMUM_PADDING).
    assert INTRO_MACHINE_MINIMUM_PADDING <= int(padding_cells) < INTRO_MACHINE_MAXIMUM_PADDING
    assert log.count(f"circuit {intro}: {DROP_RECEIVED}") == int(padding_cells)
    assert f"circuit {intro}: not closed yet: padding machine client_ip_circ is still running" in log
    # Then it stays open as a used circuit would (MaxCircuitDirtiness), as tor keeps it.
    assert f"circuit {intro}: padding done; closing the circuit in" in log
    assert f"circuit {intro} closed" not in log


def test_circuit_padding_0_negotiates_nothing_and_the_fetch_is_byte_exact(network, oppy):
    with Controller.from_port(port=oppy.control_port) as controller:
        controller.authenticate()
        controller.set_conf("CircuitPadding", "0")
        try:
            seen = len(oppy.info_log)
            fetch_onion(network, oppy.socks_port, ONE_MB, credentials="unpadded:circuits@")
            time.sleep(1)
            log = oppy.info_log[seen:]
        finally:
            controller.set_conf("CircuitPadding", "1")
    assert "Connected to" in log, log[-3000:]  # new introduction and rendezvous circuits, for these credentials
    padding_lines = [line for line in log.splitlines()
                     if NEGOTIATING in line or DROP_SENT in line or DROP_RECEIVED in line or NEGOTIATED.search(line)]
    assert not padding_lines, "\n".join(padding_lines)
