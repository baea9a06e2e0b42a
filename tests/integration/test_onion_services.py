"""Onion services through `oppy`, on the private network's C tor onion services (`scripts/testnet onion`)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.support.network import TestNetwork
from tests.support.oppy_process import OppyProcess, free_port
from tests.support.socks_client import RESOLVE, socks5_request

# A bad onion address is refused before anything goes on the network.
AT_ONCE = 2.0


class OnionOppy(OppyProcess):
    """oppy with a second SocksPort that has ExtendedErrors (proposal 304)."""

    def __init__(self, network: TestNetwork, data_directory: Path) -> None:
        self.extended_port = free_port()
        super().__init__(network, data_directory,
                         extra_lines=[f"SocksPort 127.0.0.1:{self.extended_port} ExtendedErrors"])


@pytest.fixture(scope="module")
def oppy(network: TestNetwork, tmp_path_factory):
    process = OnionOppy(network, tmp_path_factory.mktemp("oppy-onion") / "data").wait_ready()
    yield process
    assert process.stop() == 0


def bad_checksum(address: str) -> str:
    return ("a" if address[0] != "a" else "b") + address[1:]


def dns_log(network: TestNetwork) -> str:
    return (Path(network.state["dir"]) / "dns.log").read_text()


def test_a_bad_checksum_answers_f6_at_once(network, oppy):
    started = time.monotonic()
    code, sock = socks5_request(oppy.extended_port, bad_checksum(network.onion["plain"]["address"]), 80)
    sock.close()
    assert code == 0xF6
    assert time.monotonic() - started < AT_ONCE


def test_a_bad_address_answers_as_the_c_tor_client_without_extended_errors(network, oppy):
    address = bad_checksum(network.onion["plain"]["address"])
    code, sock = socks5_request(oppy.socks_port, address, 80)
    sock.close()
    reference, sock = socks5_request(network.socks_port, address, 80)
    sock.close()
    assert code == reference == 0x01


def test_no_onion_name_reaches_a_resolver(network, oppy):
    onion = network.onion["plain"]["address"]
    probe = f"probe-{oppy.socks_port}.test"
    for host, command in ((onion, RESOLVE), (bad_checksum(onion), 1), ("www." + bad_checksum(onion), 1),
                          (probe, RESOLVE)):
        code, sock = socks5_request(oppy.socks_port, host, 80, command)
        sock.close()
    # The probe proves that names oppy sends out do reach the test DNS server's log.
    deadline = time.monotonic() + 10
    while probe not in dns_log(network) and time.monotonic() < deadline:
        time.sleep(0.2)
    log = dns_log(network)
    assert probe in log, "the network's DNS server logs no queries (started before scripts/testdns logged them)"
    assert ".onion" not in log


def onion_url(network: TestNetwork, which: str, path: str) -> str:
    onion = network.onion
    return f"http://{onion[which]['address']}:{onion['virtual_port']}{path}"


def curl(port: int, url: str, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", str(timeout), "--socks5-hostname", f"127.0.0.1:{port}",
                           *extra, url], capture_output=True, timeout=timeout + 30)


def test_a_page_by_onion_hostname(network, oppy):
    result = curl(oppy.socks_port, onion_url(network, "plain", "/"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from the oppy test target\n"
