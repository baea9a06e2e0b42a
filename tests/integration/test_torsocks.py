"""Debian's torsocks through oppy: torsocks resolves names with tor's SOCKS RESOLVE extension and connects by
SOCKS5, so `torsocks curl` is a real application that leaves DNS to the Tor client.

On this network every name resolves to 127.0.0.1, and torsocks refuses (never proxies) connections to local
addresses. So oppy answers torsocks's RESOLVE with a virtual address (AutomapHostsOnResolve, with
VirtualAddrNetworkIPv4 10.192.0.0/10 as tor(1) suggests for transparent proxying): torsocks then connects to that
address through oppy, and oppy connects to the name. The virtual address is a label inside oppy: no socket is ever
opened to it, since torsocks sends every non-local connection to its SOCKS server (checked first)."""

from __future__ import annotations

import os
import subprocess

import pytest
from stem.control import Controller, EventType

from tests.integration.test_control import Events
from tests.support.network import TestNetwork
from tests.support.oppy_process import OppyProcess, free_port
from tests.support.tools import make_present

SUFFIX = ".torsocks.test"


@pytest.fixture(scope="module")
def oppy(network: TestNetwork, tmp_path_factory):
    make_present("torsocks", "curl")
    socks_port, control_port = free_port(), free_port()
    process = OppyProcess(network, tmp_path_factory.mktemp("oppy-torsocks") / "data", extra_lines=[
        f"SocksPort 127.0.0.1:{socks_port} NoPreferIPv6Automap", f"ControlPort 127.0.0.1:{control_port}",
        "AutomapHostsOnResolve 1", f"AutomapHostsSuffixes {SUFFIX}", "VirtualAddrNetworkIPv4 10.192.0.0/10"])
    process.torsocks_port, process.control_port = socks_port, control_port
    process.wait_ready()
    yield process
    assert process.stop() == 0


def torsocks(oppy, tmp_path, *command: str) -> subprocess.CompletedProcess:
    conf = tmp_path / "torsocks.conf"
    conf.write_text(f"TorAddress 127.0.0.1\nTorPort {oppy.torsocks_port}\n")
    return subprocess.run(["torsocks", *command], capture_output=True, timeout=120,
                          env={**os.environ, "TORSOCKS_CONF_FILE": str(conf), "TORSOCKS_LOG_LEVEL": "2"})


def test_torsocks_curl_fetches_through_oppy(network, oppy, tmp_path):
    # torsocks is in charge of curl's sockets: it refuses a local address instead of connecting to it.
    refused = torsocks(oppy, tmp_path, "curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{network.http_port}/")
    assert refused.returncode != 0 and refused.stdout == b""
    name = "web" + SUFFIX
    with Controller.from_port(port=oppy.control_port) as controller:
        controller.authenticate()
        events = Events(controller, EventType.STREAM)
        result = torsocks(oppy, tmp_path, "curl", "-sS", "--max-time", "60", f"http://{name}:{network.http_port}/")
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"hello from the oppy test target\n"
        # The exit was asked to connect to the name that torsocks resolved through oppy.
        events.wait_for(lambda e: e.status == "SUCCEEDED" and e.target_address == name
                        and e.target_port == network.http_port)
        events.close()


def test_torsocks_resolves_through_the_exit(network, oppy, tmp_path):
    """Names without an automap suffix are resolved by an exit (tor's RESOLVE), for any program torsocks runs."""
    lookup = "import socket; print(socket.getaddrinfo('name.test', 80, socket.AF_INET)[0][4][0])"
    result = torsocks(oppy, tmp_path, "python3", "-c", lookup)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"127.0.0.1\n"
    missing = torsocks(oppy, tmp_path, "python3", "-c", lookup.replace("name.test", "no-such-name.invalid"))
    assert missing.returncode != 0 and b"socket.gaierror" in missing.stderr
