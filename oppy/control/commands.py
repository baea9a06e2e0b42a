"""The control port's commands and sessions, sans IO.

A :class:`ControlHub` is the control port of one oppy: it knows the backend (the live daemon, or a
test double), the authentication settings and every open :class:`ControlSession`, and broadcasts
events to the sessions that asked for them. A session is one controller connection: bytes in
(:meth:`ControlSession.feed`), bytes out (:meth:`ControlSession.data_to_send`). It frames commands
with the codec, lets the :class:`~oppy.control.auth.Authenticator` answer PROTOCOLINFO,
AUTHCHALLENGE, AUTHENTICATE and QUIT, and runs the others here, with the replies and error codes of
tor 0.4.9 (control_cmd.c, control_getinfo.c; /work/shared/docs/control-port-notes.md lists what stem
and nyx send). Events raised while a command runs go out after its reply, as tor queues them.

Nothing here touches sockets or the reactor; what a command changes in oppy goes through the
:class:`ControlBackend` interface.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from oppy import __version__
from oppy.config import OPTION_NAMES, Config, ConfigError, UnknownOptionError, ascii_lower, \
    canonical_option_name, option_type_name, parse_decimal
from oppy.control.auth import Authenticator
from oppy.control.codec import (
    ControlArguments,
    ControlCommand,
    ControlLineReader,
    ControlSyntaxError,
    DataBlock,
    FramingFailure,
    ascii_upper,
    bad_arguments_reply,
    encode_event,
    line_safe,
    looks_like_http_request,
    parse_arguments,
    quote,
    reply,
)
from oppy.control.events import (
    LOG_SEVERITIES,
    SETEVENTS_EVENT_NAMES,
    SIGNAL_CANONICAL_NAMES,
    UnrecognizedEventError,
    conf_changed_event,
    log_event,
    parse_setevents,
    signal_event,
)
from oppy.control.status import (
    CircuitEventTracker,
    StreamEventTracker,
    bootstrap_phase_text,
    circuit_getinfo_status,
    circuit_status_entry,
    entry_guard_line,
    ns_entry,
    stream_getinfo_line,
)
from oppy.netdoc.relay import hex_identity
from oppy.path.chooser import PathChooser

__all__ = [
    "TOR_COMPATIBLE_VERSION",
    "CONTROL_VERSION",
    "ControlBackend",
    "ControlHub",
    "ControlSession",
    "AuthSettings",
    "SetconfError",
    "apply_setconf",
    "TOR_CLIENT_DEFAULTS",
    "GETINFO_KEYS",
]

log = logging.getLogger(__name__)

# What oppy says it is: a tor version stem accepts (>= 0.4.6.1 so its feature gates pass: notes
# section 1) with oppy's own version in parentheses, which stem's version pattern allows.
TOR_COMPATIBLE_VERSION = "0.4.9.11"
CONTROL_VERSION = f"{TOR_COMPATIBLE_VERSION} (oppy-{__version__})"

# control-spec "Replies".
OK = 250
UNRECOGNIZED_COMMAND = 510
BAD_SYNTAX = 512
UNRECOGNIZED_ARGUMENT = 513
INTERNAL_ERROR = 551
UNRECOGNIZED_ENTITY = 552
INVALID_CONFIG_VALUE = 553
NOT_MANAGED = 555

# control.c control_send_http_reject: a browser that took the control port for an HTTP proxy.
HTTP_REJECT = (
    b"HTTP/1.0 501 oppy ControlPort is not an HTTP proxy\r\n"
    b"Content-Type: text/html; charset=iso-8859-1\r\n\r\n"
    b"<html><head><title>This is oppy's ControlPort, not an HTTP proxy</title></head>\n"
    b"<body><h1>This is oppy's ControlPort, not an HTTP proxy</h1>\n"
    b"<p>Your browser is set up to use a Tor control port as its HTTP proxy. Point it at oppy's\n"
    b"SocksPort (a SOCKS proxy, 9050 by default) instead.</p></body></html>\n"
)

# tor's uint32 circuit ids (control_cmd.c get_circ) and 0..255 END reasons (handle_control_closestream).
MAX_CIRCUIT_ID = 0xFFFFFFFF
MAX_STREAM_ID = 0xFFFFFFFFFFFFFFFF
MAX_END_REASON = 255
# INT_MAX, the bound of ATTACHSTREAM's HOP= (tor_parse_ulong(..., INT_MAX)).
MAX_HOP = 2**31 - 1
# control_getinfo.c features/names.
FEATURE_NAMES = ("VERBOSE_NAMES", "EXTENDED_EVENTS")
# control_events.c get_bw_samples: bw-event-cache holds up to this many one-second samples.
BW_EVENT_CACHE_LEN = 300
# policies.c DEFAULT_EXIT_POLICY, which GETINFO exit-policy/default reports.
DEFAULT_EXIT_POLICY = ("reject *:25,reject *:119,reject *:135-139,reject *:445,reject *:563,reject *:1214,"
                       "reject *:4661-4666,reject *:6346-6429,reject *:6699,reject *:6881-6999,accept *:*")
# The signals tor reports with a SIGNAL event (control_events.c control_event_signal).
REPORTED_SIGNALS = frozenset({"RELOAD", "DUMP", "DEBUG", "NEWNYM", "CLEARDNSCACHE", "HEARTBEAT", "ACTIVE",
                              "DORMANT"})

# tor options oppy does not implement but that controllers (nyx above all) read: GETCONF answers
# them with the value a tor client has by default (tor's config.c option_vars_; [] = unset).
# name -> (tor's type name, values).
TOR_CLIENT_DEFAULTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "AccountingMax": ("DataSize", ("0 bytes",)),
    "AccountingStart": ("String", ()),
    "Address": ("LineList", ()),
    "BandwidthBurst": ("DataSize", ("1073741824",)),
    "BandwidthRate": ("DataSize", ("1073741824",)),
    "Bridge": ("LineList", ()),
    "BridgeRelay": ("Boolean", ("0",)),
    "ClientOnly": ("Boolean", ("0",)),
    "ConnLimit": ("Integer", ("1000",)),
    "ContactInfo": ("String", ()),
    "ControlPortFileGroupReadable": ("Boolean", ("0",)),
    "ControlPortWriteToFile": ("Filename", ()),
    "ControlSocket": ("LineList", ()),
    "CookieAuthFileGroupReadable": ("String", ("0",)),
    "DirPort": ("LineList", ()),
    "DirPortFrontPage": ("Filename", ()),
    "DisableDebuggerAttachment": ("Boolean", ("1",)),
    "DisableNetwork": ("Boolean", ("0",)),
    "DNSPort": ("LineList", ()),
    "EntryNodes": ("RouterList", ()),
    "ExcludeExitNodes": ("RouterList", ()),
    "ExcludeNodes": ("RouterList", ()),
    "ExitNodes": ("RouterList", ()),
    "ExitPolicy": ("LineList", ()),
    "ExitPolicyRejectPrivate": ("Boolean", ("1",)),
    "ExitRelay": ("Autobool", ("auto",)),
    "FetchDirInfoEarly": ("Boolean", ("0",)),
    "FetchUselessDescriptors": ("Boolean", ("0",)),
    "HiddenServiceOptions": ("Virtual", ()),
    "HTTPTunnelPort": ("LineList", ()),
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
    "UseBridges": ("Boolean", ("0",)),
    "UseEntryGuards": ("Boolean", ("1",)),
    "UseMicrodescriptors": ("Autobool", ("auto",)),
    "User": ("String", ()),
}
_TOR_DEFAULTS_BY_LOWER = {name.lower(): name for name in TOR_CLIENT_DEFAULTS}
# Options oppy reads but cannot change while running: listeners stay as they were bound.
_LISTENER_OPTIONS = ("SocksPort", "ControlPort")


# --------------------------------------------------------------------------- the backend


class ControlBackend:
    """What the commands read from and do to a running oppy. The daemon's implementation is
    ``oppy.control.backend.DaemonBackend``; tests provide their own. Attributes: ``config`` (the
    live :class:`~oppy.config.Config`), ``manager`` (the circuit manager: ``circuits`` and
    ``streams`` by number, ``attach_automatically``), ``directory`` (``netdir``, the
    :class:`~oppy.netdoc.netdir.NetDir` in use or None, ``bootstrap_phase``, ``enough_dir_info``), ``paths``
    (the :class:`~oppy.path.chooser.PathChooser`, whose ``guards`` GETINFO entry-guards lists)."""

    config: Config
    manager: object
    directory: object
    paths: PathChooser

    def launch_circuit(self, path: list | None, purpose: str) -> int:
        """Build a circuit (through ``path``, or one oppy picks) with purpose GENERAL or CONTROLLER;
        returns its number. Raises if no circuit can be started."""
        raise NotImplementedError

    def attach_stream(self, managed_stream, managed_circuit) -> None:
        """ATTACHSTREAM: put a waiting (or connecting) stream on a circuit, or on one oppy picks (None)."""
        raise NotImplementedError

    def close_stream(self, managed_stream, reason: int) -> None:
        raise NotImplementedError

    def close_circuit(self, number: int) -> None:
        raise NotImplementedError

    def find_relay(self, name: str):
        """A relay (RelayTarget) named by ``$FP``, ``$FP~nick``, ``$FP=nick``, ``FP`` or a nickname, or None."""
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


@dataclass(frozen=True)
class AuthSettings:
    """How controllers authenticate: the cookie (COOKIE, SAFECOOKIE), hashed passwords, or NULL."""

    cookie: bytes | None = None
    cookie_path: str | None = None
    hashed_passwords: tuple[str, ...] = ()

    def authenticator(self, version: str) -> Authenticator:
        return Authenticator(tor_version=version, cookie=self.cookie, cookie_path=self.cookie_path,
                             hashed_passwords=self.hashed_passwords)


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
    for name in changed_names:
        if name in _LISTENER_OPTIONS:
            raise SetconfError(INVALID_CONFIG_VALUE, f"Transition not allowed: oppy cannot change {name} "
                                                     "while it is running")
    config.set_options(pairs)
    lines: list[tuple[str, str | None]] = []
    for name in changed_names:
        values = config.get_option(name)
        if values:
            lines.extend((name, value) for value in values)
        else:
            lines.append((name, None))
    return lines


# --------------------------------------------------------------------------- GETINFO


class GetinfoUnavailable(Exception):
    """A key tor recognizes but cannot answer here: 552 with this message, the command goes on."""


class GetinfoFailed(Exception):
    """An internal failure answering a key: tor stops the whole command with 551 and this message."""


@dataclass(frozen=True)
class GetinfoKey:
    name: str
    is_prefix: bool
    doc: str
    answer: Callable[["ControlSession", str], str | None]


def _joined(lines: Iterable[str]) -> str:
    return "\n".join(lines)


def _gi_version(session, key):
    return session.hub.version


def _gi_config_file(session, key):
    return session.hub.backend.config_file()


def _gi_config_text(session, key):
    return _joined(session.hub.backend.config.to_torrc_lines())


def _gi_config_names(session, key):
    lines = [f"{name} {option_type_name(name)}" for name in OPTION_NAMES]
    lines += [f"{name} {kind}" for name, (kind, _) in TOR_CLIENT_DEFAULTS.items()]
    return _joined(lines)


def _gi_config_defaults(session, key):
    defaults = Config()
    lines = []
    for name in OPTION_NAMES:
        lines += [f"{name} {value}" for value in defaults.get_option(name)]
    for name, (_, values) in TOR_CLIENT_DEFAULTS.items():
        lines += [f"{name} {value}" for value in values]
    return _joined(lines)


def _gi_info_names(session, key):
    lines = sorted(f"{entry.name}{'*' if entry.is_prefix else ''} -- {entry.doc}" for entry in GETINFO_KEYS)
    return _joined(lines)


def _gi_events_names(session, key):
    return " ".join(SETEVENTS_EVENT_NAMES)


def _gi_signal_names(session, key):
    return " ".join(SIGNAL_CANONICAL_NAMES)


def _gi_features_names(session, key):
    return " ".join(FEATURE_NAMES)


def _gi_address(session, key):
    raise GetinfoFailed("Address unknown")


def _gi_fingerprint(session, key):
    raise GetinfoFailed("Not running in server mode")


def _gi_traffic(session, key):
    read, written = session.hub.backend.traffic()
    return str(read if key == "traffic/read" else written)


def _gi_bw_event_cache(session, key):
    return " ".join(f"{read},{written}" for read, written in session.hub.backend.bandwidth_history())


def _gi_uptime(session, key):
    return str(session.hub.backend.uptime())


def _gi_process(session, key):
    if key == "process/pid":
        return str(os.getpid())
    if key == "process/uid":
        return str(os.geteuid())
    if key == "process/user":
        try:
            import pwd

            return pwd.getpwuid(os.geteuid()).pw_name
        except (ImportError, KeyError):
            return ""
    if key == "process/descriptor-limit":
        try:
            import resource

            return str(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        except (ImportError, OSError, ValueError):
            return "-1"
    return None


def _gi_dormant(session, key):
    return "1" if session.hub.backend.is_dormant() else "0"


def _gi_current_time(session, key):
    now = time.time()
    moment = time.localtime(now) if key == "current-time/local" else time.gmtime(now)
    return time.strftime("%Y-%m-%dT%H:%M:%S", moment)


_LISTENER_KINDS = ("or", "extor", "dir", "socks", "trans", "natd", "httptunnel", "dns", "control", "metrics")


def _gi_listeners(session, key):
    kind = key[len("net/listeners/"):]
    if kind not in _LISTENER_KINDS:
        return None
    addresses = session.hub.backend.listeners(kind)
    return " ".join(quote(f"[{host}]:{port}" if ":" in host else f"{host}:{port}") for host, port in addresses)


def _gi_circuit_status(session, key):
    manager = session.hub.backend.manager
    lines = []
    for managed in sorted(manager.circuits.values(), key=lambda m: m.number):
        if managed.status.value in ("FAILED", "CLOSED"):
            continue
        lines.append(circuit_status_entry(managed, circuit_getinfo_status(managed)))
    return _joined(lines)


def _gi_stream_status(session, key):
    manager = session.hub.backend.manager
    lines = [line for managed in sorted(manager.streams.values(), key=lambda m: m.number)
             if (line := stream_getinfo_line(managed)) is not None]
    return _joined(lines)


def _gi_orconn_status(session, key):
    return _joined(session.hub.backend.orconn_lines())


def _gi_status(session, key):
    backend = session.hub.backend
    directory = backend.directory
    if key == "status/circuit-established":
        return "1" if backend.circuit_established() else "0"
    if key == "status/enough-dir-info":
        return "1" if getattr(directory, "enough_dir_info", False) else "0"
    if key == "status/bootstrap-phase":
        return bootstrap_phase_text(*directory.bootstrap_phase)
    if key in ("status/good-server-descriptor", "status/accepted-server-descriptor",
               "status/reachability-succeeded/or", "status/reachability-succeeded/dir"):
        return "0"
    if key == "status/reachability-succeeded":
        return "OR=0 DIR=0"
    if key == "status/version/current":
        return "unknown"
    if key == "status/version/recommended":
        return "?"
    if key == "status/clients-seen":
        raise GetinfoFailed("No bridge-client stats available")
    if key == "status/fresh-relay-descs":
        raise GetinfoFailed("Only relays have descriptors")
    return None


def _netdir(session):
    return session.hub.backend.directory.netdir


def _consensus(session):
    netdir = _netdir(session)
    return netdir.consensus if netdir is not None else None


def _gi_ns(session, key):
    consensus = _consensus(session)
    if key.startswith("ns/purpose/"):
        if key != "ns/purpose/general" and key != "ns/purpose/bridge":
            raise GetinfoFailed("Unrecognized purpose")
    if consensus is None:
        return ""
    if key == "ns/all" or key == "ns/purpose/general":
        return "".join(ns_entry(relay) for relay in consensus.relays)
    if key == "ns/purpose/bridge":
        return ""
    if key.startswith("ns/id/"):
        identity = hex_identity(key[len("ns/id/"):])
        if identity is None:
            raise GetinfoFailed("Data not decodeable as hex")
        relay = consensus.relay_by_id(identity)
    elif key.startswith("ns/name/"):
        relay = _netdir(session).relay_by_nickname(key[len("ns/name/"):])
    else:
        return None
    return ns_entry(relay) if relay is not None else None


def _gi_consensus(session, key):
    consensus = _consensus(session)
    if key in ("consensus/valid-after", "consensus/fresh-until", "consensus/valid-until"):
        if consensus is None:
            raise GetinfoFailed("No consensus available")
        when = getattr(consensus, key[len("consensus/"):].replace("-", "_"))
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when))
    if key == "consensus/packages":
        raise GetinfoFailed("No consensus available")
    return None


def _microdesc_of(session, relay) -> str | None:
    if relay is None or not relay.microdesc_digest:
        return None
    return session.hub.backend.microdesc_body(relay.microdesc_digest)


def _gi_md(session, key):
    consensus = _consensus(session)
    if key == "md/download-enabled":
        return "1"
    if key == "md/all":
        if consensus is None:
            return ""
        return "".join(body for relay in consensus.relays if (body := _microdesc_of(session, relay)))
    if consensus is None:
        return None
    if key.startswith("md/id/"):
        identity = hex_identity(key[len("md/id/"):])
        relay = consensus.relay_by_id(identity) if identity is not None else None
    elif key.startswith("md/name/"):
        relay = _netdir(session).relay_by_nickname(key[len("md/name/"):])
    else:
        return None
    return _microdesc_of(session, relay)


def _gi_desc(session, key):
    if key == "desc/download-enabled":
        return "0"
    if key == "desc/all-recent":
        return ""
    which = "id" if key.startswith("desc/id/") else "name"
    raise GetinfoUnavailable(f"We fetch microdescriptors, not router descriptors. You'll need to use "
                             f"md/{which}/* instead of desc/{which}/*.")


def _gi_entry_guards(session, key):
    guards = session.hub.backend.paths.guards
    netdir = _netdir(session)
    lines = []
    for guard in guards.guards:
        relay = netdir.relay_by_fingerprint(guard.fingerprint) if netdir is not None else None
        lines.append(entry_guard_line(guard, relay))
    return "".join(lines)


def _gi_exit_policy(session, key):
    if key == "exit-policy/default":
        return DEFAULT_EXIT_POLICY
    if key in ("exit-policy/full", "exit-policy/ipv4", "exit-policy/ipv6", "exit-policy/reject-private/relay"):
        raise GetinfoUnavailable("Not running in server mode")
    if key == "exit-policy/reject-private/default":
        return ("reject 0.0.0.0/8:*,reject 169.254.0.0/16:*,reject 127.0.0.0/8:*,reject 192.168.0.0/16:*,"
                "reject 10.0.0.0/8:*,reject 172.16.0.0/12:*,reject [::]/8:*,reject [fc00::]/7:*,"
                "reject [fe80::]/10:*,reject [fec0::]/10:*,reject [::]/127:*")
    return None


def _gi_accounting(session, key):
    if key == "accounting/enabled":
        return "0"
    raise GetinfoFailed("Accounting not enabled")


def _gi_ip_to_country(session, key):
    question = key[len("ip-to-country/"):]
    if question in ("ipv4-available", "ipv6-available"):
        return "0"
    import ipaddress

    try:
        ipaddress.ip_address(question)
    except ValueError:
        raise GetinfoFailed("Invalid address family") from None
    raise GetinfoFailed("GeoIP data not loaded")


def _gi_network_liveness(session, key):
    return "up" if session.hub.backend.circuit_established() else "down"


def _gi_onions(session, key):
    return ""


def _gi_limits(session, key):
    return "8589934592"


GETINFO_KEYS: tuple[GetinfoKey, ...] = (
    GetinfoKey("version", False, "The current version of Tor.", _gi_version),
    GetinfoKey("bw-event-cache", False, "Cached BW events for a short interval.", _gi_bw_event_cache),
    GetinfoKey("config-file", False, "Current location of the \"torrc\" file.", _gi_config_file),
    GetinfoKey("config-text", False, "Return the string that would be written by a saveconf command.",
               _gi_config_text),
    GetinfoKey("config/names", False, "List of configuration options, types, and documentation.",
               _gi_config_names),
    GetinfoKey("config/defaults", False, "List of default values for configuration options.",
               _gi_config_defaults),
    GetinfoKey("info/names", False, "List of GETINFO options, types, and documentation.", _gi_info_names),
    GetinfoKey("events/names", False, "Events that the controller can ask for with SETEVENTS.",
               _gi_events_names),
    GetinfoKey("signal/names", False, "Signal names recognized by the SIGNAL command", _gi_signal_names),
    GetinfoKey("features/names", False, "What arguments can USEFEATURE take?", _gi_features_names),
    GetinfoKey("address", False, "IP address of this Tor host, if we can guess it.", _gi_address),
    GetinfoKey("address/v4", False, "IPv4 address of this Tor host, if we can guess it.", _gi_address),
    GetinfoKey("address/v6", False, "IPv6 address of this Tor host, if we can guess it.", _gi_address),
    GetinfoKey("fingerprint", False, "Get hex fingerprint of the relay identity key.", _gi_fingerprint),
    GetinfoKey("traffic/read", False, "Bytes read since the process was started.", _gi_traffic),
    GetinfoKey("traffic/written", False, "Bytes written since the process was started.", _gi_traffic),
    GetinfoKey("uptime", False, "Uptime of the Tor daemon in seconds.", _gi_uptime),
    GetinfoKey("process/pid", False, "Process id belonging to the main tor process.", _gi_process),
    GetinfoKey("process/uid", False, "User id running the tor process.", _gi_process),
    GetinfoKey("process/user", False, "Username under which the tor process is running.", _gi_process),
    GetinfoKey("process/descriptor-limit", False, "File descriptor limit.", _gi_process),
    GetinfoKey("limits/max-mem-in-queues", False, "Actual limit on memory in queues", _gi_limits),
    GetinfoKey("dormant", False, "Is Tor dormant (not building circuits because it's idle)?", _gi_dormant),
    GetinfoKey("current-time/local", False, "Current time on the local system.", _gi_current_time),
    GetinfoKey("current-time/utc", False, "Current UTC time.", _gi_current_time),
    GetinfoKey("net/listeners/", True, "Bound addresses by type", _gi_listeners),
    GetinfoKey("circuit-status", False, "List of current circuits originating here.", _gi_circuit_status),
    GetinfoKey("stream-status", False, "List of current streams.", _gi_stream_status),
    GetinfoKey("orconn-status", False, "A list of current OR connections.", _gi_orconn_status),
    GetinfoKey("status/", True, "Status information (circuit-established, enough-dir-info, bootstrap-phase, "
               "version/current, ...).", _gi_status),
    GetinfoKey("ns/all", False, "Brief summary of router status (v2 directory format)", _gi_ns),
    GetinfoKey("ns/id/", True, "Brief summary of router status by ID (v2 directory format).", _gi_ns),
    GetinfoKey("ns/name/", True, "Brief summary of router status by nickname (v2 directory format).", _gi_ns),
    GetinfoKey("ns/purpose/", True, "Brief summary of router status by purpose (v2 directory format).", _gi_ns),
    GetinfoKey("consensus/", True, "Information about and from the ns consensus.", _gi_consensus),
    GetinfoKey("md/all", False, "All known microdescriptors.", _gi_md),
    GetinfoKey("md/id/", True, "Microdescriptors by ID", _gi_md),
    GetinfoKey("md/name/", True, "Microdescriptors by name", _gi_md),
    GetinfoKey("md/download-enabled", False, "Do we try to download microdescriptors?", _gi_md),
    GetinfoKey("desc/id/", True, "Router descriptors by ID.", _gi_desc),
    GetinfoKey("desc/name/", True, "Router descriptors by nickname.", _gi_desc),
    GetinfoKey("desc/all-recent", False, "All non-expired, non-superseded router descriptors.", _gi_desc),
    GetinfoKey("desc/download-enabled", False, "Do we try to download router descriptors?", _gi_desc),
    GetinfoKey("entry-guards", False, "Which nodes are we using as entry guards?", _gi_entry_guards),
    GetinfoKey("exit-policy/", True, "Exit policies (default, reject-private/default; full, ipv4 and ipv6 "
               "only on relays).", _gi_exit_policy),
    GetinfoKey("accounting/", True, "Accounting information (only enabled: accounting is off).", _gi_accounting),
    GetinfoKey("ip-to-country/", True, "Perform a GEOIP lookup", _gi_ip_to_country),
    GetinfoKey("network-liveness", False, "Current opinion on whether the network is live",
               _gi_network_liveness),
    GetinfoKey("onions/current", False, "Onion services owned by the current control connection.", _gi_onions),
    GetinfoKey("onions/detached", False, "Onion services detached from the control connection.", _gi_onions),
)


def _find_getinfo_key(key: str) -> GetinfoKey | None:
    """control_getinfo.c handle_getinfo_helper: exact names, or the first prefix entry that matches."""
    for entry in GETINFO_KEYS:
        if (key.startswith(entry.name) if entry.is_prefix else key == entry.name):
            return entry
    return None


# --------------------------------------------------------------------------- the hub


class ControlHub:
    """The control port of one oppy: its sessions, their event subscriptions, and the events."""

    def __init__(self, backend: ControlBackend, auth: AuthSettings = AuthSettings(),
                 version: str = CONTROL_VERSION) -> None:
        self.backend = backend
        self.auth = auth
        self.version = version
        self.sessions: set[ControlSession] = set()
        self.circuit_events = CircuitEventTracker()
        self.stream_events = StreamEventTracker()
        #: Called when the union of subscribed events changed (the log observer's level follows it).
        self.on_subscriptions_changed: Callable[[frozenset[str]], None] = lambda events: None

    def open_session(self) -> "ControlSession":
        session = ControlSession(self)
        self.sessions.add(session)
        return session

    def close_session(self, session: "ControlSession") -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.subscriptions_changed()

    def subscribed(self) -> frozenset[str]:
        """Every event some session asked for."""
        events: set[str] = set()
        for session in self.sessions:
            events |= session.events
        return frozenset(events)

    def wants(self, name: str) -> bool:
        return any(name in session.events for session in self.sessions)

    def subscriptions_changed(self) -> None:
        self.on_subscriptions_changed(self.subscribed())

    def broadcast(self, name: str, payload: bytes) -> None:
        """Send an event to every authenticated session subscribed to ``name``."""
        if not payload:
            return
        for session in list(self.sessions):
            if name in session.events:
                session.deliver_event(payload)

    # ---------------------------------------------------------------- what oppy reports

    def circuit_changed(self, managed) -> None:
        events = self.circuit_events.update(managed)
        if self.wants("CIRC"):
            for event in events:
                self.broadcast("CIRC", event)

    def stream_changed(self, managed) -> None:
        events = self.stream_events.update(managed)
        if self.wants("STREAM"):
            for event in events:
                self.broadcast("STREAM", event)

    def log_message(self, severity: str, message: str) -> None:
        """An oppy log record (tor severity in lower case) for the DEBUG/INFO/NOTICE/WARN/ERR events."""
        name = "WARN" if severity == "warn" else severity.upper()
        if name in LOG_SEVERITIES and self.wants(name):
            self.broadcast(name, log_event(name, message))

    def conf_changed(self, lines: Sequence[tuple[str, str | None]]) -> None:
        self.broadcast("CONF_CHANGED", conf_changed_event(lines))

    def signal_sent(self, name: str) -> None:
        if name in REPORTED_SIGNALS:
            self.broadcast("SIGNAL", signal_event(name))


# --------------------------------------------------------------------------- a session


class ControlSession:
    """One controller connection, sans IO."""

    def __init__(self, hub: ControlHub) -> None:
        self.hub = hub
        self.reader = ControlLineReader()
        self.authenticator = hub.auth.authenticator(hub.version)
        self.events: frozenset[str] = frozenset()
        self.should_close = False
        self.owning = False
        #: Called when output is ready outside of feed() (an event): the adapter writes it.
        self.wakeup: Callable[[], None] = lambda: None
        self._out: list[bytes] = []
        self._held_events: list[bytes] | None = None
        self._seen_bytes = b""
        self._commands_run = 0

    # ---------------------------------------------------------------- bytes

    def data_to_send(self) -> bytes:
        data = b"".join(self._out)
        self._out.clear()
        return data

    def feed(self, data: bytes) -> None:
        """Bytes from the controller; replies (and any events) wait in :meth:`data_to_send`."""
        if self.should_close or not data:
            return
        if not self.authenticator.authenticated and self._commands_run == 0 and len(self._seen_bytes) < 8:
            self._seen_bytes += data[:8]
            if looks_like_http_request(self._seen_bytes):
                self._out.append(HTTP_REJECT)
                log.info("Received HTTP request on ControlPort")
                self._close()
                return
        for item in self.reader.feed(data):
            if self.should_close:
                break
            if isinstance(item, FramingFailure):
                self._out.append(item.reply)
                self._close()
                break
            self._run(item)

    def deliver_event(self, payload: bytes) -> None:
        if self.should_close or not self.authenticator.authenticated:
            return
        if self._held_events is not None:
            self._held_events.append(payload)
            return
        self._out.append(payload)
        self.wakeup()

    def _close(self) -> None:
        self.should_close = True
        self.events = frozenset()

    # ---------------------------------------------------------------- commands

    def _run(self, command: ControlCommand) -> None:
        self._commands_run += 1
        self._held_events = []
        after: list[Callable[[], None]] = []
        try:
            try:
                outcome = self.authenticator.handle(command)
                if outcome is not None:
                    self._out.append(outcome.reply)
                    if outcome.close:
                        self._close()
                else:
                    self._out.append(self._dispatch(command, after))
            except Exception:  # a bug must not take the control port (or oppy) down
                log.exception("control command %s failed", command.keyword)
                self._out.append(reply(INTERNAL_ERROR, ["Internal error"]))
                if not self.authenticator.authenticated:
                    self._close()  # as tor does with bad input before authentication
            for action in after:
                action()
        finally:
            held, self._held_events = self._held_events, None
            if not self.should_close:
                self._out.extend(held)

    def _dispatch(self, command: ControlCommand, after: list[Callable[[], None]]) -> bytes:
        if command.data is not None:
            return reply(UNRECOGNIZED_COMMAND, [f'Unrecognized command "+{command.keyword}"'])
        handler = _HANDLERS.get(command.keyword)
        if handler is None:
            return reply(UNRECOGNIZED_COMMAND, [f'Unrecognized command "{command.keyword}"'])
        parse, run = handler
        try:
            arguments = parse(command.args)
        except ControlSyntaxError as error:
            return bad_arguments_reply(command.keyword, error)
        return run(self, arguments, after)

    # ---------------------------------------------------------------- lookups

    def find_circuit(self, text: str):
        """control_cmd.c get_circ: tor_parse_ulong(text, 10, 0, UINT32_MAX)."""
        number = parse_decimal(text, 0, MAX_CIRCUIT_ID)
        return None if number is None else self.hub.backend.manager.circuits.get(number)

    def find_stream(self, text: str):
        """control_cmd.c get_stream: tor_parse_uint64(text, 10, 0, UINT64_MAX)."""
        number = parse_decimal(text, 0, MAX_STREAM_ID)
        if number is None:
            return None
        managed = self.hub.backend.manager.streams.get(number)
        if managed is None or managed.stream.ended:
            return None
        return managed


def _ok() -> bytes:
    return reply(OK, ["OK"])


def _error(code: int, message: str) -> bytes:
    return reply(code, [line_safe(message)])


# --------------------------------------------------------------------------- the commands

def _positional_only(args: str) -> ControlArguments:
    return parse_arguments(args)


def _run_getinfo(session: ControlSession, args: ControlArguments, after) -> bytes:
    answers: list[str | DataBlock] = []
    unrecognized: list[str] = []
    for key in args.positional:
        entry = _find_getinfo_key(key)
        try:
            value = entry.answer(session, key) if entry is not None else None
        except GetinfoFailed as failure:
            return _error(INTERNAL_ERROR, str(failure))
        except GetinfoUnavailable as unavailable:
            unrecognized.append(str(unavailable))
            continue
        if value is None:
            unrecognized.append(line_safe(f'Unrecognized key "{key}"'))
        elif "\n" in value or "\r" in value:
            answers.append(DataBlock(f"{key}=", value))
        else:
            answers.append(f"{key}={value}")
    if unrecognized:
        return reply(UNRECOGNIZED_ENTITY, unrecognized)
    return reply(OK, [*answers, "OK"])


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
    try:
        changes = apply_setconf(backend.config, pairs)
    except SetconfError as error:
        log.warning("Controller gave us config lines that didn't validate: %s", error.message.split(": ", 1)[-1])
        return _error(error.code, error.message)
    if changes:
        names = list(dict.fromkeys(name for name, _ in changes))
        backend.options_changed(names)
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
    if not is_new and session.find_circuit(circ_id) is None:
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
    if not is_new:
        # oppy's circuits are built in one go; a built circuit cannot grow afterwards.
        return _error(INTERNAL_ERROR, "Couldn't send onion skin")
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
    waiting = state in ("NEW", "DETACHED") and getattr(managed_stream, "awaiting_controller", False)
    if not waiting and state not in ("SENTCONNECT", "SENTRESOLVE"):
        return _error(NOT_MANAGED, "Connection is not managed by controller.")
    if target is not None:
        if not target.is_open:
            return _error(INTERNAL_ERROR, "Can't attach stream to non-open origin circuit")
        if len(target.path) < 2 or hop == 1:
            return _error(INTERNAL_ERROR, "Can't attach stream to this one-hop circuit.")
        if hop > len(target.path):
            return _error(INTERNAL_ERROR, f"Circuit doesn't have {hop} hops.")
        if hop and hop != len(target.path):
            return _error(INTERNAL_ERROR, "Unable to attach stream")  # oppy opens streams at the last hop only
    try:
        session.hub.backend.attach_stream(managed_stream, target)
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
    in_use = any(getattr(stream, "managed_circuit", None) is managed and not stream.stream.ended
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


_HANDLERS: dict[str, tuple[Callable[[str], ControlArguments], Callable[..., bytes]]] = {
    "GETINFO": (_positional_only, _run_getinfo),
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


def event_for_new_consensus(relays: Iterable) -> bytes:
    """``650+NEWCONSENSUS`` with every entry in ns format, then ``650 OK``."""
    return encode_event(DataBlock("NEWCONSENSUS", "".join(ns_entry(relay) for relay in relays)))
