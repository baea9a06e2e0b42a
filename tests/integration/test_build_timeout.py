"""The circuit build timeout on the private network: oppy learns it from its own builds as tor does
(path-spec 2.4), reports it to controllers, keeps the history across restarts, and holds a fixed
CircuitBuildTimeout when learning is off."""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
from pathlib import Path
from typing import Iterator

from stem.control import Controller, EventType

from tests.integration.test_control import Events
from tests.support.network import TestNetwork
from tests.support.oppy_process import OppyProcess, free_port
from tests.support.socks_client import socks5_request

# path-spec 2.4.6 cbtmincircs: the default number of build times before a timeout is computed.
MIN_CIRCUITS = 100
PARALLEL = 8


@contextlib.contextmanager
def running_oppy(network: TestNetwork, data_directory: Path, *lines: str) -> Iterator[OppyProcess]:
    """oppy with a control port (any local program may use it), stopped at the end; it must exit 0."""
    control_port = free_port()
    process = OppyProcess(network, data_directory, extra_lines=[f"ControlPort 127.0.0.1:{control_port}", *lines])
    process.control_port = control_port
    try:
        yield process.wait_ready()
    finally:
        exit_code = process.stop()
    assert exit_code == 0


def new_circuits(oppy: OppyProcess, network: TestNetwork, count: int, first: int = 0) -> None:
    """Make oppy build about `count` more general circuits: each stream with new SOCKS credentials needs a
    circuit of its own (IsolateSOCKSAuth)."""
    def connect(index: int) -> int:
        reply, sock = socks5_request(oppy.socks_port, network.host, network.http_port,
                                     credentials=(f"learner{index}".encode(), b"pw"), timeout=60)
        sock.close()
        return reply

    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        assert list(pool.map(connect, range(first, first + count))) == [0] * count


def saved_total(data_directory: Path) -> int:
    text = (data_directory / "circuit-build-times").read_text()
    return int(re.search(r"^TotalBuildTimes (\d+)$", text, re.M).group(1))


def test_oppy_learns_its_build_timeout_uses_it_and_keeps_it_across_a_restart(network, tmp_path):
    data_directory = tmp_path / "data"
    with running_oppy(network, data_directory) as oppy, Controller.from_port(port=oppy.control_port) as controller:
        controller.authenticate()
        events = Events(controller, EventType.BUILDTIMEOUT_SET, EventType.CIRC)
        new_circuits(oppy, network, MIN_CIRCUITS + 10)
        # stem parsed tor's format; the first one comes with the 100th build time.
        first = events.wait_for(lambda event: event.type == "BUILDTIMEOUT_SET")
        assert (first.set_type, first.total_times, first.quantile) == ("COMPUTED", MIN_CIRCUITS, 0.8)
        assert 0 < first.xm <= first.timeout < 60_000 and first.alpha > 0
        assert first.close_timeout >= 60_000  # path-spec 2.4.3: at least cbtinitialtimeout
        assert "Based on 100 circuit times, we will now assume a circuit is too slow to use after waiting" \
            in oppy.info_log
        # Builds now run against the learned timeout: about one in five outlasts it (cbtquantile 80) and fails
        # for its users with REASON=TIMEOUT, while oppy builds on to measure it.
        index = MIN_CIRCUITS + 10
        while not events.of("CIRC", reason="TIMEOUT"):
            assert index < 6 * MIN_CIRCUITS, "no build outlasted the learned timeout"
            new_circuits(oppy, network, PARALLEL, first=index)
            index += PARALLEL
        assert re.search(r"timed out after 0\.\d+s waiting for hop \d .*; building on until \d+s to measure it",
                         oppy.info_log)
    total = saved_total(data_directory)
    assert total >= MIN_CIRCUITS
    with running_oppy(network, data_directory) as again:
        assert f"Loaded {total} circuit build times" in again.info_log
        assert f"Based on {total} circuit times, we will now assume a circuit is too slow to use" in again.info_log


def test_circuit_build_timeout_is_fixed_when_learning_is_off(network, tmp_path):
    data_directory = tmp_path / "data"
    with running_oppy(network, data_directory, "LearnCircuitBuildTimeout 0", "CircuitBuildTimeout 10") as oppy, \
            Controller.from_port(port=oppy.control_port) as controller:
        controller.authenticate()
        assert controller.get_conf_map(["LearnCircuitBuildTimeout", "CircuitBuildTimeout"]) == {
            "LearnCircuitBuildTimeout": ["0"], "CircuitBuildTimeout": ["10"]}
        events = Events(controller, EventType.BUILDTIMEOUT_SET)
        new_circuits(oppy, network, MIN_CIRCUITS + 10)
        assert events.seen == []
        # Learning turned on at run time starts from the configured 10 s.
        controller.set_conf("LearnCircuitBuildTimeout", "1")
        new_circuits(oppy, network, 20, first=MIN_CIRCUITS + 10)
    assert 0 < saved_total(data_directory) < MIN_CIRCUITS  # only the circuits built since SETCONF
    assert "circuit is too slow to use" not in oppy.info_log


def test_a_broken_history_is_kept_aside_and_learning_starts_over(network, tmp_path):
    data_directory = tmp_path / "data"
    data_directory.mkdir(mode=0o700)
    broken = "TotalBuildTimes 5\nCircuitBuildTimeBin 15 3\n"
    (data_directory / "circuit-build-times").write_text(broken)
    with running_oppy(network, data_directory) as oppy:
        assert any("Ignoring the circuit build times in" in line and "says 5 but the lines hold 3 times" in line
                   for line in oppy.lines)
    assert (data_directory / "circuit-build-times.broken").read_text() == broken
    assert saved_total(data_directory) < MIN_CIRCUITS
