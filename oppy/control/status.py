"""oppy's circuits, streams and relays as the control port reports them (sans IO).

The circuit manager's objects (``ManagedCircuit``, ``ManagedStream``) and the directory's records
(``RelayRecord``, the guard sample) become the lines of ``GETINFO circuit-status``/``stream-status``,
``ns/*``, ``entry-guards`` and the ``CIRC``/``STREAM`` events, laid out as tor 0.4.9 writes them
(control_getinfo.c getinfo_helper_events, control_events.c, networkstatus.c routerstatus_format_entry,
entrynodes.c getinfo_helper_format_single_entry_guard). The trackers turn the manager's notifications,
which may repeat, into each state change reported exactly once, in tor's order.
"""

from __future__ import annotations

import base64
import time
from typing import Callable, Iterable

from oppy.circuit.manager import ManagedCircuit, ManagedStream
from oppy.control.events import (
    circ_event,
    circ_minor_event,
    circuit_reason_name,
    circuit_status_line,
    stream_event,
    stream_reason_name,
    stream_status_line,
)
from oppy.directory.service import BootstrapProblem
from oppy.netdoc.documents import RelayRecord

__all__ = [
    "FAKE_PUBLISHED_TIME",
    "circuit_path",
    "circuit_reasons",
    "circuit_getinfo_status",
    "circuit_status_entry",
    "stream_target",
    "stream_getinfo_status",
    "stream_getinfo_line",
    "stream_reasons",
    "CircuitEventTracker",
    "StreamEventTracker",
    "ns_entry",
    "entry_guard_line",
    "bootstrap_phase_text",
    "relays_ns_text",
]

# networkstatus.c: a microdesc consensus has no publication time, and tor writes this one in ns lines.
FAKE_PUBLISHED_TIME = "2038-01-01 00:00:00"
# routerstatus_format_entry: the ``r`` line's descriptor field is base64 of a 20-byte digest.
_DESCRIPTOR_DIGEST_LEN = 20
_ZERO_DIGEST = bytes(_DESCRIPTOR_DIGEST_LEN)

_STREAM_END_STATES = ("FAILED", "CLOSED")
_RESOLVE_KINDS = ("resolve", "resolve_ptr")


# --------------------------------------------------------------------------- circuits


def circuit_path(managed) -> list[tuple[str, str | None]]:
    """The hops built so far, as (fingerprint, nickname): tor lists only hops whose handshake is done."""
    hops = managed.path[: managed.hops_built]
    return [(hop.fingerprint, hop.nickname or None) for hop in hops]


def circuit_reasons(managed: ManagedCircuit) -> tuple[str | None, str | None]:
    """(REASON, REMOTE_REASON) of a failed or closed circuit: a relay's DESTROY or TRUNCATED is
    ``DESTROYED`` with the relay's reason as REMOTE_REASON, as tor reports it."""
    error = managed.error
    if error is None:
        return ("FINISHED", None)
    if error.remote:
        return ("DESTROYED", circuit_reason_name(error.reason))
    return (circuit_reason_name(error.reason), None)


def circuit_getinfo_status(managed) -> str:
    """The state ``GETINFO circuit-status`` gives: BUILT, EXTENDED once a hop is done, else LAUNCHED."""
    if managed.status.value in ("BUILT", "GUARD_WAIT"):
        return managed.status.value
    return "EXTENDED" if managed.hops_built else "LAUNCHED"


def circuit_status_entry(managed, status: str) -> str:
    """One circuit as a ``circuit-status`` line (the body of a CIRC event)."""
    reason = remote_reason = None
    if status in ("FAILED", "CLOSED"):
        reason, remote_reason = circuit_reasons(managed)
    return circuit_status_line(managed.number, status, circuit_path(managed), build_flags=managed.build_flags,
                               purpose=managed.purpose.controller_name, hs_state=managed.hs_state,
                               rend_query=managed.rend_query, time_created=managed.created_wallclock,
                               **conflux_fields(managed), reason=reason, remote_reason=remote_reason)


def conflux_fields(managed) -> dict[str, object]:
    """CONFLUX_ID and CONFLUX_RTT of a linked conflux leg (none for other circuits)."""
    status = managed.conflux_status
    return {} if status is None else {"conflux_id": status[0], "conflux_rtt": status[1]}


def purpose_changed_event(managed, old_purpose: str, old_hs_state: str | None) -> bytes:
    """``CIRC_MINOR ID PURPOSE_CHANGED ..`` for a circuit that moved to its next purpose or HS_STATE."""
    return circ_minor_event(managed.number, "PURPOSE_CHANGED", circuit_path(managed), old_purpose, old_hs_state,
                            build_flags=managed.build_flags, purpose=managed.purpose.controller_name,
                            hs_state=managed.hs_state, rend_query=managed.rend_query,
                            time_created=managed.created_wallclock)


class CircuitEventTracker:
    """Turns circuit notifications into CIRC events: LAUNCHED, EXTENDED once per hop, BUILT, FAILED,
    CLOSED, each once."""

    def __init__(self) -> None:
        self._reported: dict[int, tuple[str, int]] = {}

    def update(self, managed: ManagedCircuit) -> list[bytes]:
        status = managed.status.value
        number = managed.number
        last = self._reported.get(number)
        if last is None and status in ("FAILED", "CLOSED") and managed.hops_built == 0 \
                and managed.error is None:
            return []
        key = (status, managed.hops_built if status == "EXTENDED" else 0)
        if last == key:
            return []
        events = []
        if last is None and status != "LAUNCHED":
            events.append(self._event(managed, "LAUNCHED"))
        events.append(self._event(managed, status))
        if status == "CLOSED":
            self._reported.pop(number, None)
        else:
            self._reported[number] = key
        return events

    @staticmethod
    def _event(managed, status: str) -> bytes:
        reason = remote_reason = None
        if status in ("FAILED", "CLOSED"):
            reason, remote_reason = circuit_reasons(managed)
        path = circuit_path(managed) if status != "LAUNCHED" else []
        return circ_event(managed.number, status, path, build_flags=managed.build_flags,
                          purpose=managed.purpose.controller_name, hs_state=managed.hs_state,
                          rend_query=managed.rend_query, time_created=managed.created_wallclock,
                          **conflux_fields(managed), reason=reason, remote_reason=remote_reason)

    def forget_all(self) -> None:
        self._reported.clear()


# --------------------------------------------------------------------------- streams


def stream_target(managed) -> tuple[str, int]:
    stream = managed.stream
    return (stream.host, stream.port)


def _circuit_number(managed: ManagedStream) -> int:
    circuit = managed.managed_circuit
    return circuit.number if circuit is not None else 0


def _is_resolve(managed) -> bool:
    return managed.stream.kind.value in _RESOLVE_KINDS


def stream_getinfo_status(managed) -> str | None:
    """The state ``GETINFO stream-status`` gives, or None for a stream that is gone (tor lists
    waiting streams as NEW or NEWRESOLVE, and no closed ones)."""
    state = managed.stream.state.value
    if state in _STREAM_END_STATES:
        return None
    if state in ("NEW", "DETACHED"):
        return "NEWRESOLVE" if _is_resolve(managed) else "NEW"
    return state


def stream_getinfo_line(managed) -> str | None:
    status = stream_getinfo_status(managed)
    if status is None:
        return None
    circuit = _circuit_number(managed) if status in ("SENTCONNECT", "SENTRESOLVE", "SUCCEEDED") else 0
    return stream_status_line(managed.number, status, circuit, stream_target(managed))


def stream_reasons(managed) -> tuple[str | None, str | None]:
    """(REASON, REMOTE_REASON) of an ended stream: the exit's END is ``END`` plus its reason."""
    end = managed.stream.end
    if end is None:
        return (None, None)
    if end.remote:
        return ("END", stream_reason_name(end.reason))
    return (stream_reason_name(end.reason), None)


def _split_source(source: str | None) -> tuple[str, int] | None:
    if not source or ":" not in source:
        return None
    host, _, port = source.rpartition(":")
    if not port.isdigit():
        return None
    return (host.strip("[]"), int(port))


class StreamEventTracker:
    """Turns stream notifications into STREAM events in tor's order: NEW (or NEWRESOLVE), then
    CONTROLLER_WAIT while a controller must attach it, SENTCONNECT/SENTRESOLVE, SUCCEEDED,
    DETACHED before a retry, and FAILED (before connecting) followed by CLOSED."""

    def __init__(self) -> None:
        self._reported: dict[int, tuple[str, int]] = {}

    def update(self, managed) -> list[bytes]:
        number = managed.number
        state = managed.stream.state.value
        last = self._reported.get(number)
        events: list[bytes] = []
        if last is None:
            if state in _STREAM_END_STATES:
                return []  # already reported closed (the SOCKS layer notifies the end twice)
            new = "NEWRESOLVE" if _is_resolve(managed) else "NEW"
            source = _split_source(managed.source)
            events.append(stream_event(number, new, 0, stream_target(managed), source_addr=source,
                                       purpose="USER"))
            last = (new, 0)
        circuit = _circuit_number(managed)
        if state in ("SENTCONNECT", "SENTRESOLVE", "SUCCEEDED", "DETACHED"):
            if last != (state, circuit):
                events.append(stream_event(number, state, circuit, stream_target(managed)))
                last = (state, circuit)
        elif state in _STREAM_END_STATES:
            reason, remote_reason = stream_reasons(managed)
            if state == "FAILED":
                events.append(stream_event(number, "FAILED", circuit, stream_target(managed), reason=reason,
                                           remote_reason=remote_reason))
            events.append(stream_event(number, "CLOSED", circuit, stream_target(managed), reason=reason,
                                       remote_reason=remote_reason))
            self._reported.pop(number, None)
            return events
        if managed.awaiting_controller and state in ("NEW", "DETACHED") \
                and last[0] != "CONTROLLER_WAIT":
            events.append(stream_event(number, "CONTROLLER_WAIT", 0, stream_target(managed)))
            last = ("CONTROLLER_WAIT", 0)
        self._reported[number] = last
        return events

    @staticmethod
    def flow_event(managed, status: str) -> bytes:
        """The STREAM event of an XON or XOFF (control_event_stream_status with STREAM_EVENT_XOFF_SENT ...):
        the stream's id, the status, its circuit and target, nothing else; its state is unchanged."""
        return stream_event(managed.number, status, _circuit_number(managed), stream_target(managed))

    def forget_all(self) -> None:
        self._reported.clear()


# --------------------------------------------------------------------------- relays


def _b64_unpadded(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _descriptor_digest(relay: RelayRecord) -> bytes:
    """tor keeps the microdescriptor digest in the descriptor-digest field of a microdesc
    consensus entry; the ``r`` line shows its first 20 bytes."""
    digest = relay.microdesc_digest
    if not digest:
        return _ZERO_DIGEST
    try:
        raw = base64.b64decode(digest + "=" * (-len(digest) % 4))
    except ValueError:
        return _ZERO_DIGEST
    return raw[:_DESCRIPTOR_DIGEST_LEN].ljust(_DESCRIPTOR_DIGEST_LEN, b"\0")


def ns_entry(relay: RelayRecord) -> str:
    """One consensus entry in the ns format of ``GETINFO ns/*`` (``r``, ``a``, ``s``, ``w`` lines,
    each ending in a newline), as tor writes it for the control port."""
    lines = [f"r {relay.nickname} {_b64_unpadded(relay.rsa_id)} {_b64_unpadded(_descriptor_digest(relay))} "
             f"{FAKE_PUBLISHED_TIME} {relay.address} {relay.or_port} {relay.dir_port}"]
    for address, port in relay.ipv6_or_addresses:
        lines.append(f"a [{address}]:{port}")
    lines.append("s " + " ".join(sorted(relay.flags)) if relay.flags else "s")
    if relay.bandwidth is not None:
        lines.append(f"w Bandwidth={relay.bandwidth}" + (" Unmeasured=1" if relay.unmeasured else ""))
    return "".join(line + "\n" for line in lines)


def entry_guard_line(guard, nickname: str | None, now: Callable[[], float] = time.time) -> str:
    """One line of ``GETINFO entry-guards``: ``$FP~nick STATUS [ISOTIME]`` (``~nick`` when the nickname is
    known: from the consensus, or a bridge's descriptor), the status being ``up``, ``down`` (failing since),
    ``unusable`` (not listed) or ``never-connected``."""
    name = f"${guard.fingerprint}"
    if nickname is not None:
        name += f"~{nickname}"
    when = None
    if not guard.listed:
        status, when = "unusable", guard.unlisted_since
    elif guard.failing_since is not None:
        status, when = "down", guard.failing_since
    elif guard.last_tried is None:
        status = "never-connected"
    else:
        status = "up"
    if when:
        return f"{name} {status} {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(when))}\n"
    return f"{name} {status}\n"


def bootstrap_phase_text(percent: int, tag: str, summary: str, problem: BootstrapProblem | None = None) -> str:
    """``status/bootstrap-phase`` (and the STATUS_CLIENT BOOTSTRAP event body), as tor words it: NOTICE, or
    WARN with the last connection problem since the bootstrap moved (control_bootstrap.c
    control_event_bootstrap_problem)."""
    text = f'BOOTSTRAP PROGRESS={percent} TAG={tag} SUMMARY="{_escaped(summary)}"'
    if problem is None:
        return "NOTICE " + text
    warning = " ".join(problem.warning.split())       # one line
    return (f'WARN {text} WARNING="{_escaped(warning)}" REASON={problem.reason} COUNT={problem.count} '
            f"RECOMMENDATION={problem.recommendation} HOST={problem.host} HOSTADDR={problem.hostaddr}")


def _escaped(text: str) -> str:
    """A quoted control-port value's content: backslashes and quotes escaped."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def relays_ns_text(relays: Iterable[RelayRecord]) -> str:
    """Consensus entries in the ns format, one after another (``GETINFO ns/all``, NEWCONSENSUS)."""
    return "".join(ns_entry(relay) for relay in relays)
