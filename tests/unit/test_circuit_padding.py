"""Circuit-setup padding: the PADDING_NEGOTIATE / PADDING_NEGOTIATED codec (circpad_negotiation.trunnel), tor's two
client machines (circuitpadding_machines.c) driven by scripted events, and their negotiation on a circuit with a
simulated clock."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from twisted.internet import task
from twisted.internet.task import Clock

from oppy.cell.circuit_padding import (
    PaddingCommand,
    PaddingNegotiate,
    PaddingNegotiated,
    PaddingResponse,
    decode_padding_negotiate,
    decode_padding_negotiated,
    encode_padding_negotiate,
    encode_padding_negotiated,
)
from oppy.cell.commands import DestroyReason, RelayCommand
from oppy.cell.errors import CellParseError
from oppy.circuit.padding import (
    CIRCPAD_DELAY_MAX_SECS,
    CLIENT_INTRO_MACHINE,
    CLIENT_REND_MACHINE,
    CircuitPadding,
    DefaultCircuitPaddingOptions,
    MachineState,
    PaddingEvent,
    PaddingGate,
    PaddingMachine,
    PaddingPurpose,
    purpose_for_hs_state,
)
from oppy.circuit.circuit import CircuitState
from oppy.circuit.manager import CircuitManager, CircuitPurpose
from oppy.netdoc.relay import RelayTarget
from oppy.path.chooser import PathChooser
from tests.unit.relaysim import CMD_RELAY, SimulatedPath, SimulatedRelay
from tests.unit.test_circuit_manager import OneChannelLinks, answer_build, not_learning

# ------------------------------------------------------------------------------ codec


def test_negotiate_layout_is_the_trunnel_struct():
    body = encode_padding_negotiate(PaddingNegotiate(PaddingCommand.START, 1, 0x01020304))
    assert body == bytes([0, 2, 1, 0, 1, 2, 3, 4])
    assert decode_padding_negotiate(body + b"\x00" * 20) == PaddingNegotiate(PaddingCommand.START, 1, 0x01020304)
    stop = encode_padding_negotiate(PaddingNegotiate(PaddingCommand.STOP, 0, 7, echo_request=True))
    assert stop == bytes([0, 1, 0, 1, 0, 0, 0, 7])


def test_negotiated_layout_is_the_trunnel_struct():
    message = PaddingNegotiated(PaddingCommand.STOP, PaddingResponse.OK, 0, 3)
    body = encode_padding_negotiated(message)
    assert body == bytes([0, 1, 1, 0, 0, 0, 0, 3])
    assert decode_padding_negotiated(body) == message
    assert decode_padding_negotiated(bytes([0, 2, 2, 1, 0, 0, 0, 1])) == PaddingNegotiated(
        PaddingCommand.START, PaddingResponse.ERR, 1, 1)


@pytest.mark.parametrize("body, why", [
    (bytes([0, 2, 1, 0, 0, 0, 0]), "needs 8"),
    (bytes([1, 2, 1, 0, 0, 0, 0, 1]), "unknown version 1"),
    (bytes([0, 3, 1, 0, 0, 0, 0, 1]), "unknown command 3"),
    (bytes([0, 2, 0, 0, 0, 0, 0, 1]), "unknown response 0"),
])
def test_malformed_negotiated_is_a_cell_parse_error(body, why):
    with pytest.raises(CellParseError, match=why):
        decode_padding_negotiated(body)


def test_malformed_negotiate_is_a_cell_parse_error():
    with pytest.raises(CellParseError, match="echo_request 2"):
        decode_padding_negotiate(bytes([0, 2, 1, 2, 0, 0, 0, 1]))
    with pytest.raises(ValueError):
        encode_padding_negotiate(PaddingNegotiate(PaddingCommand.START, 256, 1))


# ------------------------------------------------------------------------------ the machines


def test_rend_machine_sends_one_padding_cell_within_a_millisecond_then_ends():
    machine = PaddingMachine(CLIENT_REND_MACHINE, 1, random.Random(5))
    assert machine.state is MachineState.START
    delay = machine.on_nonpadding_sent()  # the PADDING_NEGOTIATE itself
    assert machine.state is MachineState.OBFUSCATE_CIRC_SETUP and machine.state_length == 1
    assert delay is not None and 0 <= delay < 1000
    assert machine.on_padding_sent() is None
    assert machine.ended and machine.padding_sent == 1
    assert machine.on_nonpadding_sent() is None and machine.ended  # later cells change nothing


def test_rend_machine_ends_on_the_middles_padding_too():
    machine = PaddingMachine(CLIENT_REND_MACHINE, 1, random.Random(1))
    machine.on_nonpadding_sent()
    assert machine.on_padding_received() is None and machine.ended


def test_rend_machine_state_length_is_always_one():
    for seed in range(50):
        machine = PaddingMachine(CLIENT_REND_MACHINE, 1, random.Random(seed))
        machine.on_nonpadding_sent()
        assert machine.state_length == 1


def test_intro_machine_never_pads_and_waits_for_the_middle():
    machine = PaddingMachine(CLIENT_INTRO_MACHINE, 1, random.Random(2))
    assert machine.transition(PaddingEvent.PADDING_RECV) is None and machine.state is MachineState.START
    assert machine.on_nonpadding_sent() is None
    assert machine.state is MachineState.OBFUSCATE_CIRC_SETUP and machine.state_length is None
    for _ in range(10):
        assert machine.on_padding_received() is None
        assert machine.on_nonpadding_sent() is None
    assert machine.state is MachineState.OBFUSCATE_CIRC_SETUP and machine.padding_sent == 0


def test_padding_limit_is_the_machines_count_then_percent():
    machine = PaddingMachine(CLIENT_REND_MACHINE, 1, random.Random(0))
    assert not machine.reached_padding_limit()
    machine.padding_sent, machine.nonpadding_sent = 1, 0
    assert machine.reached_padding_limit()  # 100 % once the one allowed cell is out
    machine.padding_sent, machine.nonpadding_sent = 1, 99
    assert not machine.reached_padding_limit()  # 1 %
    machine.padding_sent, machine.nonpadding_sent = 2, 50
    assert machine.reached_padding_limit()


def test_hs_states_map_to_tor_purposes():
    assert purpose_for_hs_state("HSCI_INTRO_SENT") is PaddingPurpose.INTRODUCE_ACK_WAIT
    assert purpose_for_hs_state("HSCR_ESTABLISHED_IDLE") is PaddingPurpose.REND_READY
    assert purpose_for_hs_state(None) is PaddingPurpose.OTHER


# ------------------------------------------------------------------------------ on a circuit


MAX_DIRTINESS = 600.0


def relay(n: int) -> RelayTarget:
    return RelayTarget(f"relay{n}", bytes([n]) * 20, "127.0.0.1", 9000 + n, b"k" * 32, None)


@dataclass
class Listed:
    protocols: dict

    def supports_protocol(self, name: str, version: int) -> bool:
        return version in self.protocols.get(name, ())


@dataclass
class Consensus:
    params: dict = field(default_factory=dict)

    def param(self, name, default, low=None, high=None):
        return min(max(self.params.get(name, default), low), high)


@dataclass
class NetDir:
    consensus: Consensus
    padding_relays: set

    def relay_by_id(self, rsa_id):
        return Listed({"Padding": {2} if rsa_id in self.padding_relays else {1}})


@dataclass
class Directory:
    netdir: NetDir


@dataclass
class Options:
    circuit_padding: bool = True
    reduced_circuit_padding: bool = False


class Host:
    """A three-hop circuit's sending side, recording what the padding sends and whether it closed it."""

    def __init__(self) -> None:
        self.path = [relay(1), relay(2), relay(3)]
        self.hops_built = 3
        self.sent: list[tuple[int, bytes, int]] = []
        self.closed: tuple[int, str] | None = None
        self.padding: CircuitPadding | None = None

    def send_relay(self, command, stream_id, data, hop=None, early=False):
        self.sent.append((int(command), bytes(data), hop))
        if command != RelayCommand.DROP and self.padding is not None:
            self.padding.nonpadding_sent()

    def close(self, reason=DestroyReason.FINISHED, message="closed"):
        if self.padding.holds_open(reason, message):
            return
        self.closed = (reason, message)
        self.padding.circuit_closed()


def padded(options=None, params=None, middle_pads=True, seed=3):
    host, clock = Host(), task.Clock()
    netdir = NetDir(Consensus(params or {}), {relay(2).rsa_id} if middle_pads else set())
    gate = PaddingGate(options or DefaultCircuitPaddingOptions(), Directory(netdir))
    host.padding = CircuitPadding(host, gate, clock, purpose=PaddingPurpose.OTHER, rng=random.Random(seed),
                                  max_dirtiness=MAX_DIRTINESS, label="circuit 1")
    return host, host.padding, clock


def negotiated(command, response, machine, counter):
    return encode_padding_negotiated(PaddingNegotiated(command, response, machine, counter))


def test_rend_circuit_negotiates_with_the_middle_and_sends_one_drop():
    host, padding, clock = padded()
    padding.purpose_changed(PaddingPurpose.ESTABLISH_REND)
    assert host.sent == []
    padding.purpose_changed(PaddingPurpose.REND_READY)
    start = encode_padding_negotiate(PaddingNegotiate(PaddingCommand.START, CLIENT_REND_MACHINE.number, 1))
    assert host.sent == [(RelayCommand.PADDING_NEGOTIATE, start, 1)]
    clock.advance(0.001)
    assert host.sent[1] == (RelayCommand.DROP, b"", 1)
    padding.negotiated_received(1, negotiated(PaddingCommand.START, PaddingResponse.OK, 1, 1))
    padding.drop_received(1)
    assert (padding.counters.negotiated_ok, padding.counters.drops_received, padding.counters.drops_sent) == (1, 1, 1)
    for purpose in (PaddingPurpose.REND_READY_INTRO_ACKED, PaddingPurpose.REND_JOINED):
        padding.purpose_changed(purpose)
    clock.advance(10)
    assert len(host.sent) == 2 and padding.machine.ended  # no STOP: the machine stays, ended, as tor's


def test_intro_circuit_is_held_open_until_the_middle_stops_padding_then_for_max_circuit_dirtiness():
    host, padding, clock = padded()
    padding.purpose_changed(PaddingPurpose.INTRODUCING)
    assert host.sent == []
    padding.purpose_changed(PaddingPurpose.INTRODUCE_ACK_WAIT)  # INTRODUCE1 has gone out
    start = encode_padding_negotiate(PaddingNegotiate(PaddingCommand.START, CLIENT_INTRO_MACHINE.number, 1))
    assert host.sent == [(RelayCommand.PADDING_NEGOTIATE, start, 1)]
    padding.negotiated_received(1, negotiated(PaddingCommand.START, PaddingResponse.OK, 0, 1))
    padding.purpose_changed(PaddingPurpose.INTRODUCE_ACKED)
    host.close(DestroyReason.FINISHED, "introduction done")
    assert host.closed is None and padding.holding and padding.purpose is PaddingPurpose.CIRCUIT_PADDING
    for _ in range(8):
        padding.drop_received(1)
    padding.drop_received(2)  # from the introduction point: not padding we asked for
    clock.advance(60)
    assert host.closed is None and len(host.sent) == 1  # the client itself never pads here
    padding.negotiated_received(1, negotiated(PaddingCommand.STOP, PaddingResponse.OK, 0, 1))
    assert padding.machine is None and host.closed is None
    host.close(DestroyReason.FINISHED, "expired")  # a second close meanwhile is put off too
    clock.advance(MAX_DIRTINESS - 60 - 1)
    assert host.closed is None
    clock.advance(1)
    assert host.closed == (DestroyReason.FINISHED, "introduction done")
    assert (padding.counters.drops_received, padding.counters.unexpected_drops) == (8, 1)
    assert clock.getDelayedCalls() == []


def test_a_held_circuit_whose_middle_goes_silent_closes_after_tors_bound():
    host, padding, clock = padded()
    padding.purpose_changed(PaddingPurpose.INTRODUCE_ACK_WAIT)
    host.close()
    clock.advance(CIRCPAD_DELAY_MAX_SECS - 1)
    padding.drop_received(1)
    clock.advance(CIRCPAD_DELAY_MAX_SECS - 1)
    assert host.closed is None
    clock.advance(1)
    assert host.closed is not None


def test_an_error_close_is_not_held():
    host, padding, clock = padded()
    padding.purpose_changed(PaddingPurpose.INTRODUCE_ACK_WAIT)
    host.close(DestroyReason.PROTOCOL, "bad")
    assert host.closed == (DestroyReason.PROTOCOL, "bad")


def test_a_purpose_the_machine_neither_applies_to_nor_keeps_sends_stop():
    host, padding, clock = padded()
    padding.purpose_changed(PaddingPurpose.INTRODUCE_ACK_WAIT)
    padding.purpose_changed(PaddingPurpose.INTRODUCING)  # tor: the intro circuit re-extends after a NACK
    stop = encode_padding_negotiate(PaddingNegotiate(PaddingCommand.STOP, CLIENT_INTRO_MACHINE.number, 1))
    assert host.sent[-1] == (RelayCommand.PADDING_NEGOTIATE, stop, 1) and padding.machine is None
    padding.negotiated_received(1, negotiated(PaddingCommand.STOP, PaddingResponse.OK, 0, 1))
    padding.purpose_changed(PaddingPurpose.INTRODUCE_ACK_WAIT)  # a new machine, counter 2
    again = encode_padding_negotiate(PaddingNegotiate(PaddingCommand.START, CLIENT_INTRO_MACHINE.number, 2))
    assert host.sent[-1] == (RelayCommand.PADDING_NEGOTIATE, again, 1)
    padding.negotiated_received(1, negotiated(PaddingCommand.STOP, PaddingResponse.OK, 0, 1))  # the old one's
    assert padding.machine is not None and padding.machine.counter == 2


def test_a_refusal_frees_the_machine_and_stops_negotiating():
    host, padding, clock = padded()
    padding.purpose_changed(PaddingPurpose.REND_READY)
    padding.negotiated_received(1, negotiated(PaddingCommand.START, PaddingResponse.ERR, 1, 1))
    assert padding.machine is None and padding.negotiation_failed
    padding.purpose_changed(PaddingPurpose.REND_JOINED)
    assert sum(command == RelayCommand.PADDING_NEGOTIATE for command, _, _ in host.sent) == 1


@pytest.mark.parametrize("options, params, middle_pads", [
    (Options(circuit_padding=False), {}, True),
    (Options(reduced_circuit_padding=True), {}, True),
    (Options(), {"circpad_padding_disabled": 1}, True),
    (Options(), {"circpad_padding_reduced": 1}, True),
    (Options(), {}, False),
])
def test_nothing_is_negotiated_when_padding_is_off_or_the_middle_lacks_padding_2(options, params, middle_pads):
    host, padding, clock = padded(options, params, middle_pads)
    for purpose in (PaddingPurpose.REND_READY, PaddingPurpose.INTRODUCE_ACK_WAIT):
        padding.purpose_changed(purpose)
    clock.advance(1)
    assert host.sent == [] and padding.counters.negotiations_sent == 0


def test_padding_turned_off_after_negotiation_sends_no_drop():
    options = Options()
    host, padding, clock = padded(options)
    options.circuit_padding = False  # SETCONF CircuitPadding 0 between the negotiation and the padding
    padding.purpose_changed(PaddingPurpose.REND_READY)
    clock.advance(1)
    assert [command for command, _, _ in host.sent] == []
    options.circuit_padding = True
    padding.purpose_changed(PaddingPurpose.REND_READY)
    clock.advance(1)
    assert [command for command, _, _ in host.sent] == [RelayCommand.PADDING_NEGOTIATE, RelayCommand.DROP]


def test_negotiated_from_another_hop_or_malformed_is_ignored():
    host, padding, clock = padded()
    padding.purpose_changed(PaddingPurpose.REND_READY)
    padding.negotiated_received(2, negotiated(PaddingCommand.START, PaddingResponse.ERR, 1, 1))
    padding.negotiated_received(1, b"\x00\x02")
    assert padding.machine is not None and not padding.negotiation_failed


# ------------------------------------------------------------------------------ through the circuit manager
# The circuit's cells go through relaysim's simulated relays (tor1 crypto of their own), so what the padding
# sends is read as a relay would read it.


class PaddingNetDirPaths(PathChooser):
    """No path choice; a directory in which the relays in `padding_relays` list Padding=2."""

    def __init__(self, padding_relays: set) -> None:
        super().__init__()
        self._view = NetDir(Consensus(), padding_relays)

    @property
    def netdir(self):
        return self._view


def build_onion_circuit(purpose: CircuitPurpose, options=None, hs_state: str = "HSCI_CONNECTING"):
    clock = Clock()
    guard, middle, last = (SimulatedRelay(name) for name in ("guard", "middle", "last"))
    links = OneChannelLinks()
    manager = CircuitManager(links, PaddingNetDirPaths({middle.rsa_id}), reactor=clock, clock=clock.seconds,
                             preemptive_circuits=0, build_times=not_learning(clock), padding_options=options)
    managed = manager.launch(path=[guard.target, middle.target, last.target], purpose=purpose)
    managed.hs_state = hs_state
    path = SimulatedPath([guard, middle, last])
    answer_build(links.channel, path)
    return manager, managed, path, links.channel, clock


def relay_messages(channel, path):
    return [path.receive(payload) for _, _, payload in channel.take()]


def test_an_introduction_circuit_negotiates_with_its_middle_and_stays_open_for_its_padding():
    manager, managed, path, channel, clock = build_onion_circuit(CircuitPurpose.HS_CLIENT_INTRO)
    circuit = managed.circuit
    assert channel.take() == []
    circuit.send_relay(RelayCommand.INTRODUCE1, 0, b"introduce")
    managed.hs_state = "HSCI_INTRO_SENT"
    introduce, negotiate = relay_messages(channel, path)
    assert (introduce.hop, introduce.command) == (2, RelayCommand.INTRODUCE1)
    assert (negotiate.hop, negotiate.command) == (1, RelayCommand.PADDING_NEGOTIATE)
    assert decode_padding_negotiate(negotiate.data) == PaddingNegotiate(PaddingCommand.START, 0, 1)
    circuit.cell_received(CMD_RELAY, path.send(1, RelayCommand.PADDING_NEGOTIATED, 0,
                                               negotiated(PaddingCommand.START, PaddingResponse.OK, 0, 1)))
    circuit.cell_received(CMD_RELAY, path.send(2, RelayCommand.INTRODUCE_ACK, 0, b"\x00\x00\x00"))
    managed.hs_state = "HSCI_DONE"
    circuit.close(DestroyReason.FINISHED, "introduction done")
    for _ in range(7):
        circuit.cell_received(CMD_RELAY, path.send(1, RelayCommand.DROP))
    assert circuit.state is CircuitState.OPEN and channel.destroyed == []
    assert circuit.padding.counters.drops_received == 7
    circuit.cell_received(CMD_RELAY, path.send(1, RelayCommand.PADDING_NEGOTIATED, 0,
                                               negotiated(PaddingCommand.STOP, PaddingResponse.OK, 0, 1)))
    clock.advance(manager.max_circuit_dirtiness - 1)
    assert circuit.state is CircuitState.OPEN and channel.take() == []  # the client never pads here
    clock.advance(1)
    assert circuit.state is CircuitState.CLOSED and len(channel.destroyed) == 1


def test_a_rendezvous_circuit_sends_its_middle_one_drop_and_takes_one():
    manager, managed, path, channel, clock = build_onion_circuit(CircuitPurpose.HS_CLIENT_REND,
                                                                 hs_state="HSCR_CONNECTING")
    circuit = managed.circuit
    managed.hs_state = "HSCR_ESTABLISHED_IDLE"
    (negotiate,) = relay_messages(channel, path)
    assert decode_padding_negotiate(negotiate.data) == PaddingNegotiate(PaddingCommand.START, 1, 1)
    clock.advance(0.001)
    (drop,) = relay_messages(channel, path)
    assert (drop.hop, drop.command, drop.data) == (1, RelayCommand.DROP, b"")
    circuit.cell_received(CMD_RELAY, path.send(1, RelayCommand.PADDING_NEGOTIATED, 0,
                                               negotiated(PaddingCommand.START, PaddingResponse.OK, 1, 1)))
    circuit.cell_received(CMD_RELAY, path.send(1, RelayCommand.DROP))
    for state in ("HSCR_ESTABLISHED_WAITING", "HSCR_JOINED"):
        managed.hs_state = state
    clock.advance(60)
    assert channel.take() == [] and circuit.state is CircuitState.OPEN
    assert (circuit.padding.counters.negotiated_ok, circuit.padding.counters.drops_received) == (1, 1)


def test_circuit_padding_0_negotiates_nothing_on_either_circuit():
    for purpose, states in ((CircuitPurpose.HS_CLIENT_INTRO, ("HSCI_INTRO_SENT", "HSCI_DONE")),
                            (CircuitPurpose.HS_CLIENT_REND, ("HSCR_ESTABLISHED_IDLE", "HSCR_JOINED"))):
        manager, managed, path, channel, clock = build_onion_circuit(purpose, Options(circuit_padding=False))
        for state in states:
            managed.hs_state = state
        clock.advance(1)
        managed.circuit.close(DestroyReason.FINISHED, "done")
        assert channel.take() == [] and managed.circuit.state is CircuitState.CLOSED


def test_shutting_down_closes_a_circuit_held_for_padding():
    manager, managed, path, channel, clock = build_onion_circuit(CircuitPurpose.HS_CLIENT_INTRO)
    managed.hs_state = "HSCI_INTRO_SENT"
    managed.circuit.close(DestroyReason.FINISHED, "introduction done")
    assert managed.circuit.state is CircuitState.OPEN
    manager.close_all()
    assert managed.circuit.state is CircuitState.CLOSED and clock.getDelayedCalls() == []


def test_a_circuit_extended_by_a_controller_keeps_its_machine():
    manager, managed, path, channel, clock = build_onion_circuit(CircuitPurpose.HS_CLIENT_REND,
                                                                 hs_state="HSCR_ESTABLISHED_IDLE")
    padding = managed.circuit.padding
    (negotiate,) = relay_messages(channel, path)
    assert negotiate.command == RelayCommand.PADDING_NEGOTIATE
    clock.advance(0.001)
    (drop,) = relay_messages(channel, path)
    assert drop.command == RelayCommand.DROP
    extra = SimulatedRelay("extra")
    path.relays.append(extra)
    manager.extend_circuit(managed, [extra.target])
    ((_, _, payload),) = channel.take()
    managed.circuit.cell_received(CMD_RELAY, path.answer_extend2(path.receive(payload)))
    assert managed.is_open and managed.circuit.padding is padding and padding.machine.counter == 1
    clock.advance(1)
    assert channel.take() == []
