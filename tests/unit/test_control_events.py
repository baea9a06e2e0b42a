"""Event formatting: tor's layouts, checked with stem's own parsers."""

import io
from datetime import datetime, timedelta, timezone

import pytest
import stem
import stem.response
import stem.socket

from oppy.control.codec import DataBlock, reply
from oppy.control.events import (
    CIRCUIT_STATUSES,
    IGNORED_SETEVENTS_NAMES,
    SETEVENTS_EVENT_NAMES,
    circ_minor_event,
    hs_desc_event,
    SIGNAL_CANONICAL_NAMES,
    STREAM_STATUSES,
    EventFormatError,
    UnrecognizedEventError,
    bw_event,
    circ_bw_event,
    circ_event,
    circuit_reason_name,
    circuit_status_line,
    conf_changed_event,
    transport_launched_event,
    format_path,
    format_time_created,
    log_event,
    orconn_event,
    orconn_status_line,
    parse_setevents,
    signal_event,
    stream_event,
    stream_reason_name,
    stream_status_line,
)

# What `GETINFO events/names` answers on tor 0.4.9.11 (captured).
TOR_EVENTS_NAMES = (
    "CIRC CIRC_MINOR STREAM ORCONN BW DEBUG INFO NOTICE WARN ERR NEWDESC ADDRMAP DESCCHANGED NS "
    "STATUS_GENERAL STATUS_CLIENT STATUS_SERVER GUARD STREAM_BW CLIENTS_SEEN NEWCONSENSUS BUILDTIMEOUT_SET "
    "SIGNAL CONF_CHANGED CONN_BW CELL_STATS CIRC_BW TRANSPORT_LAUNCHED HS_DESC HS_DESC_CONTENT NETWORK_LIVENESS"
)
# What `GETINFO signal/names` answers on tor 0.4.9.11 (captured).
TOR_SIGNAL_NAMES = (
    "RELOAD HUP SHUTDOWN DUMP USR1 DEBUG USR2 HALT TERM INT NEWNYM CLEARDNSCACHE HEARTBEAT ACTIVE DORMANT"
)

FP1 = "208EFE5D5C1D3A5D6C2A31D6DDF3E9B2E8A5F0C1"
FP2 = "616f00d3b5b1a2c6f9e8d7c6b5a4938271605f4e"
FP3 = "85B194A1C2D3E4F5061728394A5B6C7D8E9F0A1B"
CREATED = datetime(2026, 11, 21, 14, 37, 7, 17402)


def parse_event(raw: bytes):
    assert raw.endswith(b"\r\n")
    message = stem.socket.recv_message(io.BytesIO(raw))
    stem.response.convert("EVENT", message)
    return message


class TestSetevents:
    def test_names_are_tors(self):
        assert " ".join(SETEVENTS_EVENT_NAMES) == TOR_EVENTS_NAMES

    def test_everything_stem_and_nyx_subscribe_to_is_accepted(self):
        wanted = (
            "SIGNAL CONF_CHANGED STATUS_SERVER STREAM CIRC ORCONN BW NEWCONSENSUS NOTICE WARN ERR INFO DEBUG "
            "STATUS_CLIENT CIRC_MINOR STREAM_BW"
        )
        assert parse_setevents(wanted) == frozenset(wanted.split())

    def test_empty_case_insensitive_and_obsolete(self):
        assert parse_setevents("") == frozenset()
        assert parse_setevents("circ  Bw ") == {"CIRC", "BW"}
        assert parse_setevents("EXTENDED circ authdir_newdescs") == {"CIRC"}
        assert IGNORED_SETEVENTS_NAMES == ("EXTENDED", "AUTHDIR_NEWDESCS")

    def test_one_unknown_name_fails_everything(self):
        with pytest.raises(UnrecognizedEventError) as caught:
            parse_setevents("CIRC FOO BW")
        assert caught.value.message == 'Unrecognized event "FOO"'
        assert caught.value.name == "FOO"

    def test_signal_names_are_tors(self):
        assert " ".join(SIGNAL_CANONICAL_NAMES) == TOR_SIGNAL_NAMES


class TestCirc:
    def test_tor_layout(self):
        line = circuit_status_line(
            1, "BUILT", [(FP1, "auth0")], build_flags=["ONEHOP_TUNNEL", "IS_INTERNAL", "NEED_CAPACITY"],
            purpose="GENERAL", time_created=CREATED,
        )
        assert line == (
            f"1 BUILT ${FP1}~auth0 BUILD_FLAGS=ONEHOP_TUNNEL,IS_INTERNAL,NEED_CAPACITY PURPOSE=GENERAL "
            "TIME_CREATED=2026-11-21T14:37:07.017402"
        )

    def test_a_linked_conflux_leg_shows_its_set_and_rtt_as_tor_does(self):
        # The layout of tor 0.4.8.15's CIRC lines for conflux legs: after TIME_CREATED, the RTT in usec.
        line = circuit_status_line(
            1, "BUILT", [(FP1, "guard"), (FP2, "mid"), (FP3, "exit")], build_flags=["NEED_CAPACITY", "NEED_UPTIME"],
            purpose="CONFLUX_LINKED", time_created=CREATED, conflux_id="64D5AAB75EDA0A9372993A1BAB602178",
            conflux_rtt=353916,
        )
        assert line.endswith(
            " BUILD_FLAGS=NEED_CAPACITY,NEED_UPTIME PURPOSE=CONFLUX_LINKED TIME_CREATED=2026-11-21T14:37:07.017402 "
            "CONFLUX_ID=64D5AAB75EDA0A9372993A1BAB602178 CONFLUX_RTT=353916"
        )
        event = parse_event(circ_event(1, "CLOSED", [(FP1, "guard")], purpose="CONFLUX_LINKED",
                                       conflux_id="64D5AAB75EDA0A9372993A1BAB602178", conflux_rtt=353916,
                                       reason="FINISHED"))
        assert event.status == "CLOSED" and event.reason == stem.CircClosureReason.FINISHED

    def test_launched_has_no_path(self):
        assert circ_event(17, "LAUNCHED", time_created=CREATED) == (
            b"650 CIRC 17 LAUNCHED PURPOSE=GENERAL TIME_CREATED=2026-11-21T14:37:07.017402\r\n"
        )

    def test_stem_parses_every_status(self):
        for status in CIRCUIT_STATUSES:
            event = parse_event(circ_event("27", status, [(FP1, "a"), (FP2, "b"), (FP3, None)], time_created=CREATED))
            assert isinstance(event, stem.response.events.CircuitEvent)
            assert event.id == "27" and event.status == status
            assert event.path == ((FP1, "a"), (FP2.upper(), "b"), (FP3, None))
            assert event.created == CREATED

    def test_stem_parses_reasons_and_socks_auth(self):
        raw = circ_event(
            27, "CLOSED", [(FP1, "relay0")], build_flags=["NEED_CAPACITY"], purpose="CONTROLLER", time_created=CREATED,
            socks_username="user", socks_password="pass word", reason="DESTROYED", remote_reason="FINISHED",
        )
        assert raw.endswith(
            b' SOCKS_USERNAME="user" SOCKS_PASSWORD="pass word" REASON=DESTROYED REMOTE_REASON=FINISHED\r\n'
        )
        event = parse_event(raw)
        assert event.reason == stem.CircClosureReason.DESTROYED
        assert event.remote_reason == stem.CircClosureReason.FINISHED
        assert (event.socks_username, event.socks_password) == ("user", "pass word")
        assert event.purpose == stem.CircPurpose.CONTROLLER
        assert event.build_flags == (stem.CircBuildFlag.NEED_CAPACITY,)

    def test_stem_get_circuits_reads_a_circuit_status_block(self):
        lines = [
            circuit_status_line(5, "BUILT", [(FP1, "a"), (FP2, "b"), (FP3, "c")], time_created=CREATED),
            circuit_status_line(6, "EXTENDED", [(FP1, "a")], time_created=CREATED),
            circuit_status_line(7, "LAUNCHED", time_created=CREATED),
        ]
        raw = reply(250, [DataBlock("circuit-status=", "\n".join(lines)), "OK"])
        message = stem.socket.recv_message(io.BytesIO(raw))
        stem.response.convert("GETINFO", message)
        text = message.entries["circuit-status"].decode()
        # what stem's Controller.get_circuits() does with each line
        ids = [parse_event(f"650 CIRC {line}\r\n".encode()).id for line in text.splitlines()]
        assert ids == ["5", "6", "7"]

    @pytest.mark.parametrize(
        "kwargs",
        [
            dict(circ_id="circ-5", status="BUILT"),
            dict(circ_id="12345678901234567", status="BUILT"),
            dict(circ_id=1, status="NOT ONE WORD"),
            dict(circ_id=1, status="BUILT", path=[("XYZ", "nick")]),
            dict(circ_id=1, status="BUILT", path=[(FP1, "bad nick")]),
            dict(circ_id=1, status="BUILT", purpose="A=B"),
        ],
    )
    def test_refuses_values_that_break_the_syntax(self, kwargs):
        with pytest.raises(EventFormatError):
            circuit_status_line(**kwargs)

    def test_reason_names(self):
        assert circuit_reason_name(1) == "TORPROTOCOL"
        assert circuit_reason_name(3) == "REQUESTED"
        assert circuit_reason_name(9) == "FINISHED"
        assert circuit_reason_name(99) == "UNKNOWN_99"
        assert stream_reason_name(6) == "DONE"
        assert stream_reason_name(1) == "MISC"
        assert stream_reason_name(77) == "UNKNOWN_77"

    def test_time_created(self):
        assert format_time_created(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05.000000"
        aware = datetime(2026, 1, 2, 5, 4, 5, 6, tzinfo=timezone(timedelta(hours=2)))
        assert format_time_created(aware) == "2026-01-02T03:04:05.000006"
        assert format_time_created(0.5) == "1970-01-01T00:00:00.500000"

    def test_path(self):
        assert format_path([(FP2, "x"), (FP1, None)]) == f"${FP2.upper()}~x,${FP1}"


class TestStream:
    def test_tor_layout_for_new(self):
        raw = stream_event(
            54, "NEW", 0, ("127.0.0.1", 18080), source_addr=("127.0.0.1", 42008), purpose="USER",
            client_protocol="SOCKS5", nym_epoch=0, session_group=-1, iso_fields=["SOCKS_USERNAME", "SOCKS_PASSWORD"],
        )
        assert raw == (
            b"650 STREAM 54 NEW 0 127.0.0.1:18080 SOURCE_ADDR=127.0.0.1:42008 PURPOSE=USER CLIENT_PROTOCOL=SOCKS5 "
            b"NYM_EPOCH=0 SESSION_GROUP=-1 ISO_FIELDS=SOCKS_USERNAME,SOCKS_PASSWORD\r\n"
        )
        event = parse_event(raw)
        assert (event.id, event.status, event.circ_id) == ("54", stem.StreamStatus.NEW, None)
        assert (event.target_address, event.target_port) == ("127.0.0.1", 18080)
        assert (event.source_address, event.source_port, event.purpose) == ("127.0.0.1", 42008, stem.StreamPurpose.USER)

    def test_stem_parses_every_status(self):
        for status in STREAM_STATUSES:
            event = parse_event(stream_event(9, status, 27, ("example.com", 443)))
            assert (event.id, event.status, event.circ_id, event.target_port) == ("9", status, "27", 443)

    def test_remote_end_and_remap(self):
        event = parse_event(stream_event(9, "CLOSED", 27, ("example.com", 80), reason="END", remote_reason="DONE"))
        assert (event.reason, event.remote_reason) == (stem.StreamClosureReason.END, stem.StreamClosureReason.DONE)
        event = parse_event(stream_event(9, "REMAP", 27, ("93.184.216.34", 80), source="EXIT"))
        assert event.source == stem.StreamSource.EXIT

    def test_ipv6_target_is_bracketed(self):
        raw = stream_event(3, "SENTCONNECT", 1, ("2001:db8::1", 443))
        assert b" [2001:db8::1]:443" in raw
        assert parse_event(raw).target_port == 443

    def test_status_line(self):
        assert stream_status_line(71, "NEW", None, ("127.0.0.1", 18080)) == "71 NEW 0 127.0.0.1:18080"
        with pytest.raises(EventFormatError):
            stream_status_line(71, "NEW", None, ("127.0.0.1", 70000))
        with pytest.raises(EventFormatError):
            stream_status_line(71, "NEW", None, ("bad host", 80))


class TestOtherEvents:
    def test_orconn(self):
        raw = orconn_event((FP1, "relay0"), "LAUNCHED", conn_id=70)
        assert raw == f"650 ORCONN ${FP1}~relay0 LAUNCHED ID=70\r\n".encode()
        event = parse_event(orconn_event((FP1, "relay0"), "CLOSED", reason="DONE", ncircs=2, conn_id=70))
        assert (event.endpoint_fingerprint, event.status, event.reason, event.circ_count, event.id) == (
            FP1, stem.ORStatus.CLOSED, stem.ORClosureReason.DONE, 2, "70",
        )
        event = parse_event(orconn_event("127.0.0.1:5000", "FAILED", reason="CONNECTREFUSED", conn_id=3))
        assert (event.endpoint_address, event.endpoint_port) == ("127.0.0.1", 5000)
        assert orconn_status_line((FP1, "relay0"), "CONNECTED") == f"${FP1}~relay0 CONNECTED"

    def test_bw(self):
        assert bw_event(228, 684) == b"650 BW 228 684\r\n"
        event = parse_event(bw_event(0, 0))
        assert (event.read, event.written) == (0, 0)
        with pytest.raises(EventFormatError):
            bw_event(-1, 0)

    def test_circ_bw_as_tor_writes_it(self):
        raw = circ_bw_event(12, CREATED, 5090, 1018, 4000, 980, 900, 96)
        assert raw == (b"650 CIRC_BW ID=12 READ=5090 WRITTEN=1018 TIME=2026-11-21T14:37:07.017402 "
                       b"DELIVERED_READ=4000 OVERHEAD_READ=980 DELIVERED_WRITTEN=900 OVERHEAD_WRITTEN=96\r\n")
        event = parse_event(raw)
        assert isinstance(event, stem.response.events.CircuitBandwidthEvent)
        assert (event.id, event.read, event.written, event.delivered_read, event.overhead_read,
                event.delivered_written, event.overhead_written) == ("12", 5090, 1018, 4000, 980, 900, 96)
        assert event.time == CREATED.replace(tzinfo=None)
        with pytest.raises(EventFormatError):
            circ_bw_event(12, CREATED, -1, 0, 0, 0, 0, 0)

    def test_circ_bw_congestion_fields_in_tors_units(self):
        # congestion_control_get_control_port_fields: SS as 0/1, CWND in cells, RTTs in whole milliseconds.
        raw = circ_bw_event(3, CREATED, 509, 0, 498, 0, 0, 0, congestion=(True, 124, 41_999, 2_500))
        assert raw.endswith(b" OVERHEAD_WRITTEN=0 SS=1 CWND=124 RTT=41 MIN_RTT=2\r\n")
        event = parse_event(raw)
        assert event.read == 509
        assert {key: event.keyword_args[key] for key in ("SS", "CWND", "RTT", "MIN_RTT")} == {
            "SS": "1", "CWND": "124", "RTT": "41", "MIN_RTT": "2"}
        assert b" SS=0 " in circ_bw_event(3, CREATED, 509, 0, 498, 0, 0, 0, congestion=(False, 31, 1000, 999))
        with pytest.raises(EventFormatError):
            circ_bw_event(3, CREATED, 509, 0, 498, 0, 0, 0, congestion=(False, -1, 0, 0))

    def test_log_events_strip_newlines_like_tor(self):
        assert log_event("notice", "Bootstrapped 100%\r\nmore\n\n") == b"650 NOTICE Bootstrapped 100%  more\r\n"
        event = parse_event(log_event("WARN", "something odd"))
        assert (event.runlevel, event.message) == (stem.Runlevel.WARN, "something odd")
        with pytest.raises(EventFormatError):
            log_event("LOUD", "x")

    def test_signal(self):
        assert signal_event("newnym") == b"650 SIGNAL NEWNYM\r\n"
        assert signal_event("HUP") == b"650 SIGNAL RELOAD\r\n"
        assert signal_event("INT") == b"650 SIGNAL HALT\r\n"
        assert parse_event(signal_event("NEWNYM")).signal == stem.Signal.NEWNYM
        with pytest.raises(EventFormatError):
            signal_event("FROB")

    def test_conf_changed(self):
        raw = conf_changed_event([("__LeaveStreamsUnattached", "1"), ("ExcludeNodes", None)])
        assert raw == b"650-CONF_CHANGED\r\n650-__LeaveStreamsUnattached=1\r\n650-ExcludeNodes\r\n650 OK\r\n"
        event = parse_event(raw)
        assert event.changed == {"__LeaveStreamsUnattached": ["1"]}
        assert event.unset == ["ExcludeNodes"]
        assert conf_changed_event([]) == b""


def test_hs_desc_events_as_tor_writes_them_for_v3():
    hsdir = "$" + "A" * 40 + "~relay0"
    address = "3eqe6bz7i7fffkn55didvjh7szwyhpkcwnbwujeo4alm5xqv62nbssyd"
    blinded = "kZ0BHzrJjKBhOGa0hN3sf6ydiYSykX2wCR4wH6y5vZ8"
    assert hs_desc_event("REQUESTED", address, hsdir, blinded) == \
        f"650 HS_DESC REQUESTED {address} NO_AUTH {hsdir} {blinded}\r\n".encode()
    assert hs_desc_event("FAILED", address, hsdir, blinded, "NOT_FOUND") == \
        f"650 HS_DESC FAILED {address} NO_AUTH {hsdir} {blinded} REASON=NOT_FOUND\r\n".encode()
    with pytest.raises(EventFormatError):
        hs_desc_event("RECEIVED", address + " x", hsdir, blinded)


def test_transport_launched_event():
    raw = transport_launched_event("client", "obfs4", "127.0.0.1", 41234)
    assert raw == b"650 TRANSPORT_LAUNCHED client obfs4 127.0.0.1 41234\r\n"
    event = parse_event(raw)
    assert (event.type, event.name, event.address, event.port) == ("client", "obfs4", "127.0.0.1", 41234)


def test_circ_minor_purpose_changed_as_tor_writes_it():
    # tor control_event_circuit_status_minor: "650 CIRC_MINOR %lu %s%s%s%s" with the circuit as in CIRC, then
    # " OLD_PURPOSE=%s OLD_HS_STATE=%s".
    address = "3eqe6bz7i7fffkn55didvjh7szwyhpkcwnbwujeo4alm5xqv62nbssyd"
    raw = circ_minor_event(12, "PURPOSE_CHANGED", [("A" * 40, "relay0"), ("B" * 40, "relay1")], "HS_CLIENT_REND",
                           "HSCR_CONNECTING", purpose="HS_CLIENT_REND", hs_state="HSCR_ESTABLISHED_IDLE",
                           rend_query=address)
    assert raw == (f"650 CIRC_MINOR 12 PURPOSE_CHANGED ${'A' * 40}~relay0,${'B' * 40}~relay1 PURPOSE=HS_CLIENT_REND "
                   f"HS_STATE=HSCR_ESTABLISHED_IDLE REND_QUERY={address} OLD_PURPOSE=HS_CLIENT_REND "
                   f"OLD_HS_STATE=HSCR_CONNECTING\r\n").encode()
    assert circ_minor_event(3, "PURPOSE_CHANGED", [], "GENERAL", purpose="HS_CLIENT_HSDIR") == \
        b"650 CIRC_MINOR 3 PURPOSE_CHANGED PURPOSE=HS_CLIENT_HSDIR OLD_PURPOSE=GENERAL\r\n"
    with pytest.raises(EventFormatError):
        circ_minor_event(3, "PURPOSE_CHANGED", [], "GENERAL PURPOSE", purpose="HS_CLIENT_HSDIR")
