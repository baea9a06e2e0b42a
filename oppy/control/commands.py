"""The control port's commands, sans IO: SETCONF/RESETCONF, GETCONF, SETEVENTS, SIGNAL, EXTENDCIRCUIT,
ATTACHSTREAM, CLOSESTREAM, CLOSECIRCUIT, USEFEATURE, TAKEOWNERSHIP/DROPOWNERSHIP.

Each command takes the :class:`~oppy.control.session.ControlSession` that received it and answers
with the replies and error codes of tor 0.4.9 (control_cmd.c; /work/shared/docs/control-port-notes.md
lists what stem and nyx send). GETINFO is in :mod:`oppy.control.getinfo`, the sessions and their hub
in :mod:`oppy.control.session`.

Nothing here touches sockets or the reactor; what a command reads of oppy and changes in it goes
through the :class:`ControlBackend` interface and the typed views it hands out.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from oppy.circuit.manager import ManagedCircuit, ManagedStream
from oppy.config import OPTION_NAMES, Config, ConfigError, UnknownOptionError, ascii_lower, \
    canonical_option_name, parse_decimal
from oppy.control.codec import (
    ControlArguments,
    DataBlock,
    ascii_upper,
    encode_event,
    line_safe,
    parse_arguments,
    reply,
)
from oppy.control.events import SIGNAL_CANONICAL_NAMES, UnrecognizedEventError, parse_setevents
from oppy.control.status import relays_ns_text
from oppy.directory.service import BootstrapProblem
from oppy.doors.listeners import ListenError
from oppy.netdoc.documents import RelayRecord
from oppy.netdoc.netdir import NetDir
from oppy.netdoc.relay import RelayTarget
from oppy.path.chooser import PathChooser

if TYPE_CHECKING:
    from oppy.control.session import ControlSession

__all__ = [
    "COMMANDS",
    "ControlBackend",
    "CircuitManagerView",
    "DirectoryView",
    "SetconfError",
    "apply_setconf",
    "TOR_CLIENT_DEFAULTS",
    "event_for_new_consensus",
]

log = logging.getLogger(__name__)

# control-spec "Replies".
OK = 250
UNRECOGNIZED_COMMAND = 510
BAD_SYNTAX = 512
UNRECOGNIZED_ARGUMENT = 513
INTERNAL_ERROR = 551
UNRECOGNIZED_ENTITY = 552
INVALID_CONFIG_VALUE = 553
NOT_MANAGED = 555

# tor's 0..255 END reasons (control_cmd.c handle_control_closestream).
MAX_END_REASON = 255
# INT_MAX, the bound of ATTACHSTREAM's HOP= (tor_parse_ulong(..., INT_MAX)).
MAX_HOP = 2**31 - 1
# control_getinfo.c features/names.
FEATURE_NAMES = ("VERBOSE_NAMES", "EXTENDED_EVENTS")
# control_events.c get_bw_samples: bw-event-cache holds up to this many one-second samples.
BW_EVENT_CACHE_LEN = 300

# tor options oppy does not implement but that controllers (nyx above all) read: GETCONF answers
# them with the value a tor client has by default (tor's config.c option_vars_; [] = unset).
# name -> (tor's type name, values).
TOR_CLIENT_DEFAULTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "AccountingMax": ("DataSize", ("0",)),
    "AccountingStart": ("String", ()),
    "Address": ("LineList", ()),
    "BandwidthBurst": ("DataSize", ("1073741824",)),
    "BandwidthRate": ("DataSize", ("1073741824",)),
    "BridgeRelay": ("Boolean", ("0",)),
    "ClientOnly": ("Boolean", ("0",)),
    "ConnLimit": ("Integer", ("1000",)),
    "ContactInfo": ("String", ()),
    "ControlPortFileGroupReadable": ("Boolean", ("0",)),
    "ControlPortWriteToFile": ("Filename", ()),
    "ControlSocket": ("LineList", ()),
    "CookieAuthFileGroupReadable": ("Boolean", ("0",)),
    "DirPort": ("LineList", ()),
    "DirPortFrontPage": ("Filename", ()),
    "DisableDebuggerAttachment": ("Boolean", ("1",)),
    "DisableNetwork": ("Boolean", ("0",)),
    "EntryNodes": ("RouterList", ()),
    "ExcludeExitNodes": ("RouterList", ()),
    "ExcludeNodes": ("RouterList", ()),
    "ExitNodes": ("RouterList", ()),
    "ExitPolicy": ("LineList", ()),
    "ExitPolicyRejectPrivate": ("Boolean", ("1",)),
    "ExitRelay": ("Boolean+Auto", ("auto",)),
    "FetchDirInfoEarly": ("Boolean", ("0",)),
    "FetchUselessDescriptors": ("Boolean", ("0",)),
    "HiddenServiceOptions": ("Virtual", ()),
    "MaxAdvertisedBandwidth": ("DataSize", ("1073741824",)),
    "MyFamily": ("LineList", ()),
    "NATDPort": ("LineList", ()),
    "Nickname": ("String", ()),
    "NumEntryGuards": ("Integer", ("0",)),
    "ORPort": ("LineList", ()),
    "PublishServerDescriptor": ("CommaList", ("1",)),
    "RelayBandwidthBurst": ("DataSize", ("0",)),
    "RelayBandwidthRate": ("DataSize", ("0",)),
    "RunAsDaemon": ("Boolean", ("0",)),
    "StrictNodes": ("Boolean", ("0",)),
    "TransPort": ("LineList", ()),
    "UseEntryGuards": ("Boolean", ("1",)),
    "UseMicrodescriptors": ("Boolean+Auto", ("auto",)),
    "User": ("String", ()),
}
_TOR_DEFAULTS_BY_LOWER = {name.lower(): name for name in TOR_CLIENT_DEFAULTS}
# control-spec SETCONF / tor control_setconf_helper: options that were set but could not be acted on (a
# listener port that cannot be bound) are put back, with this answer.
LISTENER_BIND_FAILED = "Unable to set option: Failed to bind one of the listener ports."


# --------------------------------------------------------------------------- the backend


@runtime_checkable
class CircuitManagerView(Protocol):
    """What control reads of the circuit manager (:class:`~oppy.circuit.manager.CircuitManager`):
    its circuits and streams by number, and whether a circuit was ever built."""

    circuits: Mapping[int, ManagedCircuit]
    streams: Mapping[int, ManagedStream]

    @property
    def circuit_established(self) -> bool: ...


@runtime_checkable
class DirectoryView(Protocol):
    """What control reads of the directory (:class:`~oppy.directory.service.DirectoryService`): the
    :class:`~oppy.netdoc.netdir.NetDir` in use (None before the first), and how far the bootstrap is."""

    netdir: NetDir | None
    enough_dir_info: bool

    @property
    def bootstrap_phase(self) -> tuple[int, str, str]: ...

    @property
    def bootstrap_problem(self) -> BootstrapProblem | None: ...


@runtime_checkable
class ControlBackend(Protocol):
    """What the commands read from and do to a running oppy. The daemon's implementation is
    ``oppy.control.backend.DaemonBackend``; tests provide their own. ``config`` is the live
    :class:`~oppy.config.Config`, ``paths`` the :class:`~oppy.path.chooser.PathChooser` (whose
    ``guards`` GETINFO entry-guards lists)."""

    config: Config
    manager: CircuitManagerView
    directory: DirectoryView
    paths: PathChooser

    def launch_circuit(self, path: list[RelayTarget] | None, purpose: str) -> int:
        """Build a circuit (through ``path``, or one oppy picks) with purpose GENERAL or CONTROLLER;
        returns its number. Raises if no circuit can be started."""
        raise NotImplementedError

    def extend_circuit(self, managed_circuit: ManagedCircuit, path: list[RelayTarget]) -> None:
        """EXTENDCIRCUIT on a built circuit: add the hops of ``path`` after its last one. Raises when it
        cannot (the circuit is not open, or carries streams)."""
        raise NotImplementedError

    def attach_stream(self, managed_stream: ManagedStream, managed_circuit: ManagedCircuit | None,
                      hop: int | None = None) -> None:
        """ATTACHSTREAM: put a waiting (or connecting) stream on a circuit, exiting from its ``hop`` (1-based;
        None: the last), or on one oppy picks (None)."""
        raise NotImplementedError

    def close_stream(self, managed_stream: ManagedStream, reason: int) -> None:
        raise NotImplementedError

    def close_circuit(self, number: int) -> None:
        raise NotImplementedError

    def find_relay(self, name: str) -> RelayTarget | None:
        """A relay named by ``$FP``, ``$FP~nick``, ``$FP=nick``, ``FP`` or a nickname, or None."""
        raise NotImplementedError

    def microdesc_body(self, digest: str) -> str | None:
        return None

    def listeners(self, kind: str) -> list[tuple[str, int]]:
        """Bound addresses of the ``socks``/``control``/... listeners."""
        return []

    def traffic(self) -> tuple[int, int]:
        """Bytes read and written by oppy's links since it started."""
        return (0, 0)

    def bandwidth_history(self) -> Sequence[tuple[int, int]]:
        """The last seconds' (read, written) samples, oldest first."""
        return ()

    def orconn_lines(self) -> list[str]:
        return []

    def uptime(self) -> int:
        return 0

    def config_file(self) -> str | None:
        return None

    def circuit_established(self) -> bool:
        return False

    def is_dormant(self) -> bool:
        return False

    def signal(self, name: str) -> None:
        """Act on a SIGNAL (canonical name: NEWNYM, RELOAD, SHUTDOWN, HALT, ...)."""
        raise NotImplementedError

    def options_changed(self, names: Sequence[str]) -> None:
        """Options were changed by SETCONF/RESETCONF: make the running daemon follow them."""


# --------------------------------------------------------------------------- SETCONF


class SetconfError(ValueError):
    """SETCONF/RESETCONF failed; ``code`` and ``message`` make tor's reply."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def apply_setconf(config: Config, pairs: Sequence[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """Apply SETCONF pairs to ``config``, all or nothing (tor's options_trial_assign). Returns the
    CONF_CHANGED lines: (option, value) for every value of each option that changed, (option, None)
    for one now unset. Raises :class:`SetconfError` with tor's code and text."""
    for key, _ in pairs:
        lowered = ascii_lower(key)
        if lowered in _TOR_DEFAULTS_BY_LOWER:
            raise SetconfError(INVALID_CONFIG_VALUE, f"Unable to set option: oppy does not implement "
                                                     f"{_TOR_DEFAULTS_BY_LOWER[lowered]}")
    trial = dataclasses.replace(config)
    try:
        trial.set_options(pairs)
    except UnknownOptionError as exc:
        raise SetconfError(UNRECOGNIZED_ENTITY, f"Unrecognized option: {exc}") from None
    except ConfigError as exc:
        text = str(exc)
        if text.startswith("While "):
            raise SetconfError(INVALID_CONFIG_VALUE, f"Transition not allowed: {text}") from None
        raise SetconfError(UNRECOGNIZED_ARGUMENT, f"Unacceptable option value: {text}") from None
    changed_names = [name for name in OPTION_NAMES if trial.get_option(name) != config.get_option(name)]
    config.set_options(pairs)
    lines: list[tuple[str, str | None]] = []
    for name in changed_names:
        values = config.get_option(name)
        if values:
            lines.extend((name, value) for value in values)
        else:
            lines.append((name, None))
    return lines


def _ok() -> bytes:
    return reply(OK, ["OK"])


def _error(code: int, message: str) -> bytes:
    return reply(code, [line_safe(message)])


# --------------------------------------------------------------------------- the commands

def _positional_only(args: str) -> ControlArguments:
    return parse_arguments(args)


def _run_getconf(session: ControlSession, args: ControlArguments, after) -> bytes:
    config = session.hub.backend.config
    answers: list[str] = []
    unrecognized: list[str] = []
    for key in args.positional:
        try:
            name = canonical_option_name(key)
            values = config.get_option(name)
        except ConfigError:
            name = _TOR_DEFAULTS_BY_LOWER.get(ascii_lower(key))
            if name is None:
                unrecognized.append(line_safe(f'Unrecognized configuration key "{key}"'))
                continue
            values = list(TOR_CLIENT_DEFAULTS[name][1])
        if values:
            answers.extend(f"{name}={value}" for value in values)
        else:
            answers.append(name)
    if unrecognized:
        return reply(UNRECOGNIZED_ENTITY, unrecognized)
    return reply(OK, answers or ["OK"])


def _parse_setconf(args: str) -> ControlArguments:
    return parse_arguments(args, max_positional=0, keywords=True, valueless=True, quoting="cstring")


def _run_setconf(session: ControlSession, args: ControlArguments, after) -> bytes:
    pairs = [(item.key, item.value) for item in args.keywords if item.key is not None]
    backend = session.hub.backend
    before = dataclasses.replace(backend.config)
    try:
        changes = apply_setconf(backend.config, pairs)
    except SetconfError as error:
        log.warning("Controller gave us config lines that didn't validate: %s", error.message.split(": ", 1)[-1])
        return _error(error.code, error.message)
    if changes:
        names = list(dict.fromkeys(name for name, _ in changes))
        try:
            backend.options_changed(names)
        except ListenError as exc:
            log.warning("%s", exc)
            backend.config.set_options((name, value) for name in names for value in before.get_option(name) or [None])
            backend.options_changed(names)
            return _error(INVALID_CONFIG_VALUE, LISTENER_BIND_FAILED)
        session.hub.conf_changed(changes)
    return _ok()


def _run_setevents(session: ControlSession, args: ControlArguments, after) -> bytes:
    try:
        wanted = parse_setevents(" ".join(args.positional))
    except UnrecognizedEventError as error:
        return _error(UNRECOGNIZED_ENTITY, error.message)
    session.events = wanted
    session.hub.subscriptions_changed()
    return _ok()


def _parse_signal(args: str) -> ControlArguments:
    return parse_arguments(args, min_positional=1, max_positional=1)


def _run_signal(session: ControlSession, args: ControlArguments, after) -> bytes:
    name = args.positional[0]
    canonical = SIGNAL_CANONICAL_NAMES.get(ascii_upper(name))
    if canonical is None:
        return _error(UNRECOGNIZED_ENTITY, f'Unrecognized signal code "{name}"')

    def act() -> None:
        session.hub.backend.signal(canonical)
        session.hub.signal_sent(canonical)

    after.append(act)  # tor answers first, then acts (a SHUTDOWN must not swallow the 250)
    return _ok()


def _parse_extendcircuit(args: str) -> ControlArguments:
    return parse_arguments(args, min_positional=1, max_positional=1, keywords=True, valueless=True, quoting=None)


_PURPOSES = {"general": "GENERAL", "controller": "CONTROLLER"}


def _run_extendcircuit(session: ControlSession, args: ControlArguments, after) -> bytes:
    circ_id = args.positional[0]
    keywords = list(args.keywords)
    path_text = None
    if keywords:
        first = keywords[0]
        if first.value is None:
            path_text = first.key
            keywords = keywords[1:]
        elif first.key is not None and first.key.startswith("$"):
            path_text = f"{first.key}={first.value}"
            keywords = keywords[1:]
    purpose = "GENERAL"
    for item in keywords:
        if item.key is not None and ascii_upper(item.key) == "PURPOSE" and item.value is not None:
            value = ascii_lower(item.value)
            if value.startswith("purpose="):
                value = value[len("purpose="):]
            purpose = _PURPOSES.get(value)
            if purpose is None:
                return _error(UNRECOGNIZED_ENTITY, f'Unknown purpose "{item.value}"')
            break
    backend = session.hub.backend
    is_new = circ_id == "0"
    if is_new and path_text is None:
        try:
            number = backend.launch_circuit(None, purpose)
        except Exception as exc:  # no consensus, no path
            log.info("controller asked for a circuit: %s", exc)
            return _error(INTERNAL_ERROR, "Couldn't start circuit")
        return reply(OK, [f"EXTENDED {number}"])
    existing = None if is_new else session.find_circuit(circ_id)
    if not is_new and existing is None:
        return _error(UNRECOGNIZED_ENTITY, f'Unknown circuit "{circ_id}"')
    if path_text is None:
        return _error(BAD_SYNTAX, "syntax error: path required.")
    path = []
    for name in path_text.split(","):
        relay = backend.find_relay(name)
        if relay is None:
            return _error(UNRECOGNIZED_ENTITY, f'No such router "{name}"')
        if relay.ntor_onion_key is None:
            return _error(UNRECOGNIZED_ENTITY, f'No descriptor for "{name}"')
        path.append(relay)
    if not path:
        return _error(BAD_SYNTAX, "No router names provided")
    if existing is not None:
        try:
            backend.extend_circuit(existing, path)
        except Exception as exc:  # not open, or carrying streams
            log.info("controller asked to extend circuit %s through %s: %s", circ_id, path_text, exc)
            return _error(INTERNAL_ERROR, "Couldn't send onion skin")
        return reply(OK, [f"EXTENDED {existing.number}"])
    try:
        number = backend.launch_circuit(path, purpose)
    except Exception as exc:
        log.info("controller asked for a circuit through %s: %s", path_text, exc)
        return _error(INTERNAL_ERROR, "Couldn't start circuit")
    return reply(OK, [f"EXTENDED {number}"])


def _parse_attachstream(args: str) -> ControlArguments:
    return parse_arguments(args, min_positional=2, max_positional=2, keywords=True, allowed_keywords=("HOP",),
                           quoting=None)


def _run_attachstream(session: ControlSession, args: ControlArguments, after) -> bytes:
    stream_id, circ_id = args.positional
    managed_stream = session.find_stream(stream_id)
    if managed_stream is None:
        return _error(UNRECOGNIZED_ENTITY, f'Unknown stream "{stream_id}"')
    target = None
    hop = 0
    if circ_id != "0":
        target = session.find_circuit(circ_id)
        if target is None:
            return _error(UNRECOGNIZED_ENTITY, f'Unknown circuit "{circ_id}"')
        hop_text = args.get("HOP")
        if hop_text is not None:
            parsed_hop = parse_decimal(hop_text, 0, MAX_HOP)
            if parsed_hop is None:
                return _error(UNRECOGNIZED_ENTITY, f"Bad value hop={hop_text}")
            hop = parsed_hop
    state = managed_stream.stream.state.value
    waiting = state in ("NEW", "DETACHED") and managed_stream.awaiting_controller
    if not waiting and state not in ("SENTCONNECT", "SENTRESOLVE"):
        return _error(NOT_MANAGED, "Connection is not managed by controller.")
    if target is not None:
        if not target.is_open:
            return _error(INTERNAL_ERROR, "Can't attach stream to non-open origin circuit")
        if len(target.path) < 2 or hop == 1:
            return _error(INTERNAL_ERROR, "Can't attach stream to this one-hop circuit.")
        if hop > len(target.path):
            return _error(INTERNAL_ERROR, f"Circuit doesn't have {hop} hops.")
    try:
        session.hub.backend.attach_stream(managed_stream, target, hop or None)
    except Exception as exc:
        log.info("could not attach stream %s: %s", stream_id, exc)
        return _error(INTERNAL_ERROR, "Unable to attach stream")
    return _ok()


def _parse_closestream(args: str) -> ControlArguments:
    return parse_arguments(args, min_positional=2)


def _run_closestream(session: ControlSession, args: ControlArguments, after) -> bytes:
    stream_id, reason_text = args.positional[0], args.positional[1]
    managed_stream = session.find_stream(stream_id)
    if managed_stream is None:
        return _error(UNRECOGNIZED_ENTITY, f'Unknown stream "{stream_id}"')
    reason = parse_decimal(reason_text, 0, MAX_END_REASON)
    if reason is None:
        return _error(UNRECOGNIZED_ENTITY, f'Unrecognized reason "{reason_text}"')
    session.hub.backend.close_stream(managed_stream, reason)
    return _ok()


def _parse_closecircuit(args: str) -> ControlArguments:
    return parse_arguments(args, min_positional=1, max_positional=1, keywords=True, valueless=True, quoting=None)


def _run_closecircuit(session: ControlSession, args: ControlArguments, after) -> bytes:
    circ_id = args.positional[0]
    managed = session.find_circuit(circ_id)
    if managed is None:
        return _error(UNRECOGNIZED_ENTITY, f'Unknown circuit "{circ_id}"')
    if_unused = args.has_flag("IfUnused")
    in_use = any(stream.managed_circuit is managed and not stream.stream.ended
                 for stream in session.hub.backend.manager.streams.values())
    if not if_unused or not in_use:
        session.hub.backend.close_circuit(managed.number)
    return _ok()


def _run_usefeature(session: ControlSession, args: ControlArguments, after) -> bytes:
    for feature in args.positional:
        if ascii_upper(feature) not in FEATURE_NAMES:
            return _error(UNRECOGNIZED_ENTITY, f'Unrecognized feature "{feature}"')
    return _ok()


def _run_takeownership(session: ControlSession, args: ControlArguments, after) -> bytes:
    session.owning = True
    log.info("Control connection has taken ownership of this oppy instance.")
    return _ok()


def _run_dropownership(session: ControlSession, args: ControlArguments, after) -> bytes:
    session.owning = False
    log.info("Control connection has dropped ownership of this oppy instance.")
    return _ok()


# The command word -> (argument parser, command); the session adds GETINFO.
COMMANDS: dict[str, tuple[Callable[[str], ControlArguments], Callable[..., bytes]]] = {
    "GETCONF": (_positional_only, _run_getconf),
    "SETCONF": (_parse_setconf, _run_setconf),
    "RESETCONF": (_parse_setconf, _run_setconf),
    "SETEVENTS": (_positional_only, _run_setevents),
    "SIGNAL": (_parse_signal, _run_signal),
    "EXTENDCIRCUIT": (_parse_extendcircuit, _run_extendcircuit),
    "ATTACHSTREAM": (_parse_attachstream, _run_attachstream),
    "CLOSESTREAM": (_parse_closestream, _run_closestream),
    "CLOSECIRCUIT": (_parse_closecircuit, _run_closecircuit),
    "USEFEATURE": (_positional_only, _run_usefeature),
    "TAKEOWNERSHIP": (_positional_only, _run_takeownership),
    "DROPOWNERSHIP": (_positional_only, _run_dropownership),
}


def event_for_new_consensus(relays: Iterable[RelayRecord]) -> bytes:
    """``650+NEWCONSENSUS`` with every entry in ns format, then ``650 OK``."""
    return encode_event(DataBlock("NEWCONSENSUS", relays_ns_text(relays)))

