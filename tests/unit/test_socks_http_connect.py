"""HTTPTunnelPort's sans-IO request parser (oppy.socks.http_connect): tor's answers, byte for byte."""

from __future__ import annotations

import pytest

from oppy.cell.commands import EndReason
from oppy.socks.http_connect import (
    BAD_REQUEST,
    CONNECT_SUCCEEDED,
    MAX_HEAD_LEN,
    NOT_AN_HTTP_PROXY_RESPONSE,
    URI_TOO_LONG,
    HttpConnectServerConnection,
    failure_response,
)
from oppy.socks.messages import AddressType, LocalEndReason, SocksCommand
from oppy.socks.protocol import SocksFailure, SocksRequest, SocksState, SocksStateError


def fed(*pieces: bytes) -> tuple[HttpConnectServerConnection, list]:
    connection = HttpConnectServerConnection()
    events = []
    for piece in pieces:
        events += connection.feed(piece)
    return connection, events


def test_a_connect_request_in_any_pieces_gives_one_request_and_keeps_what_follows():
    data = (b"CONNECT web.test:80 HTTP/1.1\r\nHost: web.test:80\r\nProxy-Authorization: Basic eC10b3I6cHc=\r\n"
            b"X-Tor-Stream-Isolation: tab-1\r\n\r\nGET / HTTP/1.0\r\n\r\n")
    for cut in range(len(data) + 1):
        connection, events = fed(data[:cut], data[cut:])
        assert events == [SocksRequest(0, SocksCommand.CONNECT, "web.test", AddressType.HOSTNAME, 80,
                                       b"Basic eC10b3I6cHc=", b"tab-1")]
        assert connection.state is SocksState.REQUEST_RECEIVED and connection.data_to_send() == b""
        assert connection.take_trailing_data() == b"GET / HTTP/1.0\r\n\r\n"
    connection.reply_connect_succeeded()
    assert connection.data_to_send() == CONNECT_SUCCEEDED == b"HTTP/1.0 200 OK\r\n\r\n"
    assert connection.feed(b"more") == [] and connection.take_trailing_data() == b"more"


def test_the_new_isolation_header_wins_and_header_names_are_case_blind():
    _, (request,) = fed(b"CONNECT [2001:DB8::1]:443 HTTP/1.0\r\nx-tor-stream-isolation: old\r\n"
                        b"TOR-STREAM-ISOLATION: new\r\n\r\n")
    assert (request.address, request.address_type, request.port) == ("2001:db8::1", AddressType.IPV6, 443)
    assert (request.username, request.password) == (b"", b"new")


@pytest.mark.parametrize("head, answer", [
    (b"GET http://web.test/ HTTP/1.1\r\nHost: web.test\r\n\r\n", NOT_AN_HTTP_PROXY_RESPONSE),
    (b"POST / HTTP/1.0\r\n\r\n", NOT_AN_HTTP_PROXY_RESPONSE),
    (b"CONNECT web.test HTTP/1.1\r\n\r\n", BAD_REQUEST),                  # no port
    (b"CONNECT web.test:0 HTTP/1.1\r\n\r\n", BAD_REQUEST),
    (b"CONNECT web.test:65536 HTTP/1.1\r\n\r\n", BAD_REQUEST),
    (b"CONNECT web.test:80\r\n\r\n", BAD_REQUEST),                        # no version
    (b"CONNECT web.test:80 FTP/1.0\r\n\r\n", BAD_REQUEST),
    (b"CONNECT web..test:80 HTTP/1.0\r\n\r\n", BAD_REQUEST),
    (b"CONNECT [::1:80 HTTP/1.0\r\n\r\n", BAD_REQUEST),
    (b"CONNECT web.test:80 HTTP/1.0\r\nno colon here\r\n\r\n", BAD_REQUEST),
    (b"CONNECT w\xe9b.test:80 HTTP/1.0\r\n\r\n", BAD_REQUEST),
    (b"CONNECT " + b"a" * 256 + b".test:80 HTTP/1.0\r\n\r\n", URI_TOO_LONG),
])
def test_refused_requests_get_tors_answer_and_nothing_else(head, answer):
    connection, events = fed(head + b"trailing bytes")
    assert len(events) == 1 and isinstance(events[0], SocksFailure)
    assert connection.data_to_send() == answer and connection.should_close
    assert connection.take_trailing_data() == b"" and connection.feed(b"CONNECT a.test:1 HTTP/1.0\r\n\r\n") == []
    with pytest.raises(SocksStateError):
        connection.reply_connect_succeeded()


def test_the_405_page_is_tors():
    assert NOT_AN_HTTP_PROXY_RESPONSE.startswith(b"HTTP/1.0 405 Method Not Allowed\r\nContent-Type: text/html; "
                                                 b"charset=iso-8859-1\r\n\r\n<html>\n")
    assert b"<h1>This is an HTTP CONNECT tunnel, not an HTTP proxy.</h1>" in NOT_AN_HTTP_PROXY_RESPONSE


def test_a_head_longer_than_tor_reads_is_a_bad_request():
    connection, events = fed(b"CONNECT web.test:80 HTTP/1.0\r\nX-Long: " + b"x" * MAX_HEAD_LEN)
    assert isinstance(events[0], SocksFailure) and connection.data_to_send() == BAD_REQUEST
    connection, events = fed(b"CONNECT web.test:80 HTTP/1.0\r\nX-Long: " + b"x" * (MAX_HEAD_LEN - 200) + b"\r\n\r\n")
    assert isinstance(events[0], SocksRequest)


@pytest.mark.parametrize("reason, status_line", [
    (EndReason.RESOLVEFAILED, b"HTTP/1.0 503 Service Unavailable (resolve failed)"),
    (EndReason.NOROUTE, b"HTTP/1.0 503 Service Unavailable (no route)"),
    (EndReason.CONNECTREFUSED, b"HTTP/1.0 403 Forbidden (connection refused)"),
    (EndReason.EXITPOLICY, b"HTTP/1.0 503 Service Unavailable (exit policy)"),
    (EndReason.DONE, b"HTTP/1.0 502 Bad Gateway (unexpected close)"),
    (EndReason.TIMEOUT, b"HTTP/1.0 504 Gateway Timeout"),
    (EndReason.MISC, b"HTTP/1.0 500 Internal Server Error"),
    (LocalEndReason.ENTRYPOLICY, b"HTTP/1.0 403 Forbidden (entry policy violation)"),
    (LocalEndReason.CANT_ATTACH, b"HTTP/1.0 500 Internal Server Error (weird end reason)"),
])
def test_a_failed_stream_answers_its_status_and_names_the_reason(reason, status_line):
    connection, _ = fed(b"CONNECT web.test:80 HTTP/1.0\r\n\r\n")
    connection.reply_failed_for_end_reason(reason)
    name = (EndReason(reason) if reason in EndReason._value2member_map_ else LocalEndReason(reason)).name
    assert connection.data_to_send() == status_line + b"\r\nTor-Request-Failed: " + name.encode() + b"\r\n\r\n"
    assert connection.should_close
    assert failure_response(reason | 0x200) == failure_response(reason)  # flag bits are ignored


@pytest.mark.parametrize("reply_code, status_line", [
    (0x01, b"HTTP/1.0 500 Internal Server Error"),                  # GENERAL_FAILURE
    (0x02, b"HTTP/1.0 403 Forbidden (entry policy violation)"),    # NOT_ALLOWED
    (0x04, b"HTTP/1.0 503 Service Unavailable (resolve failed)"),  # HOST_UNREACHABLE
    (0x06, b"HTTP/1.0 504 Gateway Timeout"),                       # TTL_EXPIRED
])
def test_a_refusal_worded_as_a_socks_reply_gets_the_status_of_its_reason(reply_code, status_line):
    connection, _ = fed(b"CONNECT web.test:80 HTTP/1.0\r\n\r\n")
    connection.reply_failed(reply_code)
    assert connection.data_to_send().startswith(status_line + b"\r\nTor-Request-Failed: ")
