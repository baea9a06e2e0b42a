"""oppy never speaks to a DirPort: a fresh start on the private network, traced at its connect() calls.

C tor clients fetch the whole directory over BEGIN_DIR on one-hop circuits to ORPorts, so a censor or an
observer never sees a cleartext consensus request. oppy, started with an empty DataDirectory and the
network's DirAuthority lines, runs under `strace -f -e trace=connect`; every TCP connection it makes must
go to a relay's ORPort, none to a DirPort, it must bootstrap to 100% through tor's phases for a one-hop
directory connection, and a fetch through its SOCKS port must then work.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.support.network import REPO, TestNetwork
from tests.support.oppy_process import OppyProcess

HELLO = b"hello from the oppy test target\n"
#: strace's rendering of an IPv4 or IPv6 sockaddr in a connect() call.
_CONNECT_RE = re.compile(r"connect\(\d+, \{sa_family=AF_INET6?, sin6?_port=htons\((\d+)\), "
                         r"(?:sin_addr=inet_addr\(\"([^\"]+)\"\)"
                         r"|sin6_flowinfo=[^,]+, inet_pton\(AF_INET6, \"([^\"]+)\")")


def strace() -> str:
    """The strace program; scripts/setup installs Debian's package when it is missing."""
    if shutil.which("strace") is None:
        subprocess.run([str(REPO / "scripts" / "setup")], check=True, cwd=REPO)
    return shutil.which("strace")


def inet_connects(trace: str) -> list[tuple[str, int]]:
    """(address, port) of every IPv4 and IPv6 connect() in an strace log."""
    return [(v4 or v6, int(port)) for port, v4, v6 in _CONNECT_RE.findall(trace)]


def test_inet_connects_reads_strace_lines():
    trace = ('4242 connect(7, {sa_family=AF_INET, sin_port=htons(19000), sin_addr=inet_addr("127.0.0.1")}, 16) '
             '= -1 EINPROGRESS (Operation now in progress)\n'
             '4243 connect(8, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), '
             'inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28 <unfinished ...>\n'
             '4244 connect(3, {sa_family=AF_UNIX, sun_path="/run/x"}, 110) = 0\n')
    assert inet_connects(trace) == [("127.0.0.1", 19000), ("::1", 443)]


def test_a_fresh_start_connects_only_to_orports_and_bootstraps(network: TestNetwork, tmp_path: Path):
    trace_file = tmp_path / "connect.strace"
    data_directory = tmp_path / "data"
    oppy = OppyProcess(network, data_directory,
                       command_prefix=[strace(), "-f", "-qq", "-e", "trace=connect", "-o", str(trace_file), "--"])
    try:
        oppy.wait_ready()
        fetched = subprocess.run(["curl", "-sS", "--max-time", "60", "--socks5-hostname",
                                  f"127.0.0.1:{oppy.socks_port}", network.url("/", host="target.test")],
                                 capture_output=True, timeout=90)
    finally:
        assert oppy.stop() == 0
    assert fetched.returncode == 0 and fetched.stdout == HELLO, fetched.stderr

    relays = network.relays()
    or_ports = {("127.0.0.1", relay["ports"]["or"]) for relay in relays}
    dir_ports = {("127.0.0.1", relay["ports"]["dir"]) for relay in relays if "dir" in relay["ports"]}
    connects = inet_connects(trace_file.read_text())
    assert connects, "strace saw no connect() at all"
    assert not set(connects) & dir_ports, f"DirPorts contacted: {sorted(set(connects) & dir_ports)}"
    assert set(connects) <= or_ports, f"not ORPorts: {sorted(set(connects) - or_ports)}"
    # There is no fallback on a network with its own authorities: the first connection goes to an authority.
    authorities = {("127.0.0.1", relay["ports"]["or"]) for relay in relays if relay["role"] == "authority"}
    assert connects[0] in authorities

    phases = [match.group(1) for line in oppy.lines if (match := re.search(r"Bootstrapped \d+% \((\w+)\)", line))]
    assert phases[:7] == ["starting", "conn", "conn_done", "handshake", "handshake_done", "onehop_create",
                          "requesting_status"]
    assert phases[-1] == "done"
