"""Connection-level padding against the real relays, observed from the guard relay's side.

Every relay of the private network has a control port that needs no authentication. Subscribed to its INFO
log, it tells us two things per channel: "Negotiated padding=0, lo=..., hi=... on CHANNEL" when a
PADDING_NEGOTIATE arrives (channelpadding_update_padding_for_channel), and "Sending netflow keepalive on
CHANNEL" when the relay pads toward us. SIGNAL DUMP makes it log, for every connection, the peer address and
"last read N secs ago" (when it last read bytes from that peer), and which channel number is which peer. On a
link whose circuits stay idle only CELL_PADDING makes the relay read: "last read" staying low is oppy's
padding arriving, and growing without bound is its absence.

A 2-hop circuit keeps the guard from padding toward us (tor marks a client's link as carrying full circuits
only on a RELAY_EARLY that arrives once the circuit has a next hop, relay.c circuit_update_channel_usage); the
guard's padding would reset oppy's idle timer, as tor's does, and make our write gaps longer than nf_ito_high.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time

import pytest
import pytest_twisted
from stem.control import Controller, EventType, Signal
from twisted.internet import defer, reactor, task, threads

from oppy.circuit.build import build_circuit
from oppy.netdoc.documents import parse_consensus
from oppy.link.connection import LinkPool
from oppy.link.padding import ConnectionPaddingOptions, PaddingParams, PaddingPolicy
from tests.support.network import TestNetwork
from tests.support.oppy_process import OppyProcess, free_port
from tests.support.relays import fetch, relay_targets

GUARD = "relay2"
IDLE_WINDOW = 30.0
SAMPLE_EVERY = 2.0
# The relay reports "last read" in whole seconds: a gap of up to nf_ito_high (9.5 s) shows as at most 10.
PADDED_MAX_LAST_READ = 10
REDUCED_MAX_LAST_READ = 15  # nf_ito_high_reduced, 14 s


class RelayObserver:
    """The INFO log of one relay, through its control port, and its SIGNAL DUMP parsed."""

    def __init__(self, control_port: int) -> None:
        self.controller = Controller.from_port(port=control_port)
        self.controller.authenticate()
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.controller.add_event_listener(self._logged, EventType.INFO)

    def _logged(self, event) -> None:
        with self._changed:
            self.lines.append(event.message)
            self._changed.notify_all()

    def close(self) -> None:
        self.controller.close()

    def negotiations(self) -> dict[int, tuple[int, int, int]]:
        """channel -> (padding, lo, hi) of every PADDING_NEGOTIATE the relay took."""
        found = {}
        for line in list(self.lines):
            if match := re.search(r"Negotiated padding=(\d+), lo=(\d+), hi=(\d+) on (\d+)", line):
                found[int(match.group(4))] = tuple(int(value) for value in match.groups()[:3])
        return found

    def padded_channels(self) -> set[int]:
        return {int(match.group(1)) for line in list(self.lines)
                if (match := re.search(r"Sending netflow keepalive on (\d+) to", line))}

    def dump(self, timeout: float = 10.0) -> "Dump":
        """SIGNAL DUMP, and the lines it logged (up to its last one, the cell counts)."""
        with self._changed:
            start = len(self.lines)
        self.controller.signal(Signal.DUMP)
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(line.startswith("Cells processed:") for line in self.lines[start:]):
                remaining = deadline - time.monotonic()
                assert remaining > 0, "the relay's DUMP never finished"
                self._changed.wait(remaining)
            return Dump(self.lines[start:])


class Dump:
    def __init__(self, lines: list[str]) -> None:
        connection_ports: dict[str, int] = {}
        self.last_read: dict[int, int] = {}  # peer port -> seconds since the relay last read from it
        self.channels: dict[int, int] = {}  # peer port -> channel number
        for line in lines:
            if match := re.match(r"Conn (\d+) \(socket \d+\) is a OR connection \(open\) with 127\.0\.0\.1:(\d+)",
                                 line):
                connection_ports[match.group(1)] = int(match.group(2))
            elif match := re.match(r"Conn (\d+): \d+ bytes waiting on inbuf \(len \d+, last read (\d+) secs ago",
                                   line):
                if match.group(1) in connection_ports:
                    self.last_read[connection_ports[match.group(1)]] = int(match.group(2))
            elif match := re.match(r' \* Channel (\d+) says its remote address is .* actual description of '
                                   r'"127\.0\.0\.1:(\d+)', line):
                self.channels[int(match.group(2))] = int(match.group(1))


@pytest.fixture(scope="module")
def relays(network: TestNetwork):
    return relay_targets(network)


@pytest.fixture
def guard_observer(network: TestNetwork):
    observer = RelayObserver(network.node(GUARD)["ports"]["control"])
    yield observer
    observer.close()


def consensus_params(network: TestNetwork) -> dict[str, int]:
    authority = network.relays("authority")[0]
    return dict(parse_consensus(fetch(f"http://127.0.0.1:{authority['ports']['dir']}"
                                      "/tor/status-vote/current/consensus-microdesc")).params)


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.inlineCallbacks
def test_the_guard_sees_stop_and_padding_as_each_option_asks(network, relays, guard_observer):
    params = consensus_params(network)
    settings = {"ConnectionPadding 1": ConnectionPaddingOptions(connection_padding=True),
                "ConnectionPadding 0": ConnectionPaddingOptions(connection_padding=False),
                "ReducedConnectionPadding 1": ConnectionPaddingOptions(reduced_connection_padding=True)}
    pools = {}
    for name, options in settings.items():
        policy = PaddingPolicy(options)
        policy.update_consensus_params(params)
        pools[name] = LinkPool(reactor, padding=policy)
    try:
        circuits = yield defer.gatherResults([build_circuit(pool, [relays[GUARD], relays["relay3"]])
                                              for pool in pools.values()], consumeErrors=True)
        connections = {name: pool.connections()[0] for name, pool in pools.items()}
        ports = {name: connection.transport.getHost().port for name, connection in connections.items()}
        last_reads: dict[str, list[int]] = {name: [] for name in settings}
        started = time.monotonic()
        while time.monotonic() - started < IDLE_WINDOW:
            yield sleep(SAMPLE_EVERY)
            dump = yield threads.deferToThread(guard_observer.dump)  # the reactor keeps running the timers
            for name, port in ports.items():
                last_reads[name].append(dump.last_read[port])
        channels = {name: dump.channels[port] for name, port in ports.items()}
        negotiations = guard_observer.negotiations()
        padded_by_guard = guard_observer.padded_channels()
        sent = {name: connection.channel.padding.padding_cells_sent for name, connection in connections.items()}

        expected_low = PaddingParams.from_consensus(params).ito_low_ms  # the relay clamps STOP's 0 to it
        # ConnectionPadding 1: nothing negotiated (tor sends no START), and the guard kept reading our padding.
        assert channels["ConnectionPadding 1"] not in negotiations
        assert channels["ConnectionPadding 1"] not in padded_by_guard, "the guard padded: see the docstring"
        assert max(last_reads["ConnectionPadding 1"]) <= PADDED_MAX_LAST_READ, last_reads
        assert sent["ConnectionPadding 1"] >= IDLE_WINDOW / 9.5 - 1
        # ConnectionPadding 0: STOP arrived, nobody padded, the link went silent.
        assert negotiations[channels["ConnectionPadding 0"]] == (0, expected_low, expected_low)
        assert channels["ConnectionPadding 0"] not in padded_by_guard
        assert sent["ConnectionPadding 0"] == 0
        assert last_reads["ConnectionPadding 0"][-1] >= IDLE_WINDOW - 5, last_reads
        # ReducedConnectionPadding 1: STOP arrived, and we padded at the reduced rate (9-14 s).
        assert negotiations[channels["ReducedConnectionPadding 1"]] == (0, expected_low, expected_low)
        assert channels["ReducedConnectionPadding 1"] not in padded_by_guard
        assert max(last_reads["ReducedConnectionPadding 1"]) <= REDUCED_MAX_LAST_READ, last_reads
        assert max(last_reads["ReducedConnectionPadding 1"]) >= 9, last_reads
        assert 1 <= sent["ReducedConnectionPadding 1"] <= IDLE_WINDOW / 9 + 1
        for circuit in circuits:
            circuit.close()
    finally:
        for pool in pools.values():
            pool.close_all()


def guard_fingerprint(control_port: int) -> str:
    """The first hop of oppy's built multi-hop GENERAL circuits, as its control port reports them (conflux legs
    go through other guards on purpose)."""
    with Controller.from_port(port=control_port) as controller:
        controller.authenticate()
        guards = {circuit.path[0][0] for circuit in controller.get_circuits()
                  if circuit.status == "BUILT" and len(circuit.path) > 1 and circuit.purpose == "GENERAL"}
    assert len(guards) == 1, guards
    return guards.pop()


def link_port(process: OppyProcess, fingerprint: str) -> int:
    """The local port of oppy's (last) link to the relay, from its info log."""
    ports = re.findall(rf"Link to \${fingerprint}~\S+ open \(link protocol 5\) from 127\.0\.0\.1:(\d+)\.",
                       process.info_log)
    assert ports, f"no link to {fingerprint} in the info log"
    return int(ports[-1])


def test_the_daemon_stops_padding_with_connection_padding_0_and_reduces_it_with_reduced_padding(network, tmp_path):
    """The torrc options reach the daemon's links. (ConnectionPadding 1, tor's behaviour on link protocol 5
    also without it, is observed in process above: here the guard pads toward the daemon's 3-hop circuits,
    each of its cells resets oppy's idle timer as in tor, and how many cells oppy itself sends in a window is
    left to chance.)"""
    observers = {node["fingerprint"]: RelayObserver(node["ports"]["control"]) for node in network.relays()}
    processes = {}
    try:
        for option in ("ConnectionPadding 0", "ReducedConnectionPadding 1"):
            control_port = free_port()
            processes[option] = OppyProcess(network, tmp_path / f"{option.split()[0]}-data",
                                            # No build-time test circuits (tor launches them while it learns
                                            # its timeout): they would keep the guard link from going idle.
                                            extra_lines=[option, f"ControlPort {control_port}",
                                                         "LearnCircuitBuildTimeout 0"])
            processes[option].control_port = control_port
        for process in processes.values():
            process.wait_ready()
            fetched = subprocess.run(["curl", "-sS", "--max-time", "60", "--socks5-hostname",
                                      f"127.0.0.1:{process.socks_port}", network.url("/")],
                                     capture_output=True, timeout=90)
            assert fetched.stdout == b"hello from the oppy test target\n", fetched.stderr
        guards = {option: guard_fingerprint(process.control_port) for option, process in processes.items()}
        last_reads: dict[str, list[int]] = {option: [] for option in processes}
        started = time.monotonic()
        while time.monotonic() - started < IDLE_WINDOW:
            time.sleep(SAMPLE_EVERY)
            for option, process in processes.items():
                last_reads[option].append(observers[guards[option]].dump().last_read[
                    link_port(process, guards[option])])
        for option, process in processes.items():
            guard = observers[guards[option]]
            channel = guard.dump().channels[link_port(process, guards[option])]
            assert guard.negotiations()[channel][0] == 0, f"{option}: the guard took our STOP"
            assert channel not in guard.padded_channels(), f"{option}: the guard stopped padding"
            keepalives = re.findall(rf"Sending netflow keepalive to \${guards[option]}~", process.info_log)
            if option == "ConnectionPadding 0":
                assert keepalives == []
            else:
                assert keepalives, "oppy pads its idle guard link at the reduced rate"
                assert max(last_reads[option]) <= REDUCED_MAX_LAST_READ, last_reads
    finally:
        for observer in observers.values():
            observer.close()
        for process in processes.values():
            assert process.stop() == 0
