"""Controllers against oppy's control port: txtorcon's connect(), TorState and TorConfig unchanged; live NOTICE
lines; GETINFO status/version/*; SETCONF SocksPort/ControlPort opening and closing listeners at run time."""

from __future__ import annotations

import socket
import threading
import subprocess
import time

import pytest
import pytest_twisted
import txtorcon
from stem import InvalidRequest
from stem.control import Controller, EventType
from twisted.internet import defer, reactor, threads
from twisted.internet.endpoints import TCP4ClientEndpoint
from zope.interface import implementer

from tests.support.network import TestNetwork
from tests.support.oppy_process import OppyProcess, free_port
from tests.integration.test_control import Events

DOWNLOAD = 2_000_000


@pytest.fixture(scope="module")
def oppy(network: TestNetwork, tmp_path_factory):
    control_port = free_port()
    process = OppyProcess(network, tmp_path_factory.mktemp("oppy-controllers") / "data",
                          extra_lines=[f"ControlPort 127.0.0.1:{control_port}", "CookieAuthentication 1"])
    process.control_port = control_port
    process.wait_ready()
    yield process
    assert process.stop() == 0


def stem_controller(port: int) -> Controller:
    controller = Controller.from_port(port=port)
    controller.authenticate()
    return controller


def curl(port: int, url: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "60", "--socks5-hostname", f"127.0.0.1:{port}", url],
                          capture_output=True, timeout=90)


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


# --------------------------------------------------------------------------- log events, versions


def test_notice_events_carry_live_log_lines(oppy):
    """nyx's log panel: a NOTICE subscriber sees what oppy logs from now on, as tor's notices."""
    with stem_controller(oppy.control_port) as watcher:
        events = Events(watcher, EventType.NOTICE)
        with stem_controller(oppy.control_port):
            pass
        notice = events.wait_for(lambda event: event.message.startswith("New control connection opened from"))
        assert notice.message == "New control connection opened from 127.0.0.1."
        assert notice.runlevel == "NOTICE"
    oppy.wait_for_line(r"\[notice\] New control connection opened from 127\.0\.0\.1\.")


def test_status_version_answers_as_the_reference_tor(oppy, network):
    """The private network's consensus recommends no version: tor and oppy both say so."""
    keys = ["status/version/current", "status/version/recommended"]
    with stem_controller(oppy.control_port) as ours, stem_controller(network.state["client_control_port"]) as tors:
        assert ours.get_info(keys) == tors.get_info(keys) == {"status/version/current": "none recommended",
                                                              "status/version/recommended": ""}


# --------------------------------------------------------------------------- listeners at run time


def test_setconf_socks_port_opens_and_closes_listeners(oppy, network):
    first, second = oppy.socks_port, free_port()
    with stem_controller(oppy.control_port) as controller:
        controller.set_conf("SocksPort", [f"127.0.0.1:{first}", f"127.0.0.1:{second}"])
        oppy.wait_for_line(rf"\[notice\] Opened Socks listener connection \(ready\) on 127\.0\.0\.1:{second}")
        assert sorted(controller.get_listeners("SOCKS")) == sorted([("127.0.0.1", first), ("127.0.0.1", second)])
        assert curl(second, network.url("/bytes/1000")).stdout == fetch_expected(network, 1000)
        controller.set_conf("SocksPort", f"127.0.0.1:{second}")
        oppy.wait_for_line(rf"\[notice\] Closing Socks listener on 127\.0\.0\.1:{first}")
        deadline = time.monotonic() + 10
        while not refuses_connections(first):
            assert time.monotonic() < deadline, f"port {first} still accepts connections"
            time.sleep(0.1)
        assert curl(second, network.url("/bytes/1000")).returncode == 0
        # A port that cannot be bound: tor's answer, and nothing changes.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = taken.getsockname()[1]
            with pytest.raises(InvalidRequest, match="Failed to bind one of the listener ports"):
                controller.set_conf("SocksPort", f"127.0.0.1:{busy}")
        assert controller.get_conf("SocksPort") == f"127.0.0.1:{second}"
        assert curl(second, network.url("/bytes/1000")).returncode == 0
        controller.set_conf("SocksPort", f"127.0.0.1:{first}")
        assert controller.get_listeners("SOCKS") == [("127.0.0.1", first)]


def test_setconf_control_port_adds_a_listener(oppy):
    extra = free_port()
    with stem_controller(oppy.control_port) as controller:
        controller.set_conf("ControlPort", [f"127.0.0.1:{oppy.control_port}", f"127.0.0.1:{extra}"])
        with stem_controller(extra) as second:
            assert second.get_info("version").startswith("0.4.9.11")
        controller.set_conf("ControlPort", f"127.0.0.1:{oppy.control_port}")
        assert controller.get_listeners("CONTROL") == [("127.0.0.1", oppy.control_port)]
        assert controller.get_info("version")  # this connection stays, as in tor


def fetch_expected(network, size: int) -> bytes:
    from tests.support.relays import fetch
    return fetch(network.url(f"/bytes/{size}"))


# --------------------------------------------------------------------------- txtorcon


@implementer(txtorcon.interface.IStreamListener)
class StreamLog(txtorcon.StreamListenerMixin):
    """What TorState tells its stream listeners, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, txtorcon.Stream]] = []
        self.circuits: dict[txtorcon.Stream, txtorcon.Circuit] = {}  # where each stream succeeded
        self.closed = defer.Deferred()

    def stream_new(self, stream):
        self.events.append(("new", stream))

    def stream_attach(self, stream, circuit):
        self.events.append(("attach", stream))

    def stream_succeeded(self, stream):
        self.events.append(("succeeded", stream))
        self.circuits[stream] = stream.circuit

    def stream_closed(self, stream, **kwargs):
        self.events.append(("closed", stream))
        if not self.closed.called:
            self.closed.callback(stream)


@pytest_twisted.inlineCallbacks
def test_txtorcon_connects_and_tor_state_follows_a_fetch(oppy, network):
    tor = yield txtorcon.connect(reactor, TCP4ClientEndpoint(reactor, "127.0.0.1", oppy.control_port))
    try:
        assert tor.version.startswith("0.4.9.11")
        state = yield tor.create_state()
        relays = {node["fingerprint"] for node in network.relays()}
        assert {router.id_hex[1:] for router in state.routers.values()} == relays
        built = [circuit for circuit in state.circuits.values() if circuit.state == "BUILT"]
        assert built and all(router.id_hex[1:] in relays for circuit in built for router in circuit.path)
        listener = StreamLog()
        state.add_stream_listener(listener)
        result = yield threads.deferToThread(curl, oppy.socks_port, network.url(f"/bytes/{DOWNLOAD}"))
        assert result.returncode == 0 and len(result.stdout) == DOWNLOAD
        stream = yield listener.closed
        kinds = [kind for kind, seen in listener.events if seen is stream]
        assert kinds[0] == "new" and "succeeded" in kinds and kinds[-1] == "closed"
        circuit = listener.circuits[stream]
        assert stream.target_port == network.http_port
        assert circuit.id in state.circuits and len(circuit.path) == 3
    finally:
        yield tor.quit()


@pytest_twisted.inlineCallbacks
def test_txtorcon_tor_config_reads_and_sets(oppy):
    tor = yield txtorcon.connect(reactor, TCP4ClientEndpoint(reactor, "127.0.0.1", oppy.control_port))
    try:
        config = yield tor.get_config()
        assert config.MaxCircuitDirtiness == 600
        assert config.ControlPort == [f"127.0.0.1:{oppy.control_port}"] or \
            str(config.ControlPort) == f"127.0.0.1:{oppy.control_port}"
        config.MaxCircuitDirtiness = 900
        yield config.save()
        value = yield tor.protocol.get_conf("MaxCircuitDirtiness")
        assert value == {"MaxCircuitDirtiness": "900"}
        config.MaxCircuitDirtiness = 600
        yield config.save()
    finally:
        yield tor.quit()


# --------------------------------------------------------------------------- EXTENDCIRCUIT


def test_extendcircuit_grows_a_built_circuit(oppy, network):
    fingerprints = {node["nickname"]: node["fingerprint"] for node in network.relays()}
    with stem_controller(oppy.control_port) as controller:
        events = Events(controller, EventType.CIRC)
        circuit_id = controller.new_circuit([fingerprints["relay0"], fingerprints["relay1"]], purpose="controller",
                                            await_build=True, timeout=30)
        assert controller.extend_circuit(circuit_id, [fingerprints["exit0"]], await_build=True, timeout=30) \
            == circuit_id
        circuit = controller.get_circuit(circuit_id)
        assert [nickname for _, nickname in circuit.path] == ["relay0", "relay1", "exit0"]
        statuses = [(event.status, len(event.path)) for event in events.of("CIRC", id=circuit_id)]
        assert statuses == [("LAUNCHED", 0), ("EXTENDED", 1), ("BUILT", 2), ("EXTENDED", 2), ("BUILT", 3)]
        # It carries streams to the new last hop: a fetch attached to it by hand goes out through exit0.
        controller.set_conf("__LeaveStreamsUnattached", "1")
        try:
            stream_events = Events(controller, EventType.STREAM)
            result: dict = {}
            fetching = threading.Thread(target=lambda: result.update(done=curl(oppy.socks_port,
                                                                              network.url("/bytes/5000"))))
            fetching.start()
            new = stream_events.wait_for(lambda event: event.status == "NEW" and event.target_port == network.http_port)
            controller.attach_stream(new.id, circuit_id)
            fetching.join(90)
            assert result["done"].returncode == 0 and len(result["done"].stdout) == 5000
            succeeded = stream_events.wait_for(lambda event: event.id == new.id and event.status == "SUCCEEDED")
            assert succeeded.circ_id == circuit_id
        finally:
            controller.reset_conf("__LeaveStreamsUnattached")
        controller.close_circuit(circuit_id)
