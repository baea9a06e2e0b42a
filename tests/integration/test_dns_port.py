"""DNSPort against the private network, asked by Debian's dig: names resolve through an exit, an unknown name
is NXDOMAIN, PTR works, an onion name never leaves, and an automapped address connects through Tor by name."""

from __future__ import annotations

import subprocess

import pytest
from stem.control import Controller, EventType

from tests.integration.test_control import Events
from tests.support.network import TestNetwork
from tests.support.oppy_process import OppyProcess, free_port
from tests.support.tools import make_present

AUTOMAP_SUFFIX = ".virtual.test"


@pytest.fixture(scope="module")
def oppy(network: TestNetwork, tmp_path_factory):
    make_present("dig", "curl")
    dns_port, control_port = free_port(), free_port()
    process = OppyProcess(network, tmp_path_factory.mktemp("oppy-dns") / "data", extra_lines=[
        f"DNSPort 127.0.0.1:{dns_port}", f"ControlPort 127.0.0.1:{control_port}", "AutomapHostsOnResolve 1",
        f"AutomapHostsSuffixes {AUTOMAP_SUFFIX},.onion"])
    process.dns_port, process.control_port = dns_port, control_port
    process.wait_ready()
    yield process
    assert process.stop() == 0


def dig(oppy, *args: str) -> str:
    result = subprocess.run(["dig", "@127.0.0.1", "-p", str(oppy.dns_port), "+tries=1", "+time=60", *args],
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def status(output: str) -> str:
    return output.split("status: ", 1)[1].split(",", 1)[0]


def test_the_listener_is_announced_as_tor_does(oppy):
    assert f"Opened DNS listener connection (ready) on 127.0.0.1:{oppy.dns_port}" in "\n".join(oppy.lines)


def test_a_name_resolves_through_an_exit(oppy):
    output = dig(oppy, "web.test", "A")
    assert status(output) == "NOERROR"
    assert dig(oppy, "+short", "web.test", "A").split() == ["127.0.0.1"]


def test_an_unknown_name_is_nxdomain(oppy):
    assert status(dig(oppy, "no-such-name.invalid", "A")) == "NXDOMAIN"


def test_ptr_of_a_private_address_and_aaaa(oppy):
    # 0.4.9 exits refuse reverse lookups of private addresses (the network has no other): their RESOLVED error is
    # NXDOMAIN, as tor's DNSPort answers it. A PTR that succeeds is the automapped one below.
    assert status(dig(oppy, "-x", "127.0.0.1")) == "NXDOMAIN"
    aaaa = dig(oppy, "web.test", "AAAA")  # the network's DNS has no IPv6 address for it
    assert status(aaaa) == "NOERROR" and "ANSWER: 0" in aaaa


def test_an_unsupported_type_is_notimp_and_an_onion_name_never_leaves(oppy):
    assert status(dig(oppy, "web.test", "MX")) == "NOTIMP"
    onion = "x" * 56 + ".onion"
    assert status(dig(oppy, onion, "A")) == "NOERROR"  # automapped (its suffix is listed): a virtual address
    assert dig(oppy, "+short", onion, "A").startswith("127.")


def test_an_automapped_address_connects_through_tor_by_name(network, oppy):
    name = "web" + AUTOMAP_SUFFIX
    (virtual,) = dig(oppy, "+short", name, "A").split()
    assert virtual.startswith("127.") and virtual != "127.0.0.1"
    assert dig(oppy, "+short", "-x", virtual).split() == [name + "."]
    with Controller.from_port(port=oppy.control_port) as controller:
        controller.authenticate()
        events = Events(controller, EventType.STREAM)
        # curl resolves nothing: it gives oppy the virtual address (SOCKS5 with an IPv4 address).
        result = subprocess.run(["curl", "-sS", "--max-time", "60", "--socks5", f"127.0.0.1:{oppy.socks_port}",
                                 f"http://{virtual}:{network.http_port}/"], capture_output=True, timeout=90)
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"hello from the oppy test target\n"
        # The exit was asked for the name, never for the virtual address.
        events.wait_for(lambda e: e.status == "SUCCEEDED" and e.target_address == name)
        assert not [e for e in events.seen if e.target_address == virtual]
        events.close()
