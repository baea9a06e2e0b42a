"""Formatting of the control port's asynchronous events (and the matching GETINFO lines).

Pure functions of plain values, laid out field by field as tor 0.4.9 writes them
(control_events.c, control_fmt.c, control_getinfo.c; control-spec "Asynchronous events"), so
that stem's parsers and nyx read them as they read tor's. Nothing here knows oppy's circuit
or stream objects.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Iterable, Sequence

from oppy.cell.commands import DestroyReason, EndReason
from oppy.control.codec import ascii_upper, encode_event, quote, split_positional

__all__ = [
    "SETEVENTS_EVENT_NAMES",
    "IGNORED_SETEVENTS_NAMES",
    "LOG_SEVERITIES",
    "SIGNAL_CANONICAL_NAMES",
    "CIRCUIT_STATUSES",
    "STREAM_STATUSES",
    "ORCONN_STATUSES",
    "EventFormatError",
    "UnrecognizedEventError",
    "parse_setevents",
    "format_time_created",
    "format_path",
    "circuit_reason_name",
    "stream_reason_name",
    "circuit_status_line",
    "circ_event",
    "circ_minor_event",
    "stream_status_line",
    "stream_event",
    "orconn_status_line",
    "orconn_event",
    "bw_event",
    "circ_bw_event",
    "log_event",
    "signal_event",
    "conf_changed_event",
    "hs_desc_event",
    "transport_launched_event",
]

# control_events.c control_event_table (identical in tor 0.4.8 and 0.4.9): every name
# SETEVENTS accepts, case-insensitively, in tor's order (also the order of events/names).
SETEVENTS_EVENT_NAMES: tuple[str, ...] = (
    "CIRC",
    "CIRC_MINOR",
    "STREAM",
    "ORCONN",
    "BW",
    "DEBUG",
    "INFO",
    "NOTICE",
    "WARN",
    "ERR",
    "NEWDESC",
    "ADDRMAP",
    "DESCCHANGED",
    "NS",
    "STATUS_GENERAL",
    "STATUS_CLIENT",
    "STATUS_SERVER",
    "GUARD",
    "STREAM_BW",
    "CLIENTS_SEEN",
    "NEWCONSENSUS",
    "BUILDTIMEOUT_SET",
    "SIGNAL",
    "CONF_CHANGED",
    "CONN_BW",
    "CELL_STATS",
    "CIRC_BW",
    "TRANSPORT_LAUNCHED",
    "HS_DESC",
    "HS_DESC_CONTENT",
    "NETWORK_LIVENESS",
)
# control_cmd.c handle_control_setevents: obsolete names tor accepts and ignores.
IGNORED_SETEVENTS_NAMES: tuple[str, ...] = ("EXTENDED", "AUTHDIR_NEWDESCS")
_EVENT_BY_UPPER = {name: name for name in SETEVENTS_EVENT_NAMES}

# control_events.c control_event_logmsg: the log events, lowest severity first.
LOG_SEVERITIES: tuple[str, ...] = ("DEBUG", "INFO", "NOTICE", "WARN", "ERR")

# control.c signal_table: every name SIGNAL accepts -> the name SIGNAL events report
# (the first entry for the same signal number).
SIGNAL_CANONICAL_NAMES: dict[str, str] = {
    "RELOAD": "RELOAD",
    "HUP": "RELOAD",
    "SHUTDOWN": "SHUTDOWN",
    "DUMP": "DUMP",
    "USR1": "DUMP",
    "DEBUG": "DEBUG",
    "USR2": "DEBUG",
    "HALT": "HALT",
    "TERM": "HALT",
    "INT": "HALT",
    "NEWNYM": "NEWNYM",
    "CLEARDNSCACHE": "CLEARDNSCACHE",
    "HEARTBEAT": "HEARTBEAT",
    "ACTIVE": "ACTIVE",
    "DORMANT": "DORMANT",
}

# control-spec "Circuit status changed" (GUARD_WAIT only in GETINFO circuit-status).
CIRCUIT_STATUSES: tuple[str, ...] = ("LAUNCHED", "BUILT", "GUARD_WAIT", "EXTENDED", "FAILED", "CLOSED")
# control_events.c control_event_stream_status.
STREAM_STATUSES: tuple[str, ...] = (
    "NEW",
    "NEWRESOLVE",
    "REMAP",
    "SENTCONNECT",
    "SENTRESOLVE",
    "SUCCEEDED",
    "FAILED",
    "CLOSED",
    "DETACHED",
    "CONTROLLER_WAIT",
    "XOFF_SENT",
    "XOFF_RECV",
    "XON_SENT",
    "XON_RECV",
)
# control_events.c control_event_or_conn_status.
ORCONN_STATUSES: tuple[str, ...] = ("NEW", "LAUNCHED", "CONNECTED", "FAILED", "CLOSED")

# stem tor_tools.is_valid_circuit_id / is_valid_stream_id: 1-16 alphanumerics.
_ID_PATTERN = re.compile(r"[0-9A-Za-z]{1,16}\Z")
_TOKEN_PATTERN = re.compile(r"[^\s=\"]+\Z")
_FINGERPRINT_PATTERN = re.compile(r"[0-9A-Fa-f]{40}\Z")
# node_get_verbose_nickname: $FP~nickname, nicknames being 1-19 alphanumerics.
_NICKNAME_PATTERN = re.compile(r"[0-9A-Za-z]{1,19}\Z")


class EventFormatError(ValueError):
    """A value cannot be written into an event without breaking its syntax."""


class UnrecognizedEventError(ValueError):
    """SETEVENTS named an event tor does not know; :attr:`message` is tor's 552 text."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.message = f'Unrecognized event "{name}"'
        super().__init__(self.message)


def parse_setevents(args: str) -> frozenset[str]:
    """The canonical names a SETEVENTS argument string asks for (empty for ``SETEVENTS``).

    Like tor, one unknown name fails the whole command (:class:`UnrecognizedEventError`,
    answered ``552 Unrecognized event "X"``); EXTENDED and AUTHDIR_NEWDESCS are ignored.
    """
    wanted = set()
    for name in split_positional(args):
        upper = ascii_upper(name)
        if upper in IGNORED_SETEVENTS_NAMES:
            continue
        canonical = _EVENT_BY_UPPER.get(upper)
        if canonical is None:
            raise UnrecognizedEventError(name)
        wanted.add(canonical)
    return frozenset(wanted)


# --------------------------------------------------------------------------- field helpers


def _identifier(value: int | str, what: str) -> str:
    text = str(value)
    if not _ID_PATTERN.match(text):
        raise EventFormatError(f"{what} must be 1-16 alphanumerics, not {text!r}")
    return text


def _token(value: object, what: str) -> str:
    text = str(value)
    if not _TOKEN_PATTERN.match(text):
        raise EventFormatError(f"{what} must be one word without '=' or quotes, not {text!r}")
    return text


def format_time_created(when: datetime | float) -> str:
    """ISOTime2Frac in UTC, ``YYYY-MM-DDTHH:MM:SS.ffffff`` (tor's
    format_iso_time_nospace_usec). Naive datetimes are taken as UTC; floats as Unix time."""
    if isinstance(when, datetime):
        moment = when.astimezone(timezone.utc) if when.tzinfo is not None else when
    else:
        moment = datetime.fromtimestamp(when, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")


def format_path(path: Iterable[tuple[str, str | None]]) -> str:
    """A circuit path as tor writes it: ``$FP~nickname`` (``$FP`` without a nickname),
    fingerprints in upper-case hex, joined with commas."""
    entries = []
    for fingerprint, nickname in path:
        if not _FINGERPRINT_PATTERN.match(fingerprint):
            raise EventFormatError(f"a relay fingerprint is 40 hex digits, not {fingerprint!r}")
        entry = "$" + fingerprint.upper()
        if nickname:
            if not _NICKNAME_PATTERN.match(nickname):
                raise EventFormatError(f"a relay nickname is 1-19 alphanumerics, not {nickname!r}")
            entry += "~" + nickname
        entries.append(entry)
    return ",".join(entries)


# reasons.c circuit_end_reason_to_control_string: DESTROY codes as the control port names
# them (tor-spec PROTOCOL is reported as TORPROTOCOL).
_CIRCUIT_REASON_OVERRIDES = {DestroyReason.PROTOCOL: "TORPROTOCOL"}


def circuit_reason_name(code: int) -> str:
    """The control-port name of a DESTROY/TRUNCATED reason code (``UNKNOWN_n`` if unlisted)."""
    try:
        reason = DestroyReason(code)
    except ValueError:
        return f"UNKNOWN_{code}"
    return _CIRCUIT_REASON_OVERRIDES.get(reason, reason.name)


def stream_reason_name(code: int) -> str:
    """The control-port name of a RELAY_END reason code (``UNKNOWN_n`` if unlisted)."""
    try:
        return EndReason(code).name
    except ValueError:
        return f"UNKNOWN_{code}"


def _socks_auth_fields(username: str | None, password: str | None) -> list[str]:
    fields = []
    if username:
        fields.append("SOCKS_USERNAME=" + quote(username))
    if password:
        fields.append("SOCKS_PASSWORD=" + quote(password))
    return fields


# --------------------------------------------------------------------------- CIRC


def circuit_status_line(
    circ_id: int | str,
    status: str,
    path: Sequence[tuple[str, str | None]] = (),
    *,
    build_flags: Sequence[str] = (),
    purpose: str = "GENERAL",
    hs_state: str | None = None,
    rend_query: str | None = None,
    time_created: datetime | float | None = None,
    socks_username: str | None = None,
    socks_password: str | None = None,
    conflux_id: str | None = None,
    conflux_rtt: int | None = None,
    reason: str | None = None,
    remote_reason: str | None = None,
) -> str:
    """One circuit as in ``GETINFO circuit-status`` and, after ``CIRC``, its event:
    ``ID STATUS [PATH] [BUILD_FLAGS=..] PURPOSE=.. [HS_STATE=..] [REND_QUERY=..]
    [TIME_CREATED=..] [SOCKS_USERNAME=".."] [SOCKS_PASSWORD=".."] [CONFLUX_ID=..]
    [CONFLUX_RTT=..] [REASON=..] [REMOTE_REASON=..]`` (tor's field order: the reasons come
    last; a linked conflux leg's set id and RTT in microseconds since tor 0.4.8.15). The path
    is omitted while empty; reasons belong to FAILED and CLOSED events only."""
    parts = [_identifier(circ_id, "a circuit id"), _token(status, "a circuit status")]
    if path:
        parts.append(format_path(path))
    if build_flags:
        parts.append("BUILD_FLAGS=" + ",".join(_token(flag, "a build flag") for flag in build_flags))
    parts.append("PURPOSE=" + _token(purpose, "a circuit purpose"))
    if hs_state is not None:
        parts.append("HS_STATE=" + _token(hs_state, "an HS state"))
    if rend_query is not None:
        parts.append("REND_QUERY=" + _token(rend_query, "a rendezvous query"))
    if time_created is not None:
        parts.append("TIME_CREATED=" + format_time_created(time_created))
    parts += _socks_auth_fields(socks_username, socks_password)
    if conflux_id is not None:
        parts.append("CONFLUX_ID=" + _token(conflux_id, "a conflux id"))
    if conflux_rtt is not None:
        parts.append(f"CONFLUX_RTT={int(conflux_rtt)}")
    if reason is not None:
        parts.append("REASON=" + _token(reason, "a reason"))
    if remote_reason is not None:
        parts.append("REMOTE_REASON=" + _token(remote_reason, "a remote reason"))
    return " ".join(parts)


def circ_event(
    circ_id: int | str, status: str, path: Sequence[tuple[str, str | None]] = (), **fields: object
) -> bytes:
    """``650 CIRC <circuit_status_line(...)>``; a remote DESTROY is ``reason="DESTROYED",
    remote_reason=<name>`` as tor reports it."""
    return encode_event("CIRC " + circuit_status_line(circ_id, status, path, **fields))  # type: ignore[arg-type]


def circ_minor_event(circ_id: int | str, event: str, path: Sequence[tuple[str, str | None]], old_purpose: str,
                     old_hs_state: str | None = None, **fields: object) -> bytes:
    """``650 CIRC_MINOR ID EVENT [PATH] .. OLD_PURPOSE=.. [OLD_HS_STATE=..]`` (control-spec "CIRC_MINOR"; tor
    control_event_circuit_status_minor): the circuit as in CIRC, then what it was before."""
    tail = " OLD_PURPOSE=" + _token(old_purpose, "a circuit purpose")
    if old_hs_state is not None:
        tail += " OLD_HS_STATE=" + _token(old_hs_state, "an HS state")
    line = circuit_status_line(circ_id, event, path, **fields)  # type: ignore[arg-type]
    return encode_event("CIRC_MINOR " + line + tail)


# --------------------------------------------------------------------------- STREAM


def _address_port(host: str, port: int, what: str) -> str:
    if not 0 <= int(port) <= 0xFFFF:
        raise EventFormatError(f"{what} port out of range: {port}")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # tor writes IPv6 addresses decorated
    return f"{_token(host, what)}:{int(port)}"


def stream_status_line(stream_id: int | str, status: str, circ_id: int | str | None, target: tuple[str, int]) -> str:
    """One stream as in ``GETINFO stream-status``: ``ID STATUS CIRCID HOST:PORT`` (CIRCID 0 =
    not attached)."""
    return " ".join(
        (
            _identifier(stream_id, "a stream id"),
            _token(status, "a stream status"),
            _identifier(circ_id or 0, "a circuit id"),
            _address_port(target[0], target[1], "a stream target"),
        )
    )


def stream_event(
    stream_id: int | str,
    status: str,
    circ_id: int | str | None,
    target: tuple[str, int],
    *,
    reason: str | None = None,
    remote_reason: str | None = None,
    source: str | None = None,
    source_addr: tuple[str, int] | None = None,
    purpose: str | None = None,
    socks_username: str | None = None,
    socks_password: str | None = None,
    client_protocol: str | None = None,
    nym_epoch: int | None = None,
    session_group: int | None = None,
    iso_fields: Sequence[str] | None = None,
) -> bytes:
    """``650 STREAM ID STATUS CIRCID HOST:PORT [REASON=..] [REMOTE_REASON=..] [SOURCE=..]
    [SOURCE_ADDR=..] [PURPOSE=..] [SOCKS_USERNAME=..] [SOCKS_PASSWORD=..] [CLIENT_PROTOCOL=..]
    [NYM_EPOCH=..] [SESSION_GROUP=..] [ISO_FIELDS=..]`` in tor's order. tor sends
    SOURCE_ADDR and PURPOSE only with NEW/NEWRESOLVE, a remote END as ``reason="END",
    remote_reason=<name>``, SOURCE=CACHE|EXIT only with REMAP."""
    parts = [stream_status_line(stream_id, status, circ_id, target)]
    if reason is not None:
        parts.append("REASON=" + _token(reason, "a reason"))
    if remote_reason is not None:
        parts.append("REMOTE_REASON=" + _token(remote_reason, "a remote reason"))
    if source is not None:
        parts.append("SOURCE=" + _token(source, "a remap source"))
    if source_addr is not None:
        parts.append("SOURCE_ADDR=" + _address_port(source_addr[0], source_addr[1], "a source address"))
    if purpose is not None:
        parts.append("PURPOSE=" + _token(purpose, "a stream purpose"))
    parts += _socks_auth_fields(socks_username, socks_password)
    if client_protocol is not None:
        parts.append("CLIENT_PROTOCOL=" + _token(client_protocol, "a client protocol"))
    if nym_epoch is not None:
        parts.append(f"NYM_EPOCH={int(nym_epoch)}")
    if session_group is not None:
        parts.append(f"SESSION_GROUP={int(session_group)}")
    if iso_fields is not None:
        parts.append("ISO_FIELDS=" + ",".join(_token(field, "an isolation field") for field in iso_fields))
    return encode_event("STREAM " + " ".join(parts))


# --------------------------------------------------------------------------- ORCONN


def _orconn_target(target: tuple[str, str | None] | str) -> str:
    if isinstance(target, tuple):
        return format_path([target])
    return _token(target, "an OR connection target")


def orconn_status_line(target: tuple[str, str | None] | str, status: str) -> str:
    """One OR connection as in ``GETINFO orconn-status``: ``TARGET STATUS``, the target being
    a (fingerprint, nickname) pair or an ``address:port`` string."""
    return f"{_orconn_target(target)} {_token(status, 'an OR connection status')}"


def orconn_event(
    target: tuple[str, str | None] | str,
    status: str,
    *,
    reason: str | None = None,
    ncircs: int | None = None,
    conn_id: int | str | None = None,
) -> bytes:
    """``650 ORCONN TARGET STATUS [REASON=..] [NCIRCS=n] [ID=..]``; tor adds NCIRCS only to
    FAILED/CLOSED with circuits still pending, and always an ID."""
    parts = [orconn_status_line(target, status)]
    if reason:
        parts.append("REASON=" + _token(reason, "a reason"))
    if ncircs:
        parts.append(f"NCIRCS={int(ncircs)}")
    if conn_id is not None:
        parts.append("ID=" + _identifier(conn_id, "a connection id"))
    return encode_event("ORCONN " + " ".join(parts))


# --------------------------------------------------------------------------- BW, logs, SIGNAL, CONF_CHANGED


def bw_event(bytes_read: int, bytes_written: int) -> bytes:
    """``650 BW <read> <written>``: bytes in the last second (tor sends one every second)."""
    if bytes_read < 0 or bytes_written < 0:
        raise EventFormatError("byte counts cannot be negative")
    return encode_event(f"BW {int(bytes_read)} {int(bytes_written)}")


def circ_bw_event(
    circ_id: int | str,
    when: datetime | float,
    read: int,
    written: int,
    delivered_read: int,
    overhead_read: int,
    delivered_written: int,
    overhead_written: int,
    congestion: tuple[bool, int, int, int] | None = None,
) -> bytes:
    """``650 CIRC_BW ID=.. READ=.. WRITTEN=.. TIME=.. DELIVERED_READ=.. OVERHEAD_READ=..
    DELIVERED_WRITTEN=.. OVERHEAD_WRITTEN=.. [SS=.. CWND=.. RTT=.. MIN_RTT=..]``: one circuit's bytes
    since its previous event (control_event_circ_bandwidth_used_for_circ). On a circuit with
    congestion control, `congestion` is (in slow start, cwnd in cells, smoothed RTT and minimum RTT in
    microseconds), written as tor's congestion_control_get_control_port_fields does: SS 0 or 1, the
    RTTs in whole milliseconds."""
    counts = (read, written, delivered_read, overhead_read, delivered_written, overhead_written)
    if any(count < 0 for count in counts):
        raise EventFormatError("byte counts cannot be negative")
    line = (
        f"CIRC_BW ID={_identifier(circ_id, 'a circuit id')} READ={int(read)} WRITTEN={int(written)} "
        f"TIME={format_time_created(when)} DELIVERED_READ={int(delivered_read)} "
        f"OVERHEAD_READ={int(overhead_read)} DELIVERED_WRITTEN={int(delivered_written)} "
        f"OVERHEAD_WRITTEN={int(overhead_written)}"
    )
    if congestion is not None:
        in_slow_start, cwnd, rtt_usec, min_rtt_usec = congestion
        if min(cwnd, rtt_usec, min_rtt_usec) < 0:
            raise EventFormatError("congestion-control values cannot be negative")
        line += f" SS={int(bool(in_slow_start))} CWND={int(cwnd)} RTT={rtt_usec // 1000} MIN_RTT={min_rtt_usec // 1000}"
    return encode_event(line)


def log_event(severity: str, message: str) -> bytes:
    """``650 SEVERITY message``; CR and LF become spaces and trailing spaces go, as tor's
    control_logmsg_strip_newlines does."""
    severity = severity.upper()
    if severity not in LOG_SEVERITIES:
        raise EventFormatError(f"unknown log severity {severity!r}")
    text = message.replace("\r", " ").replace("\n", " ").rstrip(" ")
    return encode_event(f"{severity} {text}")


def signal_event(name: str) -> bytes:
    """``650 SIGNAL NAME`` with the canonical name tor reports (HUP -> RELOAD, TERM -> HALT)."""
    canonical = SIGNAL_CANONICAL_NAMES.get(name.upper())
    if canonical is None:
        raise EventFormatError(f"unknown signal {name!r}")
    return encode_event(f"SIGNAL {canonical}")


def conf_changed_event(changes: Sequence[tuple[str, str | None]]) -> bytes:
    """``650-CONF_CHANGED`` / ``650-Key=Value`` (``650-Key`` for an option reset to unset) /
    ``650 OK``; tor sends nothing for an empty change list, so neither does this (b"")."""
    if not changes:
        return b""
    lines = ["CONF_CHANGED"]
    for key, value in changes:
        lines.append(key if value is None else f"{key}={value}")
    return encode_event(*lines)


# --------------------------------------------------------------------------- HS_DESC

#: control-spec "HS_DESC" AuthType: tor reports NO_AUTH for every v3 fetch (hs_control.c).
HS_DESC_AUTH_TYPE = "NO_AUTH"


def hs_desc_event(action: str, address: str, hsdir: str, descriptor_id: str, reason: str | None = None,
                  hsdir_index: bytes | None = None) -> bytes:
    """``650 HS_DESC Action HSAddress AuthType HsDir DescriptorID [REASON=..] [HSDIR_INDEX=..]``
    (control-spec "HS_DESC"; tor control_event_hs_descriptor_requested / _received / _failed for v3):
    HSAddress without ".onion", HsDir as ``$FP~nick``, the blinded key in base64 as the descriptor ID; a
    REQUESTED event carries the HSDir's fetch index in upper-case hex (hs_control.c, tor hex_str)."""
    parts = ["HS_DESC", _token(action, "an HS_DESC action"), _token(address, "an onion address"),
             HS_DESC_AUTH_TYPE, _token(hsdir, "an HSDir"), _token(descriptor_id, "a descriptor ID")]
    if hsdir_index is not None:
        parts.append("HSDIR_INDEX=" + hsdir_index.hex().upper())
    if reason is not None:
        parts.append("REASON=" + _token(reason, "a reason"))
    return encode_event(" ".join(parts))


def transport_launched_event(mode: str, transport: str, address: str, port: int) -> bytes:
    """``650 TRANSPORT_LAUNCHED client obfs4 127.0.0.1 41234``: a pluggable transport's proxy listens (tor
    control_event_transport_launched; ``mode`` is "client" for oppy; fmt_addr writes IPv6 without brackets)."""
    return encode_event(f"TRANSPORT_LAUNCHED {mode} {transport} {address} {port}")
