"""oppy's options: tor's option names, value types and defaults, the Config they fill, and loading it.

A tor user's torrc works here for every option oppy supports, and fails with tor's own words for the
rest (``Unknown option 'Foo'.  Failing.``). References: tor(1) "THE CONFIGURATION FILE FORMAT";
C tor ``lib/confmgt/confmgt.c`` (repeats, ``+``/``/`` prefixes, empty values),
``lib/confmgt/unitparse.c`` (intervals) and ``app/config/config.c`` (ports, logs, defaults).

The core is sans-IO: :func:`config_from_lines` takes the lines :mod:`oppy.config.torrc` and
:mod:`oppy.config.command_line` read. Only :func:`load_config_from_source` touches the file system.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oppy.config.bridges import BridgeLine, parse_bridge_line
from oppy.config.torrc import ConfigLine, LineCommand, parse_torrc_text, quote_value, read_torrc_file
from oppy.config.values import (
    MAX_DECIMAL_DIGITS,
    MAX_SHOWN,
    TOR_SPACE,
    ConfigError,
    UnknownOptionError,
    ascii_lower,
    parse_decimal,
    shortened,
    split_words,
)
from oppy.crypto.s2k import HashedPasswordFormatError, decode_hashed_password
from oppy.logs import SEVERITIES, LogSpec
from oppy.netdoc.authorities import parse_dir_authority_line, parse_fallback_dir_line
from oppy.pt.plugin import TransportPlugin, parse_transport_plugin_line
from oppy.pt.protocol import TransportProtocolError

__all__ = [
    "PortConfig",
    "ConfigSource",
    "Config",
    "OPTION_NAMES",
    "config_from_lines",
    "config_from_torrc_text",
    "load_config_from_source",
    "reload_config",
    "AUTO_PORT",
    "ISOLATION_FLAGS",
    "DEFAULT_SOCKS_FLAGS",
    "canonical_option_name",
    "option_type_name",
    "parse_interval",
    "parse_memunit",
    "DEFAULT_LONG_LIVED_PORTS",
]


# --------------------------------------------------------------------------- value types

# unitparse.c time_units: interval units and their length in seconds.
_TIME_UNITS = {
    "": 1, "second": 1, "seconds": 1,
    "minute": 60, "minutes": 60,
    "hour": 3600, "hours": 3600,
    "day": 86400, "days": 86400,
    "week": 7 * 86400, "weeks": 7 * 86400,
    "month": 2629728, "months": 2629728,  # about 30.437 days
}
# type_defs.c: intervals and integers are C ints.
_INT_MAX = 2**31 - 1
# unitparse.c config_parse_units: ASCII digits (a fraction allowed), optional TOR_ISSPACE, a unit.
_INTERVAL_RE = re.compile(r"([0-9]*)(\.[0-9]*)?[ \t\n\r\v\f]*([A-Za-z]*)")


def _bad(name: str, value: str, reason: str) -> ConfigError:
    return ConfigError(f"Could not parse {name} '{shortened(value)}': {shortened(reason, 2 * MAX_SHOWN)}",
                       option=name, value=value)


def _scaled_number(value: str, name: str, units: dict[str, int], maximum: int, *, what: str, example: str,
                   unit_names: str, too_large: str) -> int:
    """unitparse.c config_parse_units: a number of ASCII digits (a fraction allowed) and an optional unit
    from ``units``, as the number of base units (seconds, bytes) it makes, at most ``maximum``."""
    match = _INTERVAL_RE.fullmatch(value.strip(TOR_SPACE))
    if not match or (match.group(1) == "" and len(match.group(2) or "") < 2):  # no digit at all
        raise _bad(name, value, f"expected a number of {what}, or a number and a unit such as '{example}'")
    whole, fraction, unit = match.groups()
    multiplier = units.get(unit.lower())
    if multiplier is None:
        raise _bad(name, value, f"unknown unit '{unit}' (use {unit_names})")
    whole = whole.lstrip("0") or "0"
    if len(whole) > MAX_DECIMAL_DIGITS:
        raise _bad(name, value, too_large)
    result = int(float(whole + fraction) * multiplier) if fraction else int(whole) * multiplier
    if result > maximum:
        raise _bad(name, value, too_large)
    return result


def parse_interval(value: str, name: str = "interval") -> int:
    """Seconds in a tor interval such as ``600``, ``10 minutes``, ``1.5 hours`` (unitparse.c)."""
    return _scaled_number(value, name, _TIME_UNITS, _INT_MAX, what="seconds", example="10 minutes",
                          unit_names="seconds, minutes, hours, days, weeks or months",
                          too_large="the interval is too long")


def _memory_units() -> dict[str, int]:
    """unitparse.c memory_units: data size units (matched case-insensitively) and their size in bytes; a
    *bit unit is an eighth of its *byte one, and a bare "m" means megabytes."""
    units = {"": 1, "b": 1, "byte": 1, "bytes": 1, "m": 1 << 20}
    for shift, prefix, letter in ((10, "kilo", "k"), (20, "mega", "m"), (30, "giga", "g"), (40, "tera", "t")):
        for name in (f"{letter}b", f"{letter}byte", f"{letter}bytes", f"{prefix}byte", f"{prefix}bytes"):
            units[name] = 1 << shift
        for name in (f"{prefix}bits", f"{prefix}bit", f"{letter}bits", f"{letter}bit"):
            units[name] = 1 << (shift - 3)
    return units


_MEMORY_UNITS = _memory_units()
_UINT64_MAX = 2**64 - 1


def parse_memunit(value: str, name: str = "size") -> int:
    """Bytes in a tor data size such as ``8 GB``, ``512 MBytes``, ``1.5 gigabytes`` or ``100 kbits``
    (unitparse.c config_parse_memunit)."""
    return _scaled_number(value, name, _MEMORY_UNITS, _UINT64_MAX, what="bytes", example="512 MB",
                          unit_names="bytes, KB, MB, GB or TB", too_large="the size is too large")


def _parse_memunit_option(name: str, value: str) -> int:
    return parse_memunit(value, name)


def _parse_bool(name: str, value: str) -> bool:
    if value not in ("0", "1"):
        raise _bad(name, value, "allowed values are 0 and 1")
    return value == "1"


def _encode_bool(value: bool) -> list[str]:
    return ["1" if value else "0"]


def _parse_auto_bool(name: str, value: str) -> bool | None:
    """tor's Boolean+Auto: 0, 1 or auto (None)."""
    if value.lower() == "auto":
        return None
    if value not in ("0", "1"):
        raise _bad(name, value, "allowed values are 0, 1, and auto")
    return value == "1"


def _encode_auto_bool(value: bool | None) -> list[str]:
    return ["auto"] if value is None else _encode_bool(value)


def _int_parser(minimum: int, maximum: int) -> Callable[[str, str], int]:
    def parse(name: str, value: str) -> int:
        number = parse_decimal(value, minimum, maximum)
        if number is None:
            raise _bad(name, value, f"expected an integer between {minimum} and {maximum}")
        return number

    return parse


def _encode_int(value: int) -> list[str]:
    return [str(value)]


#: tor(1) LongLivedPorts: the default list (tor config.c), ports whose connections last long enough that
#: every relay of their circuit should be Stable (path-spec 2.2).
DEFAULT_LONG_LIVED_PORTS = frozenset({21, 22, 706, 1863, 5050, 5190, 5222, 5223, 6523, 6667, 6697, 8300})


def _parse_long_lived_ports(name: str, value: str) -> frozenset[int]:
    """A tor CSV of ports (``LongLivedPorts 21, 22,6667``): each 1-65535, empty items skipped as tor's
    smartlist_split_string(SPLIT_SKIP_SPACE|SPLIT_IGNORE_BLANK) does; an empty value is the default, as
    every empty value in tor's confmgr is."""
    ports = set()
    for item in value.split(","):
        item = item.strip(TOR_SPACE)
        if not item:
            continue
        port = parse_decimal(item, 1, _MAX_PORT)
        if port is None:
            raise _bad(name, value, f"{shortened(item)!r} is not a port between 1 and {_MAX_PORT}")
        ports.add(port)
    return frozenset(ports) if ports else DEFAULT_LONG_LIVED_PORTS


def _encode_port_set(ports: frozenset[int]) -> list[str]:
    return [",".join(str(port) for port in sorted(ports))]


def _encode_optional_string(value: str | None) -> list[str]:
    return [] if value is None else [value]


def _parse_filename(name: str, value: str) -> str:
    if "\0" in value:
        raise _bad(name, value, "a file name cannot contain NUL")
    return value


def _parse_interval_option(name: str, value: str) -> int:
    return parse_interval(value, name)


# config.c MIN_MAX_CIRCUIT_DIRTINESS / MAX_MAX_CIRCUIT_DIRTINESS: tor raises or lowers the value to these.
MIN_MAX_CIRCUIT_DIRTINESS = 10
MAX_MAX_CIRCUIT_DIRTINESS = 30 * 24 * 3600
# config.c RECOMMENDED_MIN_CIRCUIT_BUILD_TIMEOUT: tor warns below this when LearnCircuitBuildTimeout is 0.
RECOMMENDED_MIN_CIRCUIT_BUILD_TIMEOUT = 10
# config.c MAX_MAX_CLIENT_CIRCUITS_PENDING.
MAX_MAX_CLIENT_CIRCUITS_PENDING = 1024


# tor(1) ConfluxClientUX: the values config.c accepts (compared as written), the first the default.
CONFLUX_CLIENT_UX_VALUES = ("throughput", "latency", "throughput_lowmem", "latency_lowmem")


def _parse_conflux_client_ux(name: str, value: str) -> str:
    if value not in CONFLUX_CLIENT_UX_VALUES:
        raise _bad(name, value, "ConfluxClientUX must be 'latency', 'throughput', 'latency_lowmem', or "
                                "'throughput_lowmem'")
    return value


def _parse_safe_logging(name: str, value: str) -> str:
    lowered = ascii_lower(value)
    if lowered not in ("0", "1", "relay"):
        raise _bad(name, value, "allowed values are 0, 1 and relay")
    return lowered


def _parse_hashed_password(name: str, value: str) -> str:
    try:
        decode_hashed_password(value)
    except HashedPasswordFormatError:
        raise _bad(name, value, "wrong length or bad encoding (make one with oppy --hash-password)") from None
    return value


# procmon.c parse_process_specifier: a pid is tor_parse_long(..., 1, LONG_MAX).
_MAX_PID = 2**63 - 1


def _parse_pid(name: str, value: str) -> str:
    if parse_decimal(value, 1, _MAX_PID) is None:
        raise _bad(name, value, "expected a process id")
    return value


def _validated_directory_line(kind: str) -> Callable[[str, str], str]:
    """Keep DirAuthority / FallbackDir lines raw, but refuse the malformed ones now (with netdoc's parser,
    the one the directory layer reads them with) so that ``--verify-config`` catches them."""
    parser = parse_dir_authority_line if kind == "authority" else parse_fallback_dir_line

    def parse(name: str, value: str) -> str:
        try:
            parser(value)
        except ValueError as exc:
            raise _bad(name, value, str(exc)) from None
        return value

    return parse


def _parse_transport_plugins(name: str, values: list[str]) -> tuple[TransportPlugin, ...]:
    """ClientTransportPlugin lines, parsed with the pluggable-transport layer's own reader."""
    plugins = []
    for value in values:
        try:
            plugins.append(parse_transport_plugin_line(value))
        except TransportProtocolError as exc:
            raise _bad(name, value, str(exc)) from None
    return tuple(plugins)


def _encode_transport_plugins(plugins: tuple[TransportPlugin, ...]) -> list[str]:
    return [plugin.line for plugin in plugins]


# --------------------------------------------------------------------------- ports

# or.h ISO_* and tor(1) SocksPort: the flags a client port understands, and the ones on by default.
ISOLATION_FLAGS = frozenset({"IsolateClientAddr", "IsolateSOCKSAuth", "IsolateClientProtocol",
                             "IsolateDestPort", "IsolateDestAddr"})
_SOCKS_FLAG_NAMES = (
    *sorted(ISOLATION_FLAGS),
    "KeepAliveIsolateSOCKSAuth", "IPv4Traffic", "IPv6Traffic", "PreferIPv6", "DNSRequest", "OnionTraffic",
    "CacheIPv4DNS", "CacheIPv6DNS", "UseIPv4Cache", "UseIPv6Cache", "PreferIPv6Automap", "PreferSOCKSNoAuth",
    "ExtendedErrors",
)
_SOCKS_FLAGS_BY_LOWER = {flag.lower(): flag for flag in _SOCKS_FLAG_NAMES}
# config.c port_cfg_new: the flags a client port has before its line says anything.
DEFAULT_SOCKS_FLAGS = frozenset({"IsolateClientAddr", "IsolateSOCKSAuth", "IPv4Traffic", "IPv6Traffic",
                                 "DNSRequest", "OnionTraffic", "PreferIPv6Automap"})
# Flag words that stand for several flags (config.c port_parse_config).
_FLAG_GROUPS = {"cachedns": ("CacheIPv4DNS", "CacheIPv6DNS"), "usednscache": ("UseIPv4Cache", "UseIPv6Cache")}
_UNIX_ONLY_FLAGS = frozenset({"groupwritable", "worldwritable", "relaxdirmodecheck"})
# tor(1): SocksPort defaults to 9050 and client ports listen on 127.0.0.1 unless an address is given.
DEFAULT_SOCKS_PORT = 9050
DEFAULT_LISTEN_ADDRESS = "127.0.0.1"
AUTO_PORT = 0  # a listener whose port the operating system picks ("auto")
_MAX_PORT = 65535


@dataclass(frozen=True)
class PortConfig:
    """One SocksPort or ControlPort listener.

    ``port`` 0 means ``auto`` (the operating system picks; ``SocksPort 0`` itself disables the option
    and leaves no PortConfig). ``flags`` is the set of flags in effect once tor's defaults and the
    line's ``Flag`` / ``NoFlag`` words are applied, e.g. ``"IsolateDestAddr" in port.flags``.
    ``value`` is the torrc text, given back by GETCONF.
    """

    address: str
    port: int
    flags: frozenset[str] = frozenset()
    session_group: int | None = None
    value: str = ""

    @property
    def is_auto(self) -> bool:
        return self.port == AUTO_PORT

    @property
    def isolation(self) -> frozenset[str]:
        """The Isolate* flags in effect."""
        return self.flags & ISOLATION_FLAGS

    @property
    def is_loopback(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback


def _parse_listen_address(name: str, value: str, text: str) -> tuple[str, int | None]:
    """``ADDR:PORT``, ``[V6]:PORT`` or an address alone (port None)."""
    host, port_text = text, None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise _bad(name, value, f"unterminated IPv6 address in '{text}'")
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise _bad(name, value, f"could not parse address '{text}'")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if ascii_lower(host) == "localhost":
        host = DEFAULT_LISTEN_ADDRESS
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise _bad(name, value, f"could not parse address '{host}' (oppy needs an IP address)") from None
    if port_text is None:
        return address, None
    if ascii_lower(port_text) == "auto":
        return address, AUTO_PORT
    port = parse_decimal(port_text, 1, _MAX_PORT)
    if port is None:
        raise _bad(name, value, f"port '{shortened(port_text, 10)}' out of range (1-{_MAX_PORT})")
    return address, port


def _parse_port_line(name: str, value: str, *, client_flags: bool) -> PortConfig | None:
    """One SocksPort/ControlPort value (config.c port_parse_config); None for ``0``."""
    words = split_words(value)
    if not words:
        raise _bad(name, value, "no address or port")
    addrport, flag_words = words[0], words[1:]
    if ascii_lower(addrport).startswith("unix:"):
        raise _bad(name, value, "oppy does not support unix sockets")
    if ascii_lower(addrport) == "auto":
        address, port = DEFAULT_LISTEN_ADDRESS, AUTO_PORT
    elif addrport.isascii() and addrport.isdigit():
        number = parse_decimal(addrport, 0, _MAX_PORT)
        if number is None:
            raise _bad(name, value, f"port out of range (0-{_MAX_PORT})")
        address, port = DEFAULT_LISTEN_ADDRESS, number
        if port == 0:
            if flag_words:
                raise _bad(name, value, "a disabled port takes no flags")
            return None
    else:
        address, explicit_port = _parse_listen_address(name, value, addrport)
        if explicit_port is None:
            raise _bad(name, value, "address but no port")
        port = explicit_port
    flags = set(DEFAULT_SOCKS_FLAGS) if client_flags else set()
    session_group = None
    for word in flag_words:
        lowered = ascii_lower(word)
        if lowered.startswith("sessiongroup=") and client_flags:
            group = parse_decimal(word[len("SessionGroup="):], 0, _INT_MAX)
            if group is None:
                raise _bad(name, value, "invalid SessionGroup")
            if session_group is not None:
                raise _bad(name, value, "more than one SessionGroup")
            session_group = group
            continue
        negated = lowered.startswith("no")
        base = lowered[2:] if negated else lowered
        if base in _UNIX_ONLY_FLAGS:
            raise _bad(name, value, f"'{word}' applies to unix sockets only")
        if not client_flags:
            raise _bad(name, value, f"unrecognized {name} option '{word}'")
        if base == "oniontrafficonly":
            if negated:
                raise _bad(name, value, "NoOnionTrafficOnly is not supported; use DNSRequest, IPv4Traffic "
                                        "and/or IPv6Traffic")
            flags -= {"IPv4Traffic", "IPv6Traffic", "DNSRequest"}
            continue
        if base in _FLAG_GROUPS:
            targets: Sequence[str] = _FLAG_GROUPS[base]
        else:
            canonical = _SOCKS_FLAGS_BY_LOWER.get(base)
            if canonical is None and base.endswith("s"):  # tor accepts plurals: IsolateDestAddrs
                canonical = _SOCKS_FLAGS_BY_LOWER.get(base[:-1])
            if canonical is None:
                raise _bad(name, value, f"unrecognized {name} option '{word}'")
            targets = (canonical,)
        if negated:
            flags.difference_update(targets)
        else:
            flags.update(targets)
    if client_flags:
        if not flags & {"IPv4Traffic", "IPv6Traffic", "OnionTraffic"}:
            raise _bad(name, value, "IPv4, IPv6 and .onion are all disabled; that won't work")
        if "DNSRequest" in flags and not flags & {"IPv4Traffic", "IPv6Traffic"}:
            raise _bad(name, value, "DNSRequest is enabled but IPv4 and IPv6 are disabled")
        if "KeepAliveIsolateSOCKSAuth" in flags and "IsolateSOCKSAuth" not in flags:
            raise _bad(name, value, "both NoIsolateSOCKSAuth and KeepAliveIsolateSOCKSAuth are set")
        if "IsolateSOCKSAuth" not in flags:
            flags.add("PreferSOCKSNoAuth")  # as tor does: nothing to isolate on, so prefer no auth
    return PortConfig(address, port, frozenset(flags), session_group, value)


def _port_list_parser(client_flags: bool) -> Callable[[str, list[str]], tuple[PortConfig, ...]]:
    def parse(name: str, values: list[str]) -> tuple[PortConfig, ...]:
        ports = [_parse_port_line(name, value, client_flags=client_flags) for value in values]
        listeners = tuple(port for port in ports if port is not None)
        if listeners and len(listeners) != len(ports):
            raise ConfigError(f"You specified a nonzero {name} along with '{name} 0' in the same "
                              f"configuration. Did you mean to disable {name} or not?", option=name)
        return listeners

    return parse


DEFAULT_SOCKS_PORT_CONFIG = PortConfig(DEFAULT_LISTEN_ADDRESS, DEFAULT_SOCKS_PORT, DEFAULT_SOCKS_FLAGS, None,
                                       str(DEFAULT_SOCKS_PORT))


def _encode_socks_ports(ports: tuple[PortConfig, ...]) -> list[str]:
    return [port.value or f"{_format_addrport(port)}" for port in ports] or ["0"]


def _encode_control_ports(ports: tuple[PortConfig, ...]) -> list[str]:
    return [port.value or f"{_format_addrport(port)}" for port in ports]


def _format_addrport(port: PortConfig) -> str:
    host = f"[{port.address}]" if ":" in port.address else port.address
    return f"{host}:{'auto' if port.is_auto else port.port}"


# --------------------------------------------------------------------------- automapping


DEFAULT_AUTOMAP_SUFFIXES = (".onion", ".exit")
# tor(1) VirtualAddrNetworkIPv4 / VirtualAddrNetworkIPv6: the defaults.
DEFAULT_VIRTUAL_NETWORK_IPV4 = "127.192.0.0/10"
DEFAULT_VIRTUAL_NETWORK_IPV6 = "fe80::/10"
# addressmap.c parse_virtual_addr_network: the longest prefix (the smallest network) each family takes.
MAX_VIRTUAL_NETWORK_PREFIX_IPV4 = 16
MAX_VIRTUAL_NETWORK_PREFIX_IPV6 = 104


def _parse_suffixes(name: str, value: str) -> tuple[str, ...]:
    """A CSV list (confmgt type CSV): the AutomapHostsSuffixes, each a name ending such as ``.onion``; a list of
    nothing is the default, as every empty value in tor's confmgr is."""
    return tuple(item.strip(TOR_SPACE) for item in value.split(",") if item.strip(TOR_SPACE)) \
        or DEFAULT_AUTOMAP_SUFFIXES


def _virtual_network_parser(version: int) -> Callable[[str, str], str]:
    """addressmap.c parse_virtual_addr_network: a network of the family, of at most /16 (IPv4) or /104 (IPv6)."""
    suffix = "IPv6" if version == 6 else ""
    max_prefix = MAX_VIRTUAL_NETWORK_PREFIX_IPV6 if version == 6 else MAX_VIRTUAL_NETWORK_PREFIX_IPV4

    def parse(name: str, value: str) -> str:
        text = value.strip(TOR_SPACE)
        if text.startswith("[") and "]" in text:  # tor writes "[FE80::]/10"
            text = text[1:text.index("]")] + text[text.index("]") + 1:]
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise _bad(name, value, f"Error parsing VirtualAddressNetwork{suffix} {value}") from None
        if network.version != version:
            raise _bad(name, value, f"Incorrect address type for VirtualAddressNetwork{suffix}")
        if network.prefixlen > max_prefix:
            raise _bad(name, value, f"VirtualAddressNetwork{suffix} expects a /{max_prefix} network or larger")
        return str(network)

    return parse


# --------------------------------------------------------------------------- logs

# A Log line's value is an oppy.logs.LogSpec: the logging layer, at the bottom, owns the type.


def _parse_log_value(name: str, value: str) -> LogSpec:
    """``[min[-max]] [stdout|stderr|file PATH]`` (config.c options_init_logs, log.c
    parse_log_severity_config). Domains (``[net]info``) and syslog are tor features oppy lacks."""
    text = value.strip(TOR_SPACE)
    if text.startswith("["):
        raise _bad(name, value, "log domains ([domain]severity) are not supported by oppy")
    words = split_words(text, 1)
    if not words:
        raise _bad(name, value, "no severity")
    severity_word = words[0]
    rest = words[1] if len(words) > 1 else ""
    low, _, high = severity_word.partition("-")
    high = high or "err"
    for level in (low, high):
        if ascii_lower(level) not in SEVERITIES:
            raise _bad(name, value, f"unknown severity '{level}' (expected one of {', '.join(SEVERITIES)})")
    low, high = low.lower(), high.lower()
    if SEVERITIES.index(low) > SEVERITIES.index(high):
        raise _bad(name, value, f"the range {severity_word} is empty (write the less severe level first)")
    destination_words = split_words(rest, 1)
    destination = ascii_lower(destination_words[0]) if destination_words else "stdout"
    if destination in ("stdout", "stderr"):
        if len(destination_words) > 1:
            raise _bad(name, value, f"unexpected '{destination_words[1]}' after {destination}")
        return LogSpec(low, high, destination, None, value)
    if destination == "file":
        if len(destination_words) < 2:
            raise _bad(name, value, "'file' needs a file name")
        if "\0" in destination_words[1]:
            raise _bad(name, value, "a file name cannot contain NUL")
        return LogSpec(low, high, "file", destination_words[1], value)
    if destination == "syslog":
        raise _bad(name, value, "oppy does not support syslog; use stdout, stderr or file")
    if "-" in destination or destination in SEVERITIES or destination.startswith("["):
        raise _bad(name, value, "more than one severity range (log domains are not supported by oppy)")
    raise _bad(name, value, f"unknown destination '{destination_words[0]}' (expected stdout, stderr or file)")


def _parse_logs(name: str, values: list[str]) -> tuple[LogSpec, ...]:
    return tuple(_parse_log_value(name, value) for value in values)


DEFAULT_LOG = LogSpec("notice", "err", "stdout", None, "notice stdout")


def _encode_logs(logs: tuple[LogSpec, ...]) -> list[str]:
    return [log.value or _format_log(log) for log in logs]


def _format_log(log: LogSpec) -> str:
    severity = log.min_severity if log.max_severity == "err" else f"{log.min_severity}-{log.max_severity}"
    return f"{severity} {log.destination}" + (f" {log.path}" if log.path is not None else "")


# --------------------------------------------------------------------------- bridges


def _parse_bridges(name: str, values: list[str]) -> tuple[BridgeLine, ...]:
    return tuple(parse_bridge_line(value) for value in values)


def _encode_bridges(bridges: tuple[BridgeLine, ...]) -> list[str]:
    return [bridge.value or bridge.to_line() for bridge in bridges]


# --------------------------------------------------------------------------- the option table


@dataclass(frozen=True)
class _Option:
    """How one torrc option maps onto a Config field."""

    name: str  # tor's spelling
    field: str
    type_name: str  # tor's name for the type, as GETINFO config/names lists it
    parse: Callable[[str, Any], Any]  # (name, value or list of values) -> typed value
    encode: Callable[[Any], list[str]]
    default: Callable[[bool], Any]  # testing_tor_network -> default value
    is_list: bool = False
    changeable_at_runtime: bool = True
    dumpable: bool = True  # tor's CFLG_NODUMP: __Options are never written out


def _constant(value: Any) -> Callable[[bool], Any]:
    return lambda testing: value


def _testing_default(normal: Any, testing: Any) -> Callable[[bool], Any]:
    """tor(1) TestingTorNetwork: on a test network some defaults change."""
    return lambda is_testing: testing if is_testing else normal


def _validated_lines(line_parser: Callable[[str, str], str]) -> Callable[[str, list[str]], tuple[str, ...]]:
    return lambda name, values: tuple(line_parser(name, value) for value in values)


def _encode_lines(values: tuple[str, ...]) -> list[str]:
    return list(values)


_OPTIONS: tuple[_Option, ...] = (
    _Option("SocksPort", "socks_ports", "LineList", _port_list_parser(client_flags=True), _encode_socks_ports,
            _constant((DEFAULT_SOCKS_PORT_CONFIG,)), is_list=True),
    _Option("ControlPort", "control_ports", "LineList", _port_list_parser(client_flags=False),
            _encode_control_ports, _constant(()), is_list=True),
    _Option("HTTPTunnelPort", "http_tunnel_ports", "LineList", _port_list_parser(client_flags=True),
            _encode_control_ports, _constant(()), is_list=True),
    _Option("DNSPort", "dns_ports", "LineList", _port_list_parser(client_flags=True), _encode_control_ports,
            _constant(()), is_list=True),
    _Option("AutomapHostsOnResolve", "automap_hosts_on_resolve", "Boolean", _parse_bool, _encode_bool,
            _constant(False)),
    _Option("AutomapHostsSuffixes", "automap_hosts_suffixes", "CommaList", _parse_suffixes,
            lambda value: [",".join(value)], _constant(DEFAULT_AUTOMAP_SUFFIXES)),
    _Option("VirtualAddrNetworkIPv4", "virtual_addr_network_ipv4", "String", _virtual_network_parser(4),
            lambda value: [value], _constant(DEFAULT_VIRTUAL_NETWORK_IPV4), changeable_at_runtime=False),
    _Option("VirtualAddrNetworkIPv6", "virtual_addr_network_ipv6", "String", _virtual_network_parser(6),
            lambda value: [value], _constant(DEFAULT_VIRTUAL_NETWORK_IPV6), changeable_at_runtime=False),
    _Option("DataDirectory", "data_directory", "Filename", _parse_filename, lambda value: [value],
            _constant("~/.oppy"), changeable_at_runtime=False),
    _Option("DirAuthority", "dir_authorities", "LineList", _validated_lines(_validated_directory_line("authority")),
            _encode_lines, _constant(()), is_list=True),
    _Option("FallbackDir", "fallback_dirs", "LineList", _validated_lines(_validated_directory_line("fallback")),
            _encode_lines, _constant(()), is_list=True),
    _Option("ClientTransportPlugin", "client_transport_plugins", "LineList", _parse_transport_plugins,
            _encode_transport_plugins, _constant(()), is_list=True, changeable_at_runtime=False),
    _Option("UseDefaultFallbackDirs", "use_default_fallback_dirs", "Boolean", _parse_bool, _encode_bool,
            _constant(True)),
    _Option("TestingTorNetwork", "testing_tor_network", "Boolean", _parse_bool, _encode_bool, _constant(False),
            changeable_at_runtime=False),
    _Option("Log", "logs", "LineList", _parse_logs, _encode_logs, _constant((DEFAULT_LOG,)), is_list=True),
    _Option("LongLivedPorts", "long_lived_ports", "CommaList", _parse_long_lived_ports, _encode_port_set,
            _constant(DEFAULT_LONG_LIVED_PORTS)),
    _Option("MaxCircuitDirtiness", "max_circuit_dirtiness", "TimeInterval", _parse_interval_option, _encode_int,
            _constant(600)),
    _Option("LearnCircuitBuildTimeout", "learn_circuit_build_timeout", "Boolean", _parse_bool, _encode_bool,
            _constant(True)),
    _Option("CircuitBuildTimeout", "circuit_build_timeout", "TimeInterval", _parse_interval_option, _encode_int,
            _constant(0)),
    _Option("SocksTimeout", "socks_timeout", "TimeInterval", _parse_interval_option, _encode_int,
            _constant(120)),
    _Option("CookieAuthentication", "cookie_authentication", "Boolean", _parse_bool, _encode_bool,
            _constant(False)),
    _Option("CookieAuthFile", "cookie_auth_file", "Filename", _parse_filename, _encode_optional_string,
            _constant(None)),
    _Option("HashedControlPassword", "hashed_control_passwords", "LineList",
            _validated_lines(_parse_hashed_password), _encode_lines, _constant(()), is_list=True),
    _Option("ClientRejectInternalAddresses", "client_reject_internal_addresses", "Boolean", _parse_bool,
            _encode_bool, _testing_default(True, False)),
    _Option("EnforceDistinctSubnets", "enforce_distinct_subnets", "Boolean", _parse_bool, _encode_bool,
            _testing_default(True, False)),
    _Option("SafeLogging", "safe_logging", "String", _parse_safe_logging, lambda value: [value], _constant("1")),
    _Option("MaxClientCircuitsPending", "max_client_circuits_pending", "Integer", _int_parser(0, _INT_MAX),
            _encode_int, _constant(32)),
    _Option("MaxSocksConnections", "max_socks_connections", "Integer", _int_parser(1, _INT_MAX), _encode_int,
            _constant(4096)),
    _Option("SafeSocks", "safe_socks", "Boolean", _parse_bool, _encode_bool, _constant(False)),
    _Option("TestSocks", "test_socks", "Boolean", _parse_bool, _encode_bool, _constant(False)),
    _Option("ConnectionPadding", "connection_padding", "Boolean+Auto", _parse_auto_bool, _encode_auto_bool,
            _constant(None)),
    _Option("ReducedConnectionPadding", "reduced_connection_padding", "Boolean", _parse_bool, _encode_bool,
            _constant(False)),
    _Option("CircuitPadding", "circuit_padding", "Boolean", _parse_bool, _encode_bool, _constant(True)),
    _Option("ReducedCircuitPadding", "reduced_circuit_padding", "Boolean", _parse_bool, _encode_bool,
            _constant(False)),
    _Option("VanguardsLiteEnabled", "vanguards_lite_enabled", "Boolean+Auto", _parse_auto_bool, _encode_auto_bool,
            _constant(None)),
    _Option("ClientOnionAuthDir", "client_onion_auth_dir", "Filename", _parse_filename, _encode_optional_string,
            _constant(None), changeable_at_runtime=False),
    _Option("ConfluxEnabled", "conflux_enabled", "Boolean+Auto", _parse_auto_bool, _encode_auto_bool,
            _constant(None)),
    _Option("ConfluxClientUX", "conflux_client_ux", "String", _parse_conflux_client_ux, lambda value: [value],
            _constant(CONFLUX_CLIENT_UX_VALUES[0])),
    _Option("MaxMemInQueues", "max_mem_in_queues", "DataSize", _parse_memunit_option, _encode_int, _constant(0),
            changeable_at_runtime=False),
    _Option("UseBridges", "use_bridges", "Boolean", _parse_bool, _encode_bool, _constant(False),
            changeable_at_runtime=False),
    _Option("Bridge", "bridges", "LineList", _parse_bridges, _encode_bridges, _constant(()), is_list=True,
            changeable_at_runtime=False),
    _Option("__LeaveStreamsUnattached", "leave_streams_unattached", "Boolean", _parse_bool, _encode_bool,
            _constant(False), dumpable=False),
    _Option("__OwningControllerProcess", "owning_controller_process", "String", _parse_pid,
            _encode_optional_string, _constant(None), dumpable=False),
)
_OPTIONS_BY_LOWER = {option.name.lower(): option for option in _OPTIONS}
#: Every option oppy understands, in tor's spelling.
OPTION_NAMES: tuple[str, ...] = tuple(option.name for option in _OPTIONS)


def _lookup(name: str) -> _Option:
    option = _OPTIONS_BY_LOWER.get(ascii_lower(name))
    if option is None:
        raise UnknownOptionError(name)
    return option


def canonical_option_name(name: str) -> str:
    """tor's spelling of an option name given in any case; UnknownOptionError if oppy lacks it."""
    return _lookup(name).name


def option_type_name(name: str) -> str:
    """tor's type name for an option (``Boolean``, ``TimeInterval``, ``LineList``...), for config/names."""
    return _lookup(name).type_name


# --------------------------------------------------------------------------- the Config


@dataclass(frozen=True)
class ConfigSource:
    """Where a Config came from, so that a reload (SIGHUP, SIGNAL RELOAD) reads the same things again."""

    torrc_path: str | None = None
    command_line: tuple[ConfigLine, ...] = ()
    log_level: str | None = None


@dataclass(eq=True)
class Config:
    """Every option oppy supports, typed, with tor's defaults. Times are whole seconds."""

    #: SocksPort: the SOCKS listeners; default 127.0.0.1:9050; ``SocksPort 0`` leaves none.
    socks_ports: tuple[PortConfig, ...] = (DEFAULT_SOCKS_PORT_CONFIG,)
    #: ControlPort: the control-port listeners; none by default.
    control_ports: tuple[PortConfig, ...] = ()
    #: HTTPTunnelPort: listeners for HTTP CONNECT clients, with a SocksPort's isolation flags; none by default.
    http_tunnel_ports: tuple[PortConfig, ...] = ()
    #: DNSPort: UDP listeners answering A, AAAA and PTR queries through Tor; none by default.
    dns_ports: tuple[PortConfig, ...] = ()
    #: AutomapHostsOnResolve: a name with one of AutomapHostsSuffixes resolves to a virtual address that stands
    #: for it (connecting to that address connects to the name through Tor).
    automap_hosts_on_resolve: bool = False
    #: AutomapHostsSuffixes: the name endings automapped ("." for every name).
    automap_hosts_suffixes: tuple[str, ...] = DEFAULT_AUTOMAP_SUFFIXES
    #: VirtualAddrNetworkIPv4 / IPv6: where automapped addresses come from.
    virtual_addr_network_ipv4: str = DEFAULT_VIRTUAL_NETWORK_IPV4
    virtual_addr_network_ipv6: str = DEFAULT_VIRTUAL_NETWORK_IPV6
    #: DataDirectory, as written (``~`` expanded by :meth:`data_directory_path`).
    data_directory: str = "~/.oppy"
    #: DirAuthority lines, raw; empty means tor's built-in authorities.
    dir_authorities: tuple[str, ...] = ()
    #: FallbackDir lines, raw: relays asked for the directory before the authorities.
    fallback_dirs: tuple[str, ...] = ()
    #: ClientTransportPlugin lines: the pluggable transports' proxies, run by oppy (``exec``) or external.
    client_transport_plugins: tuple[TransportPlugin, ...] = ()
    #: UseDefaultFallbackDirs: with tor's built-in authorities and no FallbackDir line, use tor's built-in
    #: fallbacks (tor config.c consider_adding_dir_servers).
    use_default_fallback_dirs: bool = True
    #: TestingTorNetwork: a private test network (needs DirAuthority lines); changes two defaults below.
    testing_tor_network: bool = False
    #: Log: where messages of which severities go; default ``notice stdout``.
    logs: tuple[LogSpec, ...] = (DEFAULT_LOG,)
    #: LongLivedPorts: streams to these ports get circuits of Stable relays only (path-spec 2.2).
    long_lived_ports: frozenset[int] = DEFAULT_LONG_LIVED_PORTS
    #: MaxCircuitDirtiness: no new streams on a circuit first used longer ago than this.
    max_circuit_dirtiness: int = 600
    #: LearnCircuitBuildTimeout: learn how long to wait for circuits from their build times (path-spec 2.4).
    learn_circuit_build_timeout: bool = True
    #: CircuitBuildTimeout: give up building a circuit after this long; 0 (the default) for cbtinitialtimeout
    #: (60 s). While learning it is only the starting point; with LearnCircuitBuildTimeout 0 the only value.
    circuit_build_timeout: int = 0
    #: SocksTimeout: how long a SOCKS client may take to handshake, and a stream may wait for a circuit.
    socks_timeout: int = 120
    #: CookieAuthentication: accept the contents of the cookie file on the control port.
    cookie_authentication: bool = False
    #: CookieAuthFile: where the cookie goes; None means DataDirectory/control_auth_cookie.
    cookie_auth_file: str | None = None
    #: HashedControlPassword values (``16:`` + hex); any one of them is accepted.
    hashed_control_passwords: tuple[str, ...] = ()
    #: ClientRejectInternalAddresses: refuse SOCKS targets on private addresses (0 on a test network).
    client_reject_internal_addresses: bool = True
    #: EnforceDistinctSubnets: no two relays of one /16 in a circuit (0 on a test network).
    enforce_distinct_subnets: bool = True
    #: SafeLogging: "1" scrubs destinations from logs, "0" does not, "relay" scrubs relay-side only
    #: (so, for a client, nothing).
    safe_logging: str = "1"
    #: MaxClientCircuitsPending: how many circuits may be building at once (1-1024).
    max_client_circuits_pending: int = 32
    #: MaxSocksConnections: oppy's own limit (tor has none; its ConnLimit only sets how many file
    #: descriptors it needs): how many SOCKS clients may be connected at once before new ones are refused.
    max_socks_connections: int = 4096
    #: SafeSocks: refuse SOCKS requests that give only an IP address (the application resolved the name).
    safe_socks: bool = False
    #: TestSocks: a notice line for each SOCKS request saying whether the application let Tor resolve.
    test_socks: bool = False
    #: ConnectionPadding: None ("auto") pads links to relays that pad too (link protocol 5), True pads them
    #: all, False pads none and asks the relays to stop (padding-spec §2).
    connection_padding: bool | None = None
    #: ReducedConnectionPadding: pad less often, ask the relays to stop, close idle links sooner.
    reduced_connection_padding: bool = False
    #: CircuitPadding: negotiate tor's onion-service circuit-setup padding machines (padding-spec "Circuit-level
    #: padding"); 0 negotiates none.
    circuit_padding: bool = True
    #: ReducedCircuitPadding: only machines marked fit for reduced padding (neither setup machine is).
    reduced_circuit_padding: bool = False
    #: VanguardsLiteEnabled: onion-service circuits take their second hop from the vanguards-lite set;
    #: None is ``auto`` (the consensus's ``vanguards-lite-enabled``, on by default).
    vanguards_lite_enabled: bool | None = None
    #: ClientOnionAuthDir: the directory of ``*.auth_private`` files (``<address>:descriptor:x25519:<key>``)
    #: holding the client-authorization keys of onion services; None for none.
    client_onion_auth_dir: str | None = None
    #: ConfluxEnabled: link exit circuits in conflux sets (prop 329); None is ``auto`` (the consensus's
    #: cfx_enabled, on by default). Never without congestion control.
    conflux_enabled: bool | None = None
    #: ConfluxClientUX: what the LINK cell asks the exit to optimize when it schedules our downloads
    #: (throughput, latency, throughput_lowmem, latency_lowmem).
    conflux_client_ux: str = "throughput"
    #: MaxMemInQueues: the bytes oppy's queues (stream buffers and link queues) may hold before it closes
    #: the circuits with the oldest queued data; 0, the default, chooses from the RAM as tor does (and
    #: under 256 MB tor's minimum applies, except on a TestingTorNetwork). See oppy.circuit.memory.
    max_mem_in_queues: int = 0
    #: UseBridges: the first hop of every circuit is one of the Bridge lines, and every directory document
    #: comes through a bridge; no authority, fallback or listed relay is contacted directly.
    use_bridges: bool = False
    #: Bridge lines (``[transport] IP:PORT [fingerprint] [k=v ...]``), used when UseBridges is 1.
    bridges: tuple[BridgeLine, ...] = ()
    #: __LeaveStreamsUnattached: a controller attaches new streams itself (set by controllers at run time).
    leave_streams_unattached: bool = False
    #: __OwningControllerProcess: the pid of the controller that owns this process, or None.
    owning_controller_process: str | None = None
    #: What the configuration was read from (not an option).
    source: ConfigSource = field(default_factory=ConfigSource, compare=False, repr=False)
    #: Warnings found while reading it, to be logged once logging is set up (not an option).
    warnings: tuple[str, ...] = field(default=(), compare=False, repr=False)

    # ----------------------------------------------------------------- derived values

    def data_directory_path(self) -> Path:
        return Path(os.path.expanduser(self.data_directory))

    def cookie_auth_file_path(self) -> Path:
        """CookieAuthFile, or tor's default name in the data directory."""
        if self.cookie_auth_file is not None:
            return Path(os.path.expanduser(self.cookie_auth_file))
        return self.data_directory_path() / "control_auth_cookie"

    @property
    def scrub_addresses(self) -> bool:
        """SafeLogging 1: replace client destinations in logs by ``[scrubbed]``."""
        return self.safe_logging == "1"

    # ----------------------------------------------------------------- GETCONF / SETCONF / RESETCONF

    def get_option(self, name: str) -> list[str]:
        """The value(s) of option ``name`` (any case) as GETCONF gives them; [] when unset."""
        option = _lookup(name)
        return option.encode(getattr(self, option.field))

    def set_options(self, pairs: Iterable[tuple[str, str | None]]) -> list[str]:
        """SETCONF: give each named option the values paired with it (several pairs of one list option
        make a list), or its default for a None or empty value (RESETCONF). All or nothing: on a bad
        name or value ConfigError is raised and nothing changes. Returns the canonical names set."""
        grouped: dict[str, list[str]] = {}
        for name, value in pairs:
            option = _lookup(name)
            values = grouped.setdefault(option.name, [])
            if value is not None and value != "":
                if values and not option.is_list:
                    values[:] = [value]
                else:
                    values.append(value)
        changes: dict[str, Any] = {}
        for name, values in grouped.items():
            option = _OPTIONS_BY_LOWER[name.lower()]
            if not values:
                changes[option.field] = option.default(self.testing_tor_network)
            else:
                changes[option.field] = _parse_option(option, values)
        candidate = dataclasses.replace(self, **changes)
        for name in grouped:
            option = _OPTIONS_BY_LOWER[name.lower()]
            old, new = getattr(self, option.field), getattr(candidate, option.field)
            if not option.changeable_at_runtime and old != new:
                raise ConfigError(f"While oppy is running, changing {option.name} "
                                  f"({shortened(repr(' '.join(option.encode(old))))} -> "
                                  f"{shortened(repr(' '.join(option.encode(new))))}) "
                                  "is not allowed.", option=option.name)
        warnings = _validate(candidate)
        for option_field in changes:
            setattr(self, option_field, getattr(candidate, option_field))
        self.warnings = tuple(warnings)
        return list(grouped)

    def reset_options(self, names: Iterable[str]) -> list[str]:
        """RESETCONF: put the named options back to their defaults."""
        return self.set_options((name, None) for name in names)

    def to_torrc_lines(self, *, include_defaults: bool = False) -> list[str]:
        """The configuration as torrc lines, values quoted where needed: by default only the options
        that differ from their defaults (tor's ``--dump-config short``, GETINFO config-text).
        ``__`` options are never written, as in tor."""
        lines: list[str] = []
        for option in _OPTIONS:
            if not option.dumpable:
                continue
            value = getattr(self, option.field)
            if not include_defaults and value == option.default(self.testing_tor_network):
                continue
            lines.extend(f"{option.name} {quote_value(encoded)}" for encoded in option.encode(value))
        return lines


def _parse_option(option: _Option, values: list[str]) -> Any:
    if option.is_list:
        return option.parse(option.name, values)
    return option.parse(option.name, values[-1])


def _validate(config: Config) -> list[str]:
    """Checks that involve several options (config.c options_validate); returns warnings."""
    warnings: list[str] = []
    if config.testing_tor_network and not config.dir_authorities:
        raise ConfigError("TestingTorNetwork may only be configured in combination with a non-default set "
                          "of DirAuthority.", option="TestingTorNetwork")
    if not 1 <= config.max_client_circuits_pending <= MAX_MAX_CLIENT_CIRCUITS_PENDING:
        raise ConfigError(f"MaxClientCircuitsPending must be between 1 and {MAX_MAX_CLIENT_CIRCUITS_PENDING}, "
                          f"but was set to {config.max_client_circuits_pending}",
                          option="MaxClientCircuitsPending", value=str(config.max_client_circuits_pending))
    if config.max_circuit_dirtiness < MIN_MAX_CIRCUIT_DIRTINESS:
        warnings.append(f"MaxCircuitDirtiness option is too short; raising to {MIN_MAX_CIRCUIT_DIRTINESS} seconds.")
        config.max_circuit_dirtiness = MIN_MAX_CIRCUIT_DIRTINESS
    if config.max_circuit_dirtiness > MAX_MAX_CIRCUIT_DIRTINESS:
        warnings.append(f"MaxCircuitDirtiness option is too high; setting to "
                        f"{MAX_MAX_CIRCUIT_DIRTINESS // 86400} days.")
        config.max_circuit_dirtiness = MAX_MAX_CIRCUIT_DIRTINESS
    if not config.learn_circuit_build_timeout:
        if 0 < config.circuit_build_timeout < RECOMMENDED_MIN_CIRCUIT_BUILD_TIMEOUT:
            warnings.append(f"CircuitBuildTimeout is shorter ({config.circuit_build_timeout} seconds) than the "
                            f"recommended minimum ({RECOMMENDED_MIN_CIRCUIT_BUILD_TIMEOUT} seconds), and "
                            "LearnCircuitBuildTimeout is disabled.  If oppy isn't working, raise this value or "
                            "enable LearnCircuitBuildTimeout.")
        elif not config.circuit_build_timeout:
            warnings.append("You disabled LearnCircuitBuildTimeout, but didn't specify a CircuitBuildTimeout. "
                            "I'll pick a plausible default.")
    if config.use_bridges and not config.bridges:
        raise ConfigError("If you set UseBridges, you must specify at least one bridge.", option="UseBridges")
    if config.socks_timeout < 1:
        raise ConfigError("SocksTimeout must be at least 1 second, but was set to 0", option="SocksTimeout",
                          value="0")
    if config.control_ports and not (config.cookie_authentication or config.hashed_control_passwords):
        warnings.append("ControlPort is open, but no authentication method has been configured.  This means "
                        "that any program on your computer can reconfigure oppy.  Set CookieAuthentication 1 "
                        "or HashedControlPassword.")
    for port in config.socks_ports:
        if not port.is_loopback:
            warnings.append(f"You specified a public address '{_format_addrport(port)}' for SocksPort. Other "
                            "people on the Internet might find your computer and use it as an open proxy.")
    for port in config.control_ports:
        if not port.is_loopback:
            warnings.append(f"You have a ControlPort set to accept connections from a non-local address "
                            f"'{_format_addrport(port)}'. This means that programs not running on your "
                            "computer can reconfigure oppy.")
    return warnings


def config_from_lines(groups: Iterable[Sequence[ConfigLine]], *, source: ConfigSource | None = None) -> Config:
    """Build a Config from groups of lines applied in order (the torrc, then the command line), as tor
    does: a later group's list option replaces the earlier list unless written ``+Option``; ``/Option``
    drops the earlier values; a single-valued option keeps its last value."""
    assigned: dict[str, list[str]] = {}
    warnings: list[str] = []
    for group in groups:
        seen_in_group: set[str] = set()
        for line in group:
            option = _lookup(line.key)
            name = option.name
            if line.command is LineCommand.CLEAR:
                assigned.pop(name, None)
                seen_in_group.add(name)
                continue
            value = line.value
            if value == "":
                if option.is_list:
                    warnings.append(f"Linelist option '{name}' has no value. Skipping.")
                else:
                    assigned.pop(name, None)  # an empty value resets the option (confmgt.c)
                continue
            if option.is_list:
                if name not in seen_in_group and line.command is not LineCommand.APPEND:
                    assigned[name] = []
                assigned.setdefault(name, []).append(value)
            else:
                if name in seen_in_group and name in assigned:
                    warnings.append(f"Option '{name}' used more than once; all but the last value will be "
                                    "ignored.")
                assigned[name] = [value]
            seen_in_group.add(name)
    testing_option = _OPTIONS_BY_LOWER["testingtornetwork"]
    testing = _parse_option(testing_option, assigned["TestingTorNetwork"]) if "TestingTorNetwork" in assigned \
        else False
    values: dict[str, Any] = {}
    for option in _OPTIONS:
        if option.name in assigned:
            values[option.field] = _parse_option(option, assigned[option.name])
        else:
            values[option.field] = option.default(testing)
    config = Config(**values, source=source or ConfigSource())
    warnings.extend(_validate(config))
    config.warnings = tuple(warnings)
    return config


def config_from_torrc_text(text: str) -> Config:
    """A Config from torrc text alone (no ``%include``: there is no file system here). CRs are
    dropped first, as tor does for a torrc file."""
    return config_from_lines([parse_torrc_text(text.replace("\r", ""))])



def _with_log_level(config: Config, level: str) -> Config:
    """``--log-level LEVEL``: every Log destination (or the default stdout one) takes LEVEL and above."""
    level = level.lower()
    values = [f"{level} {log.destination}" + (f" {log.path}" if log.path is not None else "") for log in config.logs]
    config.logs = _parse_logs("Log", values)
    return config


def load_config_from_source(source: ConfigSource) -> Config:
    """Read the torrc (if any) and apply the command line over it. Without a torrc file only the
    defaults and the command line count: /etc/tor/torrc is never read."""
    groups: list[Sequence[ConfigLine]] = []
    if source.torrc_path is not None:
        groups.append(read_torrc_file(source.torrc_path))
    groups.append(source.command_line)
    config = config_from_lines(groups, source=source)
    if source.log_level is not None:
        _with_log_level(config, source.log_level)
    return config



def reload_config(config: Config) -> Config:
    """Read the same torrc and command line again (SIGHUP). The caller decides what may change."""
    return load_config_from_source(config.source)
