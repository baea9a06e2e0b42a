"""Congestion control (prop 324) with the private network's 0.4.9 exits: negotiated with every exit when the
consensus has it on (tor's default cc_alg=2), fixed windows when it is off (a network brought up with
OPPY_TEST_CONSENSUS_PARAMS="sendme_accept_min_version=1 cc_alg=0"); transfers byte-exact either way. Every
run also turns it off for a while near its end: test_zy_congestion_control_off."""

from __future__ import annotations

import hashlib
import re
import subprocess

import pytest
import pytest_twisted
from twisted.internet import defer

from oppy.circuit.build import build_circuit
from oppy.circuit.congestion import CongestionParams
from oppy.link.connection import LinkPool
from oppy.stream.stream import Stream
from tests.support.network import TestNetwork
from tests.support.oppy_process import OppyProcess
from tests.support.relays import fetch, relay_targets
from tests.support.streams import CollectingSink, http_response_body

MB = 1000 * 1000
NEGOTIATED = re.compile(r"Circuit (\d+): congestion control \(Vegas\) negotiated with \$[0-9A-F]{40}~(\S+), "
                        r"sendme_inc (\d+)\.")
FIXED = re.compile(r"Circuit (\d+): fixed windows with \$[0-9A-F]{40}~(\S+)\.")


def curl(oppy: OppyProcess, url: str, *extra: str, timeout: float = 300) -> bytes:
    result = subprocess.run(["curl", "-sS", "--max-time", str(timeout), "--socks5-hostname",
                             f"127.0.0.1:{oppy.socks_port}", *extra, url], capture_output=True, timeout=timeout + 30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def network_cc_alg(network: TestNetwork) -> int:
    """The cc_alg the network's consensus says (tor's default 2 when it names none)."""
    params = dict(item.split("=", 1) for item in network.state["consensus_params"].split())
    return int(params.get("cc_alg", 2))


@pytest.fixture(scope="module")
def oppy(network: TestNetwork, tmp_path_factory):
    process = OppyProcess(network, tmp_path_factory.mktemp("oppy-cc") / "data").wait_ready()
    yield process
    assert process.stop() == 0




def test_fifty_megabytes_down_byte_exact(network, oppy):
    result = curl(oppy, network.url(f"/bytes/{50 * MB}"))
    assert len(result) == 50 * MB
    assert hashlib.sha256(result).hexdigest() == fetch(network.url(f"/sha256/{50 * MB}")).decode().strip()


def test_twenty_megabytes_up_byte_exact(network, oppy, tmp_path):
    body = hashlib.shake_256(b"twenty megabytes up").digest(20 * MB)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(body)
    reply = curl(oppy, network.url("/upload"), "--data-binary", f"@{upload}")
    assert reply.decode().strip() == f"sha256={hashlib.sha256(body).hexdigest()} length={20 * MB}"


def test_every_exit_circuit_negotiates_congestion_control_as_the_consensus_says(network, oppy):
    log = oppy.info_log
    negotiated = [(m[2], int(m[3])) for m in NEGOTIATED.finditer(log)]
    fixed = [m[2] for m in FIXED.finditer(log)]
    exits = {relay["nickname"] for relay in network.relays("exit")}
    if network_cc_alg(network) == 0:
        assert negotiated == [] and fixed and set(fixed) <= exits
        return
    # Every exit circuit built so far (preemptive ones, those that carried the transfers) asked its exit
    # (all list FlowCtrl=2 and Relay=4) and got the consensus's sendme_inc back.
    assert negotiated and fixed == []
    assert {nickname for nickname, _ in negotiated} <= exits
    assert {sendme_inc for _, sendme_inc in negotiated} == {31}


@defer.inlineCallbacks
def exits_answering_a_congestion_control_request(network: TestNetwork):
    """Ask each exit for congestion control whatever the consensus says (as tor's __AlwaysCongestionControl
    does) on a circuit of its own, and fetch 1 MB byte-exact over it (four stream windows: SENDMEs either
    way); fires with the nicknames of the exits that agreed."""
    relays = relay_targets(network)
    links = LinkPool()
    agreed = set()
    try:
        for exit_ in network.relays("exit"):
            path = [relays["relay0"], relays["relay1"], relays[exit_["nickname"]]]
            circuit = yield build_circuit(links, path, congestion=CongestionParams())
            if circuit.congestion_control is not None:
                agreed.add(exit_["nickname"])
            sink = CollectingSink()
            stream = Stream(sink, "127.0.0.1", network.http_port)
            stream.attach(circuit)
            yield sink.connected
            stream.write(f"GET /bytes/{MB} HTTP/1.0\r\n\r\n".encode())
            yield sink.ended
            head, body = http_response_body(sink.data)
            assert b" 200 " in head.split(b"\r\n")[0] and len(body) == MB, head
            assert hashlib.sha256(body).hexdigest() == fetch(network.url(f"/sha256/{MB}")).decode().strip()
            circuit.close()
    finally:
        links.close_all()
    return agreed


@pytest_twisted.inlineCallbacks
def test_each_exit_agrees_to_congestion_control_as_its_consensus_says(network):
    """The exit decides by its own consensus (onion_crypto.c negotiate_v3_ntor_server_circ_params: cc_enabled
    only when congestion_control_enabled()); test_zy_congestion_control_off asks the same with cc_alg=0."""
    agreed = yield exits_answering_a_congestion_control_request(network)
    everyone = {relay["nickname"] for relay in network.relays("exit")}
    assert agreed == (set() if network_cc_alg(network) == 0 else everyone)
