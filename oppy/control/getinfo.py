"""GETINFO: every key oppy answers, as tor 0.4.9's control_getinfo.c answers it (sans IO).

Each :class:`GetinfoKey` names a key (or a prefix) and the function that answers it from the session's
backend; :func:`run_getinfo` is the GETINFO command: one unknown key fails the whole command with 552,
an internal failure with 551, as in tor.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from oppy.config import OPTION_NAMES, Config, option_type_name
from oppy.control.codec import ControlArguments, DataBlock, line_safe, quote, reply
from oppy.control.commands import FEATURE_NAMES, INTERNAL_ERROR, OK, TOR_CLIENT_DEFAULTS, UNRECOGNIZED_ENTITY
from oppy.control.events import SETEVENTS_EVENT_NAMES, SIGNAL_CANONICAL_NAMES
from oppy.control.status import (
    bootstrap_phase_text,
    circuit_getinfo_status,
    circuit_status_entry,
    entry_guard_line,
    ns_entry,
    relays_ns_text,
    stream_getinfo_line,
)
from oppy.control.versions import UNKNOWN as UNKNOWN_VERSION_STATUS, version_status
from oppy.netdoc.documents import Consensus, RelayRecord
from oppy.netdoc.netdir import NetDir
from oppy.netdoc.relay import hex_identity
from oppy.path.guards import UNNAMED

if TYPE_CHECKING:
    from oppy.control.session import ControlSession

__all__ = ["GETINFO_KEYS", "GetinfoKey", "GetinfoFailed", "GetinfoUnavailable", "run_getinfo"]

# policies.c DEFAULT_EXIT_POLICY, which GETINFO exit-policy/default reports.
DEFAULT_EXIT_POLICY = ("reject *:25,reject *:119,reject *:135-139,reject *:445,reject *:563,reject *:1214,"
                       "reject *:4661-4666,reject *:6346-6429,reject *:6699,reject *:6881-6999,accept *:*")


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


def _gi_version(session: ControlSession, key: str) -> str | None:
    return session.hub.version


def _gi_config_file(session: ControlSession, key: str) -> str | None:
    return session.hub.backend.config_file()


def _gi_config_text(session: ControlSession, key: str) -> str | None:
    return _joined(session.hub.backend.config.to_torrc_lines())


def _gi_config_names(session: ControlSession, key: str) -> str | None:
    lines = [f"{name} {option_type_name(name)}" for name in OPTION_NAMES]
    lines += [f"{name} {kind}" for name, (kind, _) in TOR_CLIENT_DEFAULTS.items()]
    return _joined(lines)


def _gi_config_defaults(session: ControlSession, key: str) -> str | None:
    defaults = Config()
    lines = []
    for name in OPTION_NAMES:
        lines += [f"{name} {value}" for value in defaults.get_option(name)]
    for name, (_, values) in TOR_CLIENT_DEFAULTS.items():
        lines += [f"{name} {value}" for value in values]
    return _joined(lines)


def _gi_info_names(session: ControlSession, key: str) -> str | None:
    lines = sorted(f"{entry.name}{'*' if entry.is_prefix else ''} -- {entry.doc}" for entry in GETINFO_KEYS)
    return _joined(lines)


def _gi_events_names(session: ControlSession, key: str) -> str | None:
    return " ".join(SETEVENTS_EVENT_NAMES)


def _gi_signal_names(session: ControlSession, key: str) -> str | None:
    return " ".join(SIGNAL_CANONICAL_NAMES)


def _gi_features_names(session: ControlSession, key: str) -> str | None:
    return " ".join(FEATURE_NAMES)


def _gi_address(session: ControlSession, key: str) -> str | None:
    raise GetinfoFailed("Address unknown")


def _gi_fingerprint(session: ControlSession, key: str) -> str | None:
    raise GetinfoFailed("Not running in server mode")


def _gi_traffic(session: ControlSession, key: str) -> str | None:
    read, written = session.hub.backend.traffic()
    return str(read if key == "traffic/read" else written)


def _gi_bw_event_cache(session: ControlSession, key: str) -> str | None:
    return " ".join(f"{read},{written}" for read, written in session.hub.backend.bandwidth_history())


def _gi_uptime(session: ControlSession, key: str) -> str | None:
    return str(session.hub.backend.uptime())


def _gi_process(session: ControlSession, key: str) -> str | None:
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


def _gi_dormant(session: ControlSession, key: str) -> str | None:
    return "1" if session.hub.backend.is_dormant() else "0"


def _gi_current_time(session: ControlSession, key: str) -> str | None:
    now = time.time()
    moment = time.localtime(now) if key == "current-time/local" else time.gmtime(now)
    return time.strftime("%Y-%m-%dT%H:%M:%S", moment)


_LISTENER_KINDS = ("or", "extor", "dir", "socks", "trans", "natd", "httptunnel", "dns", "control", "metrics")


def _gi_listeners(session: ControlSession, key: str) -> str | None:
    kind = key[len("net/listeners/"):]
    if kind not in _LISTENER_KINDS:
        return None
    addresses = session.hub.backend.listeners(kind)
    return " ".join(quote(f"[{host}]:{port}" if ":" in host else f"{host}:{port}") for host, port in addresses)


def _gi_circuit_status(session: ControlSession, key: str) -> str | None:
    manager = session.hub.backend.manager
    lines = []
    for managed in sorted(manager.circuits.values(), key=lambda m: m.number):
        if managed.status.value in ("FAILED", "CLOSED"):
            continue
        lines.append(circuit_status_entry(managed, circuit_getinfo_status(managed)))
    return _joined(lines)


def _gi_stream_status(session: ControlSession, key: str) -> str | None:
    manager = session.hub.backend.manager
    lines = [line for managed in sorted(manager.streams.values(), key=lambda m: m.number)
             if (line := stream_getinfo_line(managed)) is not None]
    return _joined(lines)


def _gi_orconn_status(session: ControlSession, key: str) -> str | None:
    return _joined(session.hub.backend.orconn_lines())


def _gi_status(session: ControlSession, key: str) -> str | None:
    backend = session.hub.backend
    directory = backend.directory
    if key == "status/circuit-established":
        return "1" if backend.circuit_established() else "0"
    if key == "status/enough-dir-info":
        return "1" if directory.enough_dir_info else "0"
    if key == "status/bootstrap-phase":
        return bootstrap_phase_text(*directory.bootstrap_phase, directory.bootstrap_problem)
    if key in ("status/good-server-descriptor", "status/accepted-server-descriptor",
               "status/reachability-succeeded/or", "status/reachability-succeeded/dir"):
        return "0"
    if key == "status/reachability-succeeded":
        return "OR=0 DIR=0"
    if key in ("status/version/current", "status/version/recommended"):
        # The consensus's client-versions, and how the tor version oppy reports stands against it.
        consensus = _consensus(session)
        if key == "status/version/recommended":
            return consensus.client_versions if consensus is not None else "?"
        return version_status(session.hub.version, consensus.client_versions) if consensus is not None \
            else UNKNOWN_VERSION_STATUS
    if key == "status/clients-seen":
        raise GetinfoFailed("No bridge-client stats available")
    if key == "status/fresh-relay-descs":
        raise GetinfoFailed("Only relays have descriptors")
    return None


# control-spec GETINFO address-mappings/*: the lists tor keeps (MapAddress lines, cached DNS answers, a
# controller's MAPADDRESS; "all" is every one).
ADDRESS_MAPPING_KEYS = ("address-mappings/all", "address-mappings/config", "address-mappings/cache",
                        "address-mappings/control")


def _gi_address_mappings(session: ControlSession, key: str) -> str | None:
    """oppy keeps no address map yet (no MapAddress, MAPADDRESS or cached DNS answers): every list is empty,
    as a tor without mappings answers (txtorcon's TorState reads address-mappings/all)."""
    return "" if key in ADDRESS_MAPPING_KEYS else None


def _netdir(session: ControlSession) -> NetDir | None:
    return session.hub.backend.directory.netdir


def _consensus(session: ControlSession) -> Consensus | None:
    netdir = _netdir(session)
    return netdir.consensus if netdir is not None else None


def _gi_ns(session: ControlSession, key: str) -> str | None:
    consensus = _consensus(session)
    if key.startswith("ns/purpose/"):
        if key != "ns/purpose/general" and key != "ns/purpose/bridge":
            raise GetinfoFailed("Unrecognized purpose")
    if consensus is None:
        return ""
    if key == "ns/all" or key == "ns/purpose/general":
        return relays_ns_text(consensus.relays)
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


def _gi_consensus(session: ControlSession, key: str) -> str | None:
    consensus = _consensus(session)
    if key in ("consensus/valid-after", "consensus/fresh-until", "consensus/valid-until"):
        if consensus is None:
            raise GetinfoFailed("No consensus available")
        when = {"consensus/valid-after": consensus.valid_after, "consensus/fresh-until": consensus.fresh_until,
                "consensus/valid-until": consensus.valid_until}[key]
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when))
    if key == "consensus/packages":
        raise GetinfoFailed("No consensus available")
    return None


def _microdesc_of(session: ControlSession, relay: RelayRecord | None) -> str | None:
    if relay is None or not relay.microdesc_digest:
        return None
    return session.hub.backend.microdesc_body(relay.microdesc_digest)


def _gi_md(session: ControlSession, key: str) -> str | None:
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


def _gi_desc(session: ControlSession, key: str) -> str | None:
    if key == "desc/download-enabled":
        return "0"
    if key == "desc/all-recent":
        return ""
    which = "id" if key.startswith("desc/id/") else "name"
    raise GetinfoUnavailable(f"We fetch microdescriptors, not router descriptors. You'll need to use "
                             f"md/{which}/* instead of desc/{which}/*.")


def _gi_entry_guards(session: ControlSession, key: str) -> str | None:
    guards = session.hub.backend.paths.guards
    netdir = _netdir(session)
    lines = []
    for guard in guards.guards:
        if guards.uses_bridges:         # in no consensus: the nickname its descriptor gave, once it did
            nickname = guard.nickname if guard.nickname != UNNAMED else None
        else:
            relay = netdir.relay_by_fingerprint(guard.fingerprint) if netdir is not None else None
            nickname = relay.nickname if relay is not None else None
        lines.append(entry_guard_line(guard, nickname))
    return "".join(lines)


def _gi_exit_policy(session: ControlSession, key: str) -> str | None:
    if key == "exit-policy/default":
        return DEFAULT_EXIT_POLICY
    if key in ("exit-policy/full", "exit-policy/ipv4", "exit-policy/ipv6", "exit-policy/reject-private/relay"):
        raise GetinfoUnavailable("Not running in server mode")
    if key == "exit-policy/reject-private/default":
        return ("reject 0.0.0.0/8:*,reject 169.254.0.0/16:*,reject 127.0.0.0/8:*,reject 192.168.0.0/16:*,"
                "reject 10.0.0.0/8:*,reject 172.16.0.0/12:*,reject [::]/8:*,reject [fc00::]/7:*,"
                "reject [fe80::]/10:*,reject [fec0::]/10:*,reject [::]/127:*")
    return None


def _gi_accounting(session: ControlSession, key: str) -> str | None:
    if key == "accounting/enabled":
        return "0"
    raise GetinfoFailed("Accounting not enabled")


def _gi_ip_to_country(session: ControlSession, key: str) -> str | None:
    question = key[len("ip-to-country/"):]
    if question in ("ipv4-available", "ipv6-available"):
        return "0"
    import ipaddress

    try:
        ipaddress.ip_address(question)
    except ValueError:
        raise GetinfoFailed("Invalid address family") from None
    raise GetinfoFailed("GeoIP data not loaded")


def _gi_network_liveness(session: ControlSession, key: str) -> str | None:
    return "up" if session.hub.backend.circuit_established() else "down"


def _gi_onions(session: ControlSession, key: str) -> str | None:
    return ""


def _gi_limits(session: ControlSession, key: str) -> str | None:
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
    GetinfoKey("address-mappings/", True, "Current address mappings.", _gi_address_mappings),
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



def run_getinfo(session: ControlSession, args: ControlArguments, after) -> bytes:
    answers: list[str | DataBlock] = []
    unrecognized: list[str] = []
    for key in args.positional:
        entry = _find_getinfo_key(key)
        try:
            value = entry.answer(session, key) if entry is not None else None
        except GetinfoFailed as failure:
            return reply(INTERNAL_ERROR, [line_safe(str(failure))])
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

