"""Circuit-setup padding as a tor client runs it (padding-spec "Circuit-level padding" and its appendix on the
onion-service circuit setup machines; tor circuitpadding.c, circuitpadding_machines.c, proposal 302).

tor clients have two origin-side machines, both on machine index 0 and aimed at the middle relay (hop 2):

- ``client_ip_circ`` (machine 0) on an introduction circuit once INTRODUCE1 is sent: the client sends
  PADDING_NEGOTIATE, the middle answers and sends 7 to 9 DROP cells (its ``relay_ip_circ``), then a
  PADDING_NEGOTIATED STOP. The client sends no padding itself, but keeps the circuit open until the middle is done
  and then as long as a used circuit (MaxCircuitDirtiness): a short-lived circuit would give it away.
- ``client_rp_circ`` (machine 1) on a rendezvous circuit once RENDEZVOUS_ESTABLISHED arrived: PADDING_NEGOTIATE,
  then one DROP within 1 ms; the middle answers and sends one DROP.

Both are skipped when ``CircuitPadding 0``, ``ReducedCircuitPadding 1`` (neither machine is marked
reduced-padding-ok), the consensus's ``circpad_padding_disabled`` or ``circpad_padding_reduced``, or when the
middle relay does not list ``Padding=2``. :class:`PaddingMachine` is one machine's state machine;
:class:`CircuitPadding` negotiates and runs them on one circuit.
"""

from __future__ import annotations

import enum
import logging
import random
from dataclasses import dataclass, field
from typing import Mapping, Protocol

from oppy.cell.circuit_padding import (
    PaddingCommand,
    PaddingNegotiate,
    PaddingResponse,
    decode_padding_negotiated,
    encode_padding_negotiate,
)
from oppy.cell.commands import DestroyReason, RelayCommand
from oppy.cell.errors import CellParseError
from oppy.netdoc.relay import RelayTarget

log = logging.getLogger(__name__)

__all__ = ["CircuitPadding", "PaddingMachine", "MachineSpec", "PaddingPurpose", "PaddingEvent", "MachineState",
           "CLIENT_INTRO_MACHINE", "CLIENT_REND_MACHINE", "CLIENT_MACHINES", "PaddingGate", "CircuitPaddingOptions",
           "DefaultCircuitPaddingOptions", "purpose_for_hs_state"]

#: padding-spec "Circuit Padding Negotiation": relays advertise the onion-service setup machines as Padding=2.
PADDING_PROTOCOL = "Padding"
PADDING_MACHINES_CIRC_SETUP = 2
#: circuitpadding.h CIRCPAD_DELAY_MAX_SECS: a circuit held open for padding with no cell for this long is closed.
CIRCPAD_DELAY_MAX_SECS = (2 ** 32 - 1) // 1_000_000 + 1
#: circuitpadding.c circpad_marked_circuit_for_padding: the close reasons a padding machine may delay.
HOLDABLE_CLOSE_REASONS = frozenset((DestroyReason.NONE, DestroyReason.FINISHED))
#: circuitpadding_machines.h: the middle's intro machine sends between these many DROP cells (uniform, [7, 10)).
INTRO_MACHINE_MINIMUM_PADDING = 7
INTRO_MACHINE_MAXIMUM_PADDING = 10


class PaddingPurpose(enum.Enum):
    """tor's client circuit purposes that the padding machines' conditions name (or.h CIRCUIT_PURPOSE_C_*)."""

    INTRODUCING = "C_INTRODUCING"
    INTRODUCE_ACK_WAIT = "C_INTRODUCE_ACK_WAIT"
    INTRODUCE_ACKED = "C_INTRODUCE_ACKED"
    ESTABLISH_REND = "C_ESTABLISH_REND"
    REND_READY = "C_REND_READY"
    REND_READY_INTRO_ACKED = "C_REND_READY_INTRO_ACKED"
    REND_JOINED = "C_REND_JOINED"
    #: A circuit kept open after it was closed, for a machine still padding (C_CIRCUIT_PADDING).
    CIRCUIT_PADDING = "C_CIRCUIT_PADDING"
    OTHER = "other"


#: control-spec "CIRC" HS_STATE -> the purpose it stands for (tor circuit_purpose_to_controller_hs_state_string).
_PURPOSE_FOR_HS_STATE: Mapping[str | None, PaddingPurpose] = {
    "HSCI_CONNECTING": PaddingPurpose.INTRODUCING,
    "HSCI_INTRO_SENT": PaddingPurpose.INTRODUCE_ACK_WAIT,
    "HSCI_DONE": PaddingPurpose.INTRODUCE_ACKED,
    "HSCR_CONNECTING": PaddingPurpose.ESTABLISH_REND,
    "HSCR_ESTABLISHED_IDLE": PaddingPurpose.REND_READY,
    "HSCR_ESTABLISHED_WAITING": PaddingPurpose.REND_READY_INTRO_ACKED,
    "HSCR_JOINED": PaddingPurpose.REND_JOINED,
}


def purpose_for_hs_state(hs_state: str | None) -> PaddingPurpose:
    return _PURPOSE_FOR_HS_STATE.get(hs_state, PaddingPurpose.OTHER)


class MachineState(enum.IntEnum):
    """circuitpadding.h: the states these machines use (CIRCPAD_STATE_END is the last one)."""

    START = 0
    OBFUSCATE_CIRC_SETUP = 1
    END = 0xFFFF


class PaddingEvent(enum.Enum):
    """circuitpadding.h circpad_event_t: the events these two machines react to."""

    NONPADDING_SENT = "nonpadding_sent"
    PADDING_SENT = "padding_sent"
    PADDING_RECV = "padding_recv"
    LENGTH_COUNT = "length_count"


@dataclass(frozen=True)
class MachineSpec:
    """One origin-side machine (circpad_machine_spec_t), restricted to what tor's two client machines use: a
    START state and one OBFUSCATE_CIRC_SETUP state with an optional length and a one-bin delay histogram."""

    name: str
    #: machine_num: its place in tor's origin machine list, sent as machine_type.
    number: int
    #: target_hopnum: 1 is the guard, 2 the middle.
    target_hop: int
    apply_purposes: frozenset[PaddingPurpose]
    keep_purposes: frozenset[PaddingPurpose]
    transitions: Mapping[tuple[MachineState, PaddingEvent], MachineState]
    #: manage_circ_lifetime: the circuit stays open until the machine has ended.
    manage_circuit_lifetime: bool
    allowed_padding_count: int
    max_padding_percent: int
    #: OBFUSCATE_CIRC_SETUP's length in padding cells: uniform over [low, high) cells, truncated; None: no limit.
    state_length: tuple[int, int] | None
    #: OBFUSCATE_CIRC_SETUP's histogram, one bin [low, high) microseconds; None: it never pads.
    delay_usec: tuple[int, int] | None
    reduced_padding_ok: bool = False
    #: machine_index: both client machines use slot 0, so at most one runs on a circuit.
    machine_index: int = 0


_START, _OBFUSCATE, _END = MachineState.START, MachineState.OBFUSCATE_CIRC_SETUP, MachineState.END

#: circuitpadding_machines.c circpad_machine_client_hide_intro_circuits.
CLIENT_INTRO_MACHINE = MachineSpec(
    name="client_ip_circ", number=0, target_hop=2,
    apply_purposes=frozenset({PaddingPurpose.INTRODUCE_ACK_WAIT}),
    keep_purposes=frozenset({PaddingPurpose.INTRODUCE_ACKED, PaddingPurpose.CIRCUIT_PADDING}),
    transitions={(_START, PaddingEvent.NONPADDING_SENT): _OBFUSCATE},
    manage_circuit_lifetime=True, allowed_padding_count=INTRO_MACHINE_MAXIMUM_PADDING, max_padding_percent=1,
    state_length=None, delay_usec=None)

#: circuitpadding_machines.c circpad_machine_client_hide_rend_circuits.
CLIENT_REND_MACHINE = MachineSpec(
    name="client_rp_circ", number=1, target_hop=2,
    apply_purposes=frozenset({PaddingPurpose.REND_JOINED, PaddingPurpose.REND_READY,
                              PaddingPurpose.REND_READY_INTRO_ACKED}),
    keep_purposes=frozenset(),
    transitions={(_START, PaddingEvent.NONPADDING_SENT): _OBFUSCATE,
                 (_OBFUSCATE, PaddingEvent.PADDING_RECV): _END,
                 (_OBFUSCATE, PaddingEvent.LENGTH_COUNT): _END},
    manage_circuit_lifetime=False, allowed_padding_count=1, max_padding_percent=1,
    state_length=(1, 2), delay_usec=(0, 1000))

#: tor's origin_padding_machines, in registration order (circpad_machines_init).
CLIENT_MACHINES = (CLIENT_INTRO_MACHINE, CLIENT_REND_MACHINE)


class PaddingMachine:
    """One machine's runtime on a circuit (circpad_machine_runtime_t): its state, the length left in it and the
    padding/non-padding counts of its limits. Events go in; :meth:`transition` and :meth:`padding_sent` answer
    with the delay in microseconds after which a DROP cell is due (None: none scheduled)."""

    def __init__(self, spec: MachineSpec, counter: int, rng: random.Random) -> None:
        self.spec = spec
        #: machine_ctr: the circuit's count of machines set up, this one's number (0 means "any" on the wire).
        self.counter = counter
        self.rng = rng
        self.state = MachineState.START
        self.state_length: int | None = None  # None: infinite (CIRCPAD_STATE_LENGTH_INFINITE)
        self.padding_sent = 0
        self.nonpadding_sent = 0

    @property
    def ended(self) -> bool:
        return self.state is MachineState.END

    def transition(self, event: PaddingEvent) -> int | None:
        """circpad_machine_spec_transition: move on `event`; every transition, even to the same state,
        schedules padding."""
        if self.ended:
            return None
        target = self.spec.transitions.get((self.state, event))
        if target is None:
            return None
        if target is not self.state:
            self.state = target
            self._choose_state_length()
            if self.ended:
                return None
        return self._schedule()

    def on_nonpadding_sent(self) -> int | None:
        """circpad_cell_event_nonpadding_sent: a cell other than DROP went out on the circuit."""
        self.nonpadding_sent += 1
        if self.state_length == 0 and not self.ended:
            before = self.state
            delay = self.transition(PaddingEvent.LENGTH_COUNT)
            if self.state is not before:
                return delay
        return self.transition(PaddingEvent.NONPADDING_SENT)

    def on_padding_sent(self) -> int | None:
        """circpad_send_padding_cell_for_callback's accounting, then the PADDING_SENT (or length up) event."""
        if self.state_length is not None and self.state_length > 0:
            self.state_length -= 1
        self.padding_sent += 1
        if self.state_length == 0:
            return self.transition(PaddingEvent.LENGTH_COUNT)
        return self.transition(PaddingEvent.PADDING_SENT)

    def on_padding_received(self) -> int | None:
        return self.transition(PaddingEvent.PADDING_RECV)

    def reached_padding_limit(self) -> bool:
        """circpad_machine_reached_padding_limit (the machine's own limits; tor's global ones default to off)."""
        spec = self.spec
        if spec.max_padding_percent and self.padding_sent >= spec.allowed_padding_count:
            total = self.padding_sent + self.nonpadding_sent
            return 100 * self.padding_sent // total > spec.max_padding_percent
        return False

    def _choose_state_length(self) -> None:
        if self.state is not MachineState.OBFUSCATE_CIRC_SETUP or self.spec.state_length is None:
            self.state_length = None
            return
        low, high = self.spec.state_length
        self.state_length = max(0, int(self.rng.uniform(low, high)))

    def _schedule(self) -> int | None:
        """circpad_machine_schedule_padding: the delay of the next DROP, sampled from the state's histogram."""
        if self.ended or self.reached_padding_limit():
            return None
        delay = self.spec.delay_usec if self.state is MachineState.OBFUSCATE_CIRC_SETUP else None
        if delay is None or self.state_length == 0:
            return None  # an infinite delay: these machines have no transition on it
        low, high = delay
        return self.rng.randrange(low, high)


class PaddingHost(Protocol):
    """What the padding needs from its circuit (`oppy.circuit.circuit.Circuit`)."""

    path: list[RelayTarget]

    @property
    def hops_built(self) -> int: ...

    def send_relay(self, command: int, stream_id: int, data: bytes, hop: int | None = None,
                   early: bool = False) -> None: ...

    def close(self, reason: int = DestroyReason.FINISHED, message: str = "closed") -> None: ...


class CircuitPaddingOptions(Protocol):
    """The torrc options (`oppy.config.options.Config`, read live)."""

    circuit_padding: bool
    reduced_circuit_padding: bool


@dataclass(frozen=True)
class DefaultCircuitPaddingOptions:
    """tor's defaults: CircuitPadding 1, ReducedCircuitPadding 0."""

    circuit_padding: bool = True
    reduced_circuit_padding: bool = False


class NetDirView(Protocol):
    """Where the current network directory is read (`oppy.path.chooser.PathChooser`)."""

    @property
    def netdir(self): ...


class PaddingGate:
    """Whether padding may run: the torrc options and the consensus (circpad_new_consensus_params,
    circpad_is_padding_allowed, circpad_machine_conditions_apply), and whether a relay has the machines."""

    def __init__(self, options: CircuitPaddingOptions, directory: NetDirView) -> None:
        self.options = options
        self.directory = directory

    def _param(self, name: str) -> int:
        netdir = self.directory.netdir
        return netdir.consensus.param(name, 0, 0, 1) if netdir is not None else 0

    def padding_allowed(self) -> bool:
        return bool(self.options.circuit_padding) and not self._param("circpad_padding_disabled")

    def machine_allowed(self, spec: MachineSpec) -> bool:
        if not self.padding_allowed():
            return False
        reduced = self.options.reduced_circuit_padding or self._param("circpad_padding_reduced")
        return spec.reduced_padding_ok or not reduced

    def relay_supports_padding(self, relay: RelayTarget) -> bool:
        """circpad_node_supports_padding: the relay's consensus entry lists Padding=2."""
        netdir = self.directory.netdir
        listed = netdir.relay_by_id(relay.rsa_id) if netdir is not None else None
        return listed is not None and listed.supports_protocol(PADDING_PROTOCOL, PADDING_MACHINES_CIRC_SETUP)


@dataclass
class PaddingCounters:
    """What happened on one circuit, for the log and the tests."""

    negotiations_sent: int = 0
    negotiated_ok: int = 0
    negotiated_refused: int = 0
    stops_sent: int = 0
    stops_received: int = 0
    drops_sent: int = 0
    drops_received: int = 0
    unexpected_drops: int = 0


@dataclass
class _Hold:
    """A close request put off for padding: its reason and message, when it came, the timer that ends it."""

    reason: int
    message: str
    since: float
    timer: object = field(default=None)


class CircuitPadding:
    """The padding machines of one client circuit (tor's padding_machine[] / padding_info[] for index 0): it
    negotiates them with the target hop as the circuit's purpose changes, sends their DROP cells, takes the
    middle's DROP and PADDING_NEGOTIATED cells, and holds the circuit open while a machine says so."""

    def __init__(self, host: PaddingHost, gate: PaddingGate, reactor, *, purpose: PaddingPurpose,
                 rng: random.Random | None = None, machines: tuple[MachineSpec, ...] = CLIENT_MACHINES,
                 max_dirtiness: float, label: str = "circuit") -> None:
        self.host = host
        self.gate = gate
        self.reactor = reactor
        self.rng = rng or random.SystemRandom()
        self.machines = machines
        self.label = label
        self.max_dirtiness = max_dirtiness
        self.purpose = purpose
        #: padding_machine[0]: the machine negotiated last; kept after its runtime is freed until the answer.
        self.spec: MachineSpec | None = None
        #: padding_info[0]: the running machine.
        self.machine: PaddingMachine | None = None
        self.counter = 0  # padding_machine_ctr
        self.negotiation_failed = False
        self.counters = PaddingCounters()
        self._timer = None
        self._hold: _Hold | None = None
        self._closed = False

    # ------------------------------------------------------------------------------ conditions

    def purpose_changed(self, purpose: PaddingPurpose) -> None:
        """circpad_machine_event_circ_purpose_changed (and _circ_built): stop the machine whose conditions no
        longer hold, negotiate one that now applies."""
        self.purpose = purpose
        self._shutdown_old_machines()
        self._add_matching_machines()

    def _applies(self, spec: MachineSpec) -> bool:
        return (self.gate.machine_allowed(spec) and self.purpose in spec.apply_purposes
                and self.host.hops_built >= spec.target_hop)

    def _shutdown_old_machines(self) -> None:
        machine = self.machine
        if machine is None or self._applies(machine.spec) or self.purpose in machine.spec.keep_purposes:
            return
        self._free_machine()
        self._negotiate(machine.spec, PaddingCommand.STOP, machine.counter)

    def _add_matching_machines(self) -> None:
        if self.negotiation_failed or self.machine is not None or self._closed:
            return
        for spec in reversed(self.machines):  # the most recently added machine first, as tor
            if spec.machine_index != 0 or not self._applies(spec):
                continue
            if self.spec is not None and self.spec.target_hop != spec.target_hop:
                continue
            self._setup(spec)
            if self._negotiate(spec, PaddingCommand.START, self.counter):
                return
            log.info("%s: padding machine %s not negotiated", self.label, spec.name)
            self._free_machine()
            self.spec = None
            self.negotiation_failed = True
            return

    def _setup(self, spec: MachineSpec) -> None:
        """circpad_setup_machine_on_circ: the counter starts at 1 (0 means any machine) and skips 0 on wrap."""
        self.counter = (self.counter + 1) & 0xFFFFFFFF or 1
        self.spec = spec
        self.machine = PaddingMachine(spec, self.counter, self.rng)

    def _negotiate(self, spec: MachineSpec, command: PaddingCommand, counter: int) -> bool:
        """circpad_negotiate_padding: PADDING_NEGOTIATE to the target hop, if it is open and has Padding=2."""
        if self.host.hops_built < spec.target_hop or \
                not self.gate.relay_supports_padding(self.host.path[spec.target_hop - 1]):
            return False
        body = encode_padding_negotiate(PaddingNegotiate(command, spec.number, counter))
        log.info("%s: negotiating padding machine %s: %s, counter %d", self.label, spec.name, command.name,
                 counter)
        if command is PaddingCommand.START:
            self.counters.negotiations_sent += 1
        else:
            self.counters.stops_sent += 1
        self.host.send_relay(RelayCommand.PADDING_NEGOTIATE, 0, body, hop=spec.target_hop - 1)
        return True

    def _free_machine(self) -> None:
        self.machine = None
        self._cancel_timer()

    # ------------------------------------------------------------------------------ cell events

    def nonpadding_sent(self, count: int = 1) -> None:
        """Relay cells other than DROP went out on the circuit (PADDING_NEGOTIATE included)."""
        for _ in range(count):
            machine = self.machine
            if machine is None or machine.ended:
                return
            self._scheduled(machine.on_nonpadding_sent())

    def drop_received(self, hop: int) -> None:
        """A DROP cell from `hop` (0 is the guard): padding from the target hop is counted and fed to the
        machine; from another hop it is ignored (circpad_padding_is_from_expected_hop)."""
        if self.spec is None or hop != self.spec.target_hop - 1:
            self.counters.unexpected_drops += 1
            return
        self.counters.drops_received += 1
        log.info("%s: got a padding cell (DROP) from %s", self.label, self.host.path[hop].describe())
        if self._hold is not None and self.machine is not None:
            self._arm_hold_timer(CIRCPAD_DELAY_MAX_SECS, self._hold_expired)  # tor: last_cell_time_sec
        if self.machine is not None:
            self._scheduled(self.machine.on_padding_received())

    def negotiated_received(self, hop: int, data: bytes) -> None:
        """circpad_handle_padding_negotiated: the target hop's answer (or its STOP once its machine is done)."""
        if self.spec is None or hop != self.spec.target_hop - 1:
            log.info("%s: PADDING_NEGOTIATED from hop %d, not a padding hop: ignored", self.label, hop + 1)
            return
        try:
            answer = decode_padding_negotiated(data)
        except CellParseError as exc:
            log.info("%s: malformed PADDING_NEGOTIATED dropped: %s", self.label, exc)
            return
        if answer.command is PaddingCommand.STOP:
            self.counters.stops_received += 1
            log.info("%s: padding machine %d stopped by %s (counter %d) after %d padding cells", self.label,
                     answer.machine_type, self.host.path[hop].describe(), answer.machine_ctr,
                     self.counters.drops_received)
            self._free_matching(answer.machine_type, answer.machine_ctr)
        elif answer.response is PaddingResponse.ERR:
            self.counters.negotiated_refused += 1
            if self._free_matching(answer.machine_type, answer.machine_ctr):
                self.negotiation_failed = True
                log.info("%s: %s refused padding machine %d", self.label, self.host.path[hop].describe(),
                         answer.machine_type)
        else:
            self.counters.negotiated_ok += 1
            log.info("%s: padding machine %d negotiated with %s: PADDING_NEGOTIATED OK (counter %d)", self.label,
                     answer.machine_type, self.host.path[hop].describe(), answer.machine_ctr)

    def _free_matching(self, machine_type: int, counter: int) -> bool:
        """free_circ_machineinfos_with_machine_num: a counter of 0 matches any machine of that number."""
        if self.spec is None or self.spec.number != machine_type:
            return False
        if counter and self.machine is not None and self.machine.counter != counter:
            log.info("%s: padding stop for an old machine counter %d (now %d)", self.label, counter,
                     self.machine.counter)
            return False
        self._free_machine()
        self.spec = None
        self._release_hold()
        return True

    # ------------------------------------------------------------------------------ padding out

    def _scheduled(self, delay_usec: int | None) -> None:
        if delay_usec is None or self._closed:
            return
        if not self.gate.padding_allowed():
            log.info("%s: padding is disabled; not sending", self.label)
            return
        self._cancel_timer()
        if delay_usec <= 0:
            self._send_padding()
        else:
            self._timer = self.reactor.callLater(delay_usec / 1e6, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._send_padding()

    def _send_padding(self) -> None:
        """circpad_send_padding_cell_for_callback: a DROP to the target hop. tor does not cancel a scheduled
        padding cell when the machine reaches END meanwhile, so neither is it here."""
        spec = self.spec
        if self._closed or spec is None:
            return
        machine = self.machine
        self.counters.drops_sent += 1
        log.info("%s: sending a padding cell (DROP) to %s", self.label,
                 self.host.path[spec.target_hop - 1].describe())
        self.host.send_relay(RelayCommand.DROP, 0, b"", hop=spec.target_hop - 1)
        if machine is not None and self.machine is machine:
            self._scheduled(machine.on_padding_sent())

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    # ------------------------------------------------------------------------------ lifetime

    def holds_open(self, reason: int, message: str) -> bool:
        """circpad_marked_circuit_for_padding: a close for a normal reason waits while a machine that manages
        the circuit's lifetime has not ended. The circuit becomes a padding circuit, dirty from now on; once the
        machine is gone it closes when it has been dirty for MaxCircuitDirtiness, as tor's
        circuit_expire_old_circuits_clientside closes it."""
        if self._hold is not None:
            return not self._closed
        machine = self.machine
        if self._closed or reason not in HOLDABLE_CLOSE_REASONS or machine is None or machine.ended \
                or not machine.spec.manage_circuit_lifetime:
            return False
        log.info("%s: not closed yet: padding machine %s is still running", self.label, machine.spec.name)
        self._hold = _Hold(reason, message, self.reactor.seconds())
        self._arm_hold_timer(CIRCPAD_DELAY_MAX_SECS, self._hold_expired)
        self.purpose_changed(PaddingPurpose.CIRCUIT_PADDING)
        return True

    @property
    def holding(self) -> bool:
        return self._hold is not None

    def _arm_hold_timer(self, delay: float, then) -> None:
        hold = self._hold
        if hold.timer is not None and hold.timer.active():
            hold.timer.cancel()
        hold.timer = self.reactor.callLater(delay, then)

    def _hold_expired(self) -> None:
        """No cell for CIRCPAD_DELAY_MAX_SECS with the machine still running: tor gives up holding."""
        log.info("%s: padding machine silent for %d s: closing the circuit", self.label, CIRCPAD_DELAY_MAX_SECS)
        self._hold.timer = None
        self._free_machine()
        self._close_held()

    def _release_hold(self) -> None:
        """The machine is gone: the circuit closes once dirty for MaxCircuitDirtiness."""
        hold = self._hold
        if hold is None:
            return
        left = hold.since + self.max_dirtiness - self.reactor.seconds()
        if left <= 0:
            self._close_held()
            return
        log.info("%s: padding done; closing the circuit in %.0f s (MaxCircuitDirtiness)", self.label, left)
        self._arm_hold_timer(left, self._close_held)

    def _close_held(self) -> None:
        hold, self._hold = self._hold, None
        if hold.timer is not None and hold.timer.active():
            hold.timer.cancel()
        self.host.close(hold.reason, hold.message)

    def circuit_closed(self) -> None:
        """The circuit is gone: no timer outlives it."""
        self._closed = True
        self._free_machine()
        hold, self._hold = self._hold, None
        if hold is not None and hold.timer is not None and hold.timer.active():
            hold.timer.cancel()
