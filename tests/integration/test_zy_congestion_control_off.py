"""The network with congestion control off (cc_alg=0), late in the run (only test_zz_relay_logs comes after).

The authorities are given `cc_alg=0` on top of their ConsensusParams (`scripts/testnet params`); once every
relay holds that consensus, the exits refuse congestion control when asked all the same (onion_crypto.c
negotiate_v3_ntor_server_circ_params), and a fresh oppy reads it and asks no exit (tor's
congestion_control_enabled). Every exit circuit runs the fixed windows of tor-spec "Flow control":
transfers byte-exact both ways, and a reader that stops holds the exit at the stream window until it reads
again. Afterwards the original parameters are restored, and the module waits until the relays hold them again.

It reconfigures the network's authorities, so on a network used as it is (OPPY_TEST_NETWORK_EXTERNAL, maybe
shared) it runs only with OPPY_TEST_NETWORK_RECONFIGURE=1.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time

import pytest
import pytest_twisted
from stem.control import Controller, EventType

from tests.integration.test_congestion_control import (
    FIXED,
    NEGOTIATED,
    curl,
    exits_answering_a_congestion_control_request,
    network_cc_alg,
)
from tests.integration.test_flow_control import expected_sha256, read_headers, read_to_the_end
from tests.support.network import EXTERNAL_DIR, TestNetwork
from tests.support.oppy_process import OppyProcess
from tests.support.socks_client import socks5_request

MB = 1000 * 1000
# How long the reader of the held download reads nothing, and from when on the exit must have stopped: it
# has the rest of its stream window (500 cells) to send, and oppy's socket to the reader to fill.
HOLD_SECONDS = 5.0
HELD_AFTER = 2.5


def with_cc_alg_zero(params: str) -> str:
    words = [word for word in params.split() if not word.startswith("cc_alg=")]
    return " ".join([*words, "cc_alg=0"])


@pytest.fixture(scope="module")
def fixed_window_network(network: TestNetwork):
    """The session's network with cc_alg=0 in its consensus for the module's tests, as before afterwards."""
    if EXTERNAL_DIR and os.environ.get("OPPY_TEST_NETWORK_RECONFIGURE") != "1":
        pytest.fail(f"this module changes the consensus parameters of the network; {EXTERNAL_DIR} is used as it "
                    "is (OPPY_TEST_NETWORK_EXTERNAL): set OPPY_TEST_NETWORK_RECONFIGURE=1 if it may be changed")
    original = network.state["consensus_params"]
    changed = network_cc_alg(network) != 0
    if changed:
        network.set_consensus_params(with_cc_alg_zero(original))
    yield network
    if changed:
        network.set_consensus_params(original)


class Events:
    """oppy's STREAM and CIRC_BW events, as they arrive."""

    def __init__(self, control_port: int) -> None:
        self.streams: list[tuple[str, str, str | None]] = []  # (stream id, status, circuit id)
        self.circuit_reads: list[tuple[float, str, int]] = []  # (arrival, circuit id, READ)
        self._lock = threading.Lock()
        self.controller = Controller.from_port(port=control_port)
        self.controller.authenticate()
        self.controller.add_event_listener(self._stream, EventType.STREAM)
        self.controller.add_event_listener(self._circ_bw, EventType.CIRC_BW)

    def _stream(self, event) -> None:
        with self._lock:
            self.streams.append((event.id, event.status, event.circ_id))

    def _circ_bw(self, event) -> None:
        with self._lock:
            self.circuit_reads.append((time.monotonic(), event.id, event.read))

    def circuit_of_new_stream(self, known: set[str]) -> str:
        with self._lock:
            (circuit,) = {c for s, status, c in self.streams if status == "SUCCEEDED" and s not in known}
        return circuit

    def stream_ids(self) -> set[str]:
        with self._lock:
            return {s for s, _, _ in self.streams}


@pytest.fixture(scope="module")
def oppy(fixed_window_network, tmp_path_factory):
    process = OppyProcess(fixed_window_network, tmp_path_factory.mktemp("oppy-cc-off") / "data",
                          control_port=True).wait_ready()
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def events(oppy):
    listening = Events(oppy.control_port)
    yield listening
    listening.controller.close()


def test_a_few_megabytes_down_and_up_byte_exact(fixed_window_network, oppy, events, tmp_path):
    network = fixed_window_network
    down = curl(oppy, network.url(f"/bytes/{5 * MB}"))
    assert len(down) == 5 * MB
    assert hashlib.sha256(down).hexdigest() == expected_sha256(network, 5 * MB)
    body = hashlib.shake_256(b"five megabytes up on fixed windows").digest(5 * MB)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(body)
    reply = curl(oppy, network.url("/upload"), "--data-binary", f"@{upload}")
    assert reply.decode().strip() == f"sha256={hashlib.sha256(body).hexdigest()} length={5 * MB}"


def test_a_reader_that_stops_holds_the_exit_at_the_stream_window_then_finishes_byte_exact(
        fixed_window_network, oppy, events):
    """No SENDME is owed while the reader reads nothing, so the exit stops once it has sent the stream window;
    once the reader reads again the stream SENDMEs let the download finish."""
    network = fixed_window_network
    length = 20 * MB
    known = events.stream_ids()
    code, sock = socks5_request(oppy.socks_port, "127.0.0.1", network.http_port, receive_buffer=64 * 1024)
    assert code == 0
    sock.sendall(f"GET /bytes/{length} HTTP/1.0\r\n\r\n".encode())
    digest = hashlib.sha256()
    body = read_headers(sock)
    digest.update(body)
    received = len(body)
    stopped = time.monotonic()
    time.sleep(HOLD_SECONDS)  # reading nothing
    circuit = events.circuit_of_new_stream(known)
    held = [read for arrival, circ, read in events.circuit_reads
            if circ == circuit and arrival > stopped + HELD_AFTER + 1]  # CIRC_BW: the second before arrival
    assert sum(held) == 0, f"the exit went on sending while the reader read nothing: {held}"
    assert read_to_the_end(sock, digest, received, length) == length
    assert digest.hexdigest() == expected_sha256(network, length)
    time.sleep(1.5)  # the last CIRC_BW event: the circuit's events were those of this download
    assert sum(read for _, circ, read in events.circuit_reads if circ == circuit) >= length


@pytest_twisted.inlineCallbacks
def test_the_exits_refuse_congestion_control_once_their_consensus_turns_it_off(fixed_window_network):
    """Asked all the same, each exit answers ntor v3 without the congestion-control response: the relays stop
    negotiating it, not only the client asking (1 MB then goes over the fixed windows)."""
    agreed = yield exits_answering_a_congestion_control_request(fixed_window_network)
    assert agreed == set()


def test_every_exit_circuit_ran_fixed_windows(fixed_window_network, oppy, events):
    log = oppy.info_log
    fixed = {m[1]: m[2] for m in FIXED.finditer(log)}
    assert list(NEGOTIATED.finditer(log)) == []
    assert not re.search(r"Sending XO|Got XO", log)
    assert set(fixed.values()) <= {relay["nickname"] for relay in fixed_window_network.relays("exit")}
    # Every stream rode a circuit oppy logged as running the fixed windows.
    streams = {(s, c) for s, status, c in events.streams if status == "SUCCEEDED"}
    assert len(streams) >= 3
    assert {c for _, c in streams} <= set(fixed)
    assert not {status for _, status, _ in events.streams} & {"XOFF_SENT", "XON_SENT", "XOFF_RECV", "XON_RECV"}
