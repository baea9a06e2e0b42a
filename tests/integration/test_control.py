"""oppy's control port driven by stem's real Controller, against the private network of real relays."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import threading
import time

import pytest
import stem
import stem.connection
from hypothesis import HealthCheck, given, settings, strategies as st
from stem import CircStatus, Signal, StreamStatus
from stem.control import Controller, EventType

from oppy.crypto.s2k import hash_password
from tests.integration.test_congestion_control import network_cc_alg
from tests.support.network import TestNetwork
from tests.support.oppy_process import OppyProcess, free_port
from tests.support.relays import fetch
from tests.support.socks_client import recv_exactly, socks5_request

PASSWORD = "correct horse battery staple"
EVENT_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def oppy(network: TestNetwork, tmp_path_factory):
    control_port = free_port()
    process = OppyProcess(network, tmp_path_factory.mktemp("oppy-control") / "data", extra_lines=[
        f"ControlPort 127.0.0.1:{control_port}", "CookieAuthentication 1",
        f"HashedControlPassword {hash_password(PASSWORD)}"])
    process.control_port = control_port
    process.wait_ready()
    yield process
    assert process.stop() == 0


@pytest.fixture
def controller(oppy):
    with Controller.from_port(port=oppy.control_port) as connected:
        connected.authenticate(password=PASSWORD)
        yield connected
        if connected.is_alive():
            connected.reset_conf("__LeaveStreamsUnattached")


class Events:
    """Every event of the given types a controller receives, with a way to wait for one."""

    def __init__(self, controller: Controller, *types) -> None:
        self.controller = controller
        self.types = types
        self.seen: list = []
        self.changed = threading.Condition()
        controller.add_event_listener(self._received, *types)

    def _received(self, event) -> None:
        with self.changed:
            self.seen.append(event)
            self.changed.notify_all()

    def wait_for(self, predicate, timeout: float = EVENT_TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for event in self.seen:
                    if predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no matching event in {timeout:.0f}s; saw:\n"
                                         + "\n".join(str(event) for event in self.seen[-30:]))
                self.changed.wait(remaining)

    def of(self, kind: str, **fields) -> list:
        with self.changed:
            return [event for event in self.seen if event.type == kind
                    and all(getattr(event, name) == value for name, value in fields.items())]

    def close(self) -> None:
        self.controller.remove_event_listener(self._received)


def curl(oppy: OppyProcess, url: str, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", str(timeout), "--socks5-hostname",
                           f"127.0.0.1:{oppy.socks_port}", *extra, url], capture_output=True, timeout=timeout + 30)


def curl_in_background(oppy: OppyProcess, url: str, *extra: str) -> tuple[threading.Thread, dict]:
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("done", curl(oppy, url, *extra)), daemon=True)
    thread.start()
    return thread, result


def expected_sha256(network: TestNetwork, length: int) -> str:
    return fetch(network.url(f"/sha256/{length}")).decode().strip()


def fingerprint(network: TestNetwork, nickname: str) -> str:
    return network.node(nickname)["fingerprint"]


def stream_statuses(events: Events, stream_id: str) -> list[str]:
    return [event.status for event in events.of("STREAM", id=stream_id)]


# --------------------------------------------------------------------------- authentication


def test_protocolinfo_lists_cookie_safecookie_and_password(oppy):
    with Controller.from_port(port=oppy.control_port) as connected:
        info = stem.connection.get_protocolinfo(connected)
    assert set(info.auth_methods) == {stem.connection.AuthMethod.COOKIE, stem.connection.AuthMethod.SAFECOOKIE,
                                      stem.connection.AuthMethod.PASSWORD}
    assert info.cookie_path == str(oppy.data_directory / "control_auth_cookie")
    assert os.path.getsize(info.cookie_path) == 32
    assert str(info.tor_version) == "0.4.9.11 (oppy-0.1.0)"


@pytest.mark.parametrize("method", ["cookie", "safecookie", "password"])
def test_each_authentication_method(oppy, method):
    cookie_path = str(oppy.data_directory / "control_auth_cookie")
    with Controller.from_port(port=oppy.control_port) as connected:
        if method == "cookie":
            stem.connection.authenticate_cookie(connected, cookie_path)
        elif method == "safecookie":
            stem.connection.authenticate_safecookie(connected, cookie_path)
        else:
            stem.connection.authenticate_password(connected, PASSWORD)
        assert connected.get_info("version") == "0.4.9.11 (oppy-0.1.0)"


@pytest.mark.parametrize("method", ["cookie", "safecookie", "password"])
def test_wrong_secrets_are_refused(oppy, method, tmp_path):
    wrong_cookie = tmp_path / "wrong_cookie"
    wrong_cookie.write_bytes(os.urandom(32))
    with Controller.from_port(port=oppy.control_port) as connected:
        with pytest.raises(stem.connection.AuthenticationFailure):
            if method == "cookie":
                stem.connection.authenticate_cookie(connected, str(wrong_cookie))
            elif method == "safecookie":
                stem.connection.authenticate_safecookie(connected, str(wrong_cookie))
            else:
                stem.connection.authenticate_password(connected, "not the password")


def test_null_authentication_only_without_cookie_or_password(network, tmp_path):
    control_port = free_port()
    process = OppyProcess(network, tmp_path / "data", extra_lines=[f"ControlPort {control_port}"])
    try:
        process.wait_for_line(r"Opened Control listener connection \(ready\)")
        with Controller.from_port(port=control_port) as connected:
            assert stem.connection.get_protocolinfo(connected).auth_methods == (stem.connection.AuthMethod.NONE,)
            stem.connection.authenticate_none(connected)
            assert connected.get_version() >= stem.version.Version("0.4.6.1-alpha")
    finally:
        assert process.stop() == 0


# --------------------------------------------------------------------------- reading oppy's state


def test_version_circuits_and_getinfo(oppy, controller, network):
    version = controller.get_version()
    assert str(version) == "0.4.9.11 (oppy-0.1.0)"
    circuits = controller.get_circuits()
    built = [circuit for circuit in circuits
             if circuit.status == CircStatus.BUILT and "ONEHOP_TUNNEL" not in circuit.build_flags]
    assert built and all(len(circuit.path) == 3 for circuit in built)
    # The directory's one-hop BEGIN_DIR circuits are listed as tor lists them.
    one_hop = [circuit for circuit in circuits if "ONEHOP_TUNNEL" in circuit.build_flags]
    assert one_hop and all(circuit.build_flags == ("ONEHOP_TUNNEL", "IS_INTERNAL", "NEED_CAPACITY")
                           and circuit.purpose == "GENERAL" for circuit in one_hop)
    assert all(len(circuit.path) == 1 for circuit in one_hop if circuit.status == CircStatus.BUILT)
    relays = {node["fingerprint"] for node in network.relays()}
    assert all(fp in relays for circuit in built for fp, _ in circuit.path)
    assert controller.get_listeners("SOCKS") == [("127.0.0.1", oppy.socks_port)]
    assert controller.get_listeners("CONTROL") == [("127.0.0.1", oppy.control_port)]
    assert controller.get_info("status/circuit-established") == "1"
    assert controller.get_info("status/bootstrap-phase") == 'NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY="Done"'
    assert controller.get_info("process/pid") == str(oppy.process.pid)
    assert controller.get_info("config-file") == str(oppy.torrc)
    guard_fp = built[0].path[0][0]
    status = controller.get_network_status(guard_fp)
    assert status.fingerprint == guard_fp and "Guard" in status.flags
    assert controller.get_microdescriptor(guard_fp).onion_key is not None
    assert guard_fp in controller.get_info("entry-guards")
    assert len(list(controller.get_network_statuses())) == len(network.relays())
    with pytest.raises(stem.OperationFailed):
        controller.get_info("fingerprint")
    with pytest.raises(stem.InvalidArguments):
        controller.get_info("no-such-key")


def test_get_streams_while_a_download_runs(oppy, controller, network):
    code, sock = socks5_request(oppy.socks_port, "127.0.0.1", network.http_port)
    assert code == 0
    try:
        sock.sendall(b"GET /bytes/50000000 HTTP/1.0\r\n\r\n")
        recv_exactly(sock, 100_000)  # the download is under way; it stalls while we do not read
        streams = [s for s in controller.get_streams() if s.target_port == network.http_port]
        assert len(streams) == 1
        stream = streams[0]
        assert stream.status == StreamStatus.SUCCEEDED and stream.target_address == "127.0.0.1"
        circuit = controller.get_circuit(stream.circ_id)
        assert circuit.status == CircStatus.BUILT
    finally:
        sock.close()


def test_bandwidth_events_and_traffic_counters(oppy, controller, network):
    events = Events(controller, EventType.BW)
    before = int(controller.get_info("traffic/read"))
    result = curl(oppy, network.url("/bytes/2000000"))
    assert result.returncode == 0 and len(result.stdout) == 2_000_000
    events.wait_for(lambda event: event.read > 0)
    time.sleep(1.5)  # one more BW tick
    assert int(controller.get_info("traffic/read")) - before >= 2_000_000
    assert int(controller.get_info("traffic/written")) > 0
    samples = controller.get_info("bw-event-cache").split()
    assert samples and all(re.fullmatch(r"\d+,\d+", sample) for sample in samples)
    events.close()


def circuits_of_set(controller, circuit_id: str) -> set[str]:
    """`circuit_id` and, when it is a conflux leg, the other legs of its set (control-spec CONFLUX_ID)."""
    lines = controller.get_info("circuit-status").splitlines()
    sets = {line.split()[0]: re.search(r" CONFLUX_ID=(\S+)", line) for line in lines if line.strip()}
    found = sets.get(circuit_id)
    if found is None:
        return {circuit_id}
    return {number for number, match in sets.items() if match is not None and match[1] == found[1]}


def test_circuit_bandwidth_events_during_a_fetch(oppy, controller, network):
    """CIRC_BW (control-spec): about one event a second for the circuit carrying a download, whose
    DELIVERED_READ adds up to at least the bytes fetched, READ counting 509 per cell."""
    events = Events(controller, EventType.CIRC_BW, EventType.STREAM)
    started = time.monotonic()
    result = curl(oppy, network.url("/bytes/5000000"))
    assert result.returncode == 0 and len(result.stdout) == 5_000_000
    elapsed = time.monotonic() - started
    succeeded = events.wait_for(lambda event: event.type == "STREAM" and event.status == StreamStatus.SUCCEEDED
                                and event.target_port == network.http_port)
    time.sleep(2.5)  # the tick after the last cell
    # With conflux the download came over the legs of the stream's set (one CONFLUX_ID in circuit-status).
    legs = circuits_of_set(controller, succeeded.circ_id)
    mine = [event for event in events.of("CIRC_BW") if event.id in legs]
    assert mine, "no CIRC_BW event for the download's circuit"
    delivered = sum(event.delivered_read for event in mine)
    assert delivered >= 5_000_000
    assert sum(event.read for event in mine) >= delivered + sum(event.overhead_read for event in mine)
    assert sum(event.read for event in mine) % 509 == 0
    assert sum(event.delivered_written for event in mine) > 0  # BEGIN and the HTTP request
    # Once a second at most for each circuit: not one event per cell.
    assert len(mine) <= len(legs) * (elapsed + 4)
    for leg in legs:
        times = [event.time for event in mine if event.id == leg]
        assert all(later > earlier for earlier, later in zip(times, times[1:]))
    # The network's 0.4.9 exits negotiate congestion control unless its consensus turns it off (cc_alg=0):
    # then the events carry the controller's state, which stem (1.8, older than these fields) leaves in
    # keyword_args.
    if network_cc_alg(network) == 0:
        assert not any("CWND" in event.keyword_args for event in mine)
        events.close()
        return
    assert f"Circuit {succeeded.circ_id}: congestion control (Vegas) negotiated" in oppy.info_log
    for event in mine:
        fields = {key: event.keyword_args.get(key) for key in ("SS", "CWND", "RTT", "MIN_RTT")}
        assert fields["SS"] in ("0", "1") and all(value.isdigit() for value in fields.values()), fields
        assert int(fields["CWND"]) > 0 and int(fields["RTT"]) >= int(fields["MIN_RTT"])
    events.close()


# --------------------------------------------------------------------------- events for a fetch


def test_stream_and_circuit_events_then_newnym_gives_a_new_circuit(oppy, controller, network):
    events = Events(controller, EventType.STREAM, EventType.CIRC, EventType.SIGNAL)
    first = curl(oppy, network.url("/bytes/1000"))
    assert first.returncode == 0 and len(first.stdout) == 1000
    opened = events.wait_for(lambda e: e.type == "STREAM" and e.status == StreamStatus.CLOSED
                             and e.target_port == network.http_port)
    assert stream_statuses(events, opened.id) == ["NEW", "SENTCONNECT", "SUCCEEDED", "CLOSED"]
    new = events.of("STREAM", id=opened.id, status=StreamStatus.NEW)[0]
    assert new.source_address == "127.0.0.1" and new.purpose == "USER"
    first_circuit = events.of("STREAM", id=opened.id, status=StreamStatus.SUCCEEDED)[0].circ_id

    controller.signal(Signal.NEWNYM)
    events.wait_for(lambda e: e.type == "SIGNAL" and e.signal == Signal.NEWNYM)
    second = curl(oppy, network.url("/bytes/1000"))
    assert second.returncode == 0 and len(second.stdout) == 1000
    later = events.wait_for(lambda e: e.type == "STREAM" and e.status == StreamStatus.SUCCEEDED
                            and e.id != opened.id and e.target_port == network.http_port)
    assert later.circ_id != first_circuit
    # The new circuit was built after NEWNYM, and the events showed it being built.
    statuses = [event.status for event in events.of("CIRC", id=later.circ_id)]
    assert statuses[0] == CircStatus.LAUNCHED and CircStatus.EXTENDED in statuses and CircStatus.BUILT in statuses
    events.close()


def test_new_circuit_through_a_chosen_path(controller, network):
    path = [fingerprint(network, name) for name in ("relay0", "relay1", "exit0")]
    events = Events(controller, EventType.CIRC)
    circuit_id = controller.new_circuit(path, await_build=True)
    circuit = controller.get_circuit(circuit_id)
    assert circuit.status == CircStatus.BUILT
    assert [fp for fp, _ in circuit.path] == path
    assert [nick for _, nick in circuit.path] == ["relay0", "relay1", "exit0"]
    statuses = [event.status for event in events.of("CIRC", id=circuit_id)]
    assert statuses == [CircStatus.LAUNCHED, CircStatus.EXTENDED, CircStatus.EXTENDED, CircStatus.BUILT]
    with pytest.raises(stem.InvalidRequest):
        controller.extend_circuit("0", ["nosuchrelay"])
    events.close()


# --------------------------------------------------------------------------- controller-attached streams


def waiting_stream(events: Events, port: int, exclude=()) -> str:
    # stem 1.8 has no StreamStatus constant for CONTROLLER_WAIT: the status stays a string.
    event = events.wait_for(lambda e: e.type == "STREAM" and e.status == "CONTROLLER_WAIT"
                            and e.target_port == port and e.id not in exclude)
    return event.id


@pytest.mark.parametrize("exit_name", ["exit0", "exit1"])
def test_leave_streams_unattached_and_attach_to_a_chosen_exit(oppy, controller, network, exit_name):
    exit_fp = fingerprint(network, exit_name)
    circuit_id = controller.new_circuit([fingerprint(network, "relay2"), fingerprint(network, "relay3"), exit_fp],
                                        await_build=True)
    controller.set_conf("__LeaveStreamsUnattached", "1")
    assert controller.get_conf("__LeaveStreamsUnattached") == "1"
    events = Events(controller, EventType.STREAM)
    size = 300_000
    thread, result = curl_in_background(oppy, network.url(f"/bytes/{size}"))
    stream_id = waiting_stream(events, network.http_port)
    time.sleep(0.5)
    assert stream_statuses(events, stream_id) == ["NEW", "CONTROLLER_WAIT"]  # nothing attached it meanwhile
    controller.attach_stream(stream_id, circuit_id)
    thread.join(EVENT_TIMEOUT)
    assert result["done"].returncode == 0, result["done"].stderr
    assert hashlib.sha256(result["done"].stdout).hexdigest() == expected_sha256(network, size)
    succeeded = events.wait_for(lambda e: e.id == stream_id and e.status == StreamStatus.SUCCEEDED)
    assert succeeded.circ_id == circuit_id
    assert controller.get_circuit(circuit_id).path[-1] == (exit_fp, exit_name)
    deadline = time.monotonic() + 10
    while f"Attached stream {stream_id} to circuit {circuit_id}" not in oppy.info_log:
        assert time.monotonic() < deadline, "no 'Attached stream' line in oppy's info log"
        time.sleep(0.2)
    events.close()


def test_attach_stream_to_an_inner_hop(oppy, controller, network):
    """ATTACHSTREAM HOP= (control-spec 3.5): the stream exits from hop 2 of the 3. On a circuit whose middle is
    an exit, 1 MB comes back byte-exact (its cells and SENDMEs are that hop's); a middle that is no exit
    answers the BEGIN with END (exit policy), which detaches the stream as tor does; tor's 551s otherwise."""
    size = 1_000_000
    through_exit = controller.new_circuit([fingerprint(network, name) for name in ("relay2", "exit0", "exit1")],
                                          await_build=True)
    through_middle = controller.new_circuit([fingerprint(network, name) for name in ("relay2", "relay3", "exit0")],
                                            await_build=True)
    controller.set_conf("__LeaveStreamsUnattached", "1")
    events = Events(controller, EventType.STREAM)
    thread, result = curl_in_background(oppy, network.url(f"/bytes/{size}"))
    stream_id = waiting_stream(events, network.http_port)
    for hop, answer in (("1", "551 Can't attach stream to this one-hop circuit."),
                        ("4", "551 Circuit doesn't have 4 hops.")):
        reply = controller.msg(f"ATTACHSTREAM {stream_id} {through_exit} HOP={hop}")
        assert reply.raw_content().strip() == answer
    assert stream_statuses(events, stream_id) == ["NEW", "CONTROLLER_WAIT"]

    assert controller.msg(f"ATTACHSTREAM {stream_id} {through_middle} HOP=2").is_ok()
    detached = events.wait_for(lambda e: e.id == stream_id and e.status == StreamStatus.DETACHED)
    assert detached.circ_id in (None, through_middle)
    assert stream_statuses(events, stream_id)[-3:] == ["SENTCONNECT", "DETACHED", "CONTROLLER_WAIT"]
    assert thread.is_alive()  # the application is still waiting: the stream may be attached again
    failed = f"stream {stream_id}: attempt 1 failed (the exit ended the stream: EXITPOLICY)"
    deadline = time.monotonic() + 10
    while failed not in oppy.info_log:
        assert time.monotonic() < deadline, f"no {failed!r} in oppy's info log"
        time.sleep(0.2)

    assert controller.msg(f"ATTACHSTREAM {stream_id} {through_exit} HOP=2").is_ok()
    thread.join(EVENT_TIMEOUT * 2)
    assert result["done"].returncode == 0, result["done"].stderr
    assert hashlib.sha256(result["done"].stdout).hexdigest() == expected_sha256(network, size)
    succeeded = events.wait_for(lambda e: e.id == stream_id and e.status == StreamStatus.SUCCEEDED)
    assert succeeded.circ_id == through_exit
    assert controller.get_circuit(through_exit).status == CircStatus.BUILT  # no window or tag went wrong
    events.close()


def test_close_stream_and_close_circuit(oppy, controller, network):
    controller.set_conf("__LeaveStreamsUnattached", "1")
    events = Events(controller, EventType.STREAM, EventType.CIRC)
    thread, result = curl_in_background(oppy, network.url("/bytes/1000"))
    stream_id = waiting_stream(events, network.http_port)
    controller.close_stream(stream_id)
    thread.join(EVENT_TIMEOUT)
    assert result["done"].returncode != 0  # the SOCKS client was refused
    events.wait_for(lambda e: e.type == "STREAM" and e.id == stream_id and e.status == StreamStatus.CLOSED)
    assert stream_id not in [stream.id for stream in controller.get_streams()]
    with pytest.raises(stem.InvalidArguments):
        controller.close_stream("9999")

    circuit_id = controller.new_circuit(await_build=True)
    controller.close_circuit(circuit_id)
    closed = events.wait_for(lambda e: e.type == "CIRC" and e.id == circuit_id and e.status == CircStatus.CLOSED)
    assert closed.reason == "REQUESTED"
    assert circuit_id not in [circuit.id for circuit in controller.get_circuits()]
    with pytest.raises(stem.InvalidArguments):
        controller.close_circuit("9999")
    events.close()


def test_setconf_conf_changed_and_errors(controller):
    events = Events(controller, EventType.CONF_CHANGED)
    controller.set_conf("MaxCircuitDirtiness", "900")
    changed = events.wait_for(lambda e: "MaxCircuitDirtiness" in e.changed)
    assert changed.changed["MaxCircuitDirtiness"] == ["900"]
    controller.reset_conf("MaxCircuitDirtiness")
    assert controller.get_conf("MaxCircuitDirtiness") == "600"
    with pytest.raises(stem.InvalidArguments):
        controller.set_conf("NoSuchOption", "1")
    with pytest.raises(stem.InvalidArguments):
        controller.get_conf("NoSuchOption")
    events.close()


def test_setconf_opens_http_tunnel_and_dns_ports_that_getinfo_lists(controller):
    """HTTPTunnelPort and DNSPort are set at runtime like SocksPort; GETINFO net/listeners/* names them."""
    assert controller.get_info("net/listeners/httptunnel") == "" and controller.get_info("net/listeners/dns") == ""
    controller.set_options({"HTTPTunnelPort": "auto", "DNSPort": "auto"})
    try:
        for kind in ("httptunnel", "dns"):
            host, port = controller.get_info(f"net/listeners/{kind}").strip('"').rsplit(":", 1)
            assert host == "127.0.0.1" and int(port) > 0
        tunnel_port = int(controller.get_info("net/listeners/httptunnel").strip('"').rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", tunnel_port), timeout=10) as tunnel:
            tunnel.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert tunnel.recv(64).startswith(b"HTTP/1.0 405 ")  # an HTTP CONNECT port, not a proxy
    finally:
        controller.reset_conf("HTTPTunnelPort", "DNSPort")
    assert controller.get_info("net/listeners/httptunnel") == "" and controller.get_info("net/listeners/dns") == ""


def test_reload_reports_the_torrc_changes_as_conf_changed(oppy, controller):
    """SIGNAL RELOAD (HUP) reads the torrc again; the options it changed reach controllers as CONF_CHANGED."""
    original = oppy.torrc.read_text()
    events = Events(controller, EventType.CONF_CHANGED)
    try:
        oppy.torrc.write_text(original + "MaxCircuitDirtiness 900\n")
        controller.signal(Signal.RELOAD)
        changed = events.wait_for(lambda e: "MaxCircuitDirtiness" in e.changed)
        assert changed.changed["MaxCircuitDirtiness"] == ["900"]
        assert controller.get_conf("MaxCircuitDirtiness") == "900"
    finally:
        oppy.torrc.write_text(original)
        controller.signal(Signal.RELOAD)
    events.wait_for(lambda e: "MaxCircuitDirtiness" in e.unset or e.changed.get("MaxCircuitDirtiness") == ["600"])
    assert controller.get_conf("MaxCircuitDirtiness") == "600"
    events.close()


# --------------------------------------------------------------------------- hostile controllers


class RawControl:
    """A control connection spoken by hand, to send what no controller library would."""

    def __init__(self, oppy, authenticate: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", oppy.control_port), timeout=10)
        self.buffer = b""
        if authenticate:
            self.send(f'AUTHENTICATE "{PASSWORD}"'.encode())
            assert self.reply() == [b"250 OK"]

    def send(self, line: bytes) -> None:
        self.sock.sendall(line + b"\r\n")

    def _line(self) -> bytes | None:
        while b"\r\n" not in self.buffer:
            piece = self.sock.recv(65536)
            if not piece:
                return None
            self.buffer += piece
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def reply(self) -> list[bytes]:
        """The lines of the next reply (events skipped, data blocks left out), or [] once closed."""
        lines: list[bytes] = []
        while True:
            line = self._line()
            if line is None:
                return []
            if line[3:4] == b"+":
                while self._line() not in (b".", None):
                    pass
            if line.startswith(b"650"):
                if line[3:4] == b"-" or line[3:4] == b"+":
                    while (event_line := self._line()) is not None and not event_line.startswith(b"650 "):
                        pass
                continue
            lines.append(line)
            if line[3:4] == b" ":
                return lines

    def close(self) -> None:
        self.sock.close()


REPLY_CODES = {b"250", b"251", b"500", b"510", b"512", b"513", b"514", b"515", b"551", b"552", b"553", b"555"}


def test_malformed_input_gets_tors_errors_and_never_disturbs_socks(oppy, network):
    size = 20_000_000
    download, result = curl_in_background(oppy, network.url(f"/bytes/{size}"), "--limit-rate", "2M")

    control = RawControl(oppy)
    for line, expected in [(b"FROB x", b'510 Unrecognized command "FROB"'),
                           (b'SETCONF Log="unterminated', b"512 Bad arguments to SETCONF: Cannot parse keyword "
                                                         b"argument(s)"),
                           (b"SETEVENTS CIRC NOSUCH", b'552 Unrecognized event "NOSUCH"'),
                           (b"GETINFO version nosuchkey", b'552 Unrecognized key "nosuchkey"'),
                           (b"ATTACHSTREAM 5 0", b'552 Unknown stream "5"'),
                           (b"SIGNAL FOO", b'552 Unrecognized signal code "FOO"'),
                           (b"PROTOCOLINFO 1 x", b'513 No such version "x"'),
                           (b"PROTOCOLINFO " + b"1" * 5000, b'513 No such version "' + b"1" * 5000 + b'"'),
                           (b"CLOSECIRCUIT " + b"1" * 5000, b'552 Unknown circuit "' + b"1" * 5000 + b'"'),
                           (b"GETINFO a\rb", b'552 Unrecognized key "a\\rb"'),
                           ('SETCONF MaxCircuitDirtiness="１０ seconds"'.encode(),
                            b"513 Unacceptable option value: Could not parse MaxCircuitDirtiness '\xef\xbc\x91\xef\xbc"
                            b"\x90 seconds': expected a number of seconds, or a number and a unit such as '10 minutes'")]:
        control.send(line)
        assert control.reply()[-1] == expected
    control.send(b"GETINFO " + b"x" * (1024 * 1024 + 100))
    assert control.reply() == [b"500 Line too long."]
    assert control.reply() == []
    control.close()
    unauthenticated = RawControl(oppy, authenticate=False)
    unauthenticated.send(b"GETINFO version")
    assert unauthenticated.reply() == [b"514 Authentication required."]
    assert unauthenticated.reply() == []
    unauthenticated.close()
    # Before authentication an oversized version is tor's 513, then the close (it once dropped the
    # connection with an exception and no reply).
    unauthenticated = RawControl(oppy, authenticate=False)
    unauthenticated.send(b"PROTOCOLINFO " + b"9" * 5000)
    assert unauthenticated.reply() == [b'513 No such version "' + b"9" * 5000 + b'"']
    assert unauthenticated.reply() == []
    unauthenticated.close()

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.binary(min_size=0, max_size=200).map(lambda data: data.replace(b"\n", b"").replace(b"\r", b"")),
                    min_size=1, max_size=5))
    def random_lines(lines):
        connection = RawControl(oppy)
        try:
            for line in lines:
                connection.send(line)
                if line.startswith(b"+"):
                    connection.send(b".")  # a multi-line command ends with a lone dot
                answer = connection.reply()
                if not answer:
                    break  # QUIT or a failed AUTHENTICATE closed it, as tor does
                assert all(reply[:3] in REPLY_CODES for reply in answer), (line, answer)
        finally:
            connection.close()

    random_lines()
    download.join(120)
    outcome = result["done"]
    assert outcome.returncode == 0, outcome.stderr
    assert hashlib.sha256(outcome.stdout).hexdigest() == expected_sha256(network, size)
    with Controller.from_port(port=oppy.control_port) as connected:
        connected.authenticate(password=PASSWORD)
        assert connected.get_info("status/circuit-established") == "1"
