"""`oppy` the program, as a user runs it, against the private network of real relays."""

from __future__ import annotations

import concurrent.futures
import hashlib
import re
import signal
import socket
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.support.network import TestNetwork
from tests.support.oppy_process import OppyProcess
from tests.support.relays import fetch
from tests.support.socks_client import BIND, socks5_request

TEN_MB = 10 * 1000 * 1000


@pytest.fixture(scope="module")
def oppy(network: TestNetwork, tmp_path_factory):
    process = OppyProcess(network, tmp_path_factory.mktemp("oppy") / "data").wait_ready()
    yield process
    assert process.stop() == 0


def curl(oppy: OppyProcess, url: str, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", str(timeout), "--socks5-hostname",
                           f"127.0.0.1:{oppy.socks_port}", *extra, url], capture_output=True, timeout=timeout + 30)


def expected_sha256(network: TestNetwork, length: int) -> str:
    return fetch(network.url(f"/sha256/{length}")).decode().strip()


def test_bootstrap_is_logged_as_tor_does(oppy: OppyProcess):
    percents = [int(m.group(1)) for line in oppy.lines if (m := re.search(r"Bootstrapped (\d+)% \(", line))]
    assert percents[-1] == 100 and percents == sorted(percents)
    assert any(re.search(r"\[notice\] Bootstrapped 100% \(done\): Done$", line) for line in oppy.lines)
    assert any(f"Opened Socks listener connection (ready) on 127.0.0.1:{oppy.socks_port}" in line
               for line in oppy.lines)


def test_ten_megabytes_download_byte_exact(network, oppy):
    result = curl(oppy, network.url(f"/bytes/{TEN_MB}"))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == TEN_MB
    assert hashlib.sha256(result.stdout).hexdigest() == expected_sha256(network, TEN_MB)


def test_ten_megabytes_upload_confirmed(network, oppy, tmp_path):
    body = hashlib.shake_256(b"ten megabytes up").digest(TEN_MB)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(body)
    result = curl(oppy, network.url("/upload"), "--data-binary", f"@{upload}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == f"sha256={hashlib.sha256(body).hexdigest()} length={TEN_MB}"


def test_test_hostname_is_resolved_by_the_exit(network, oppy):
    result = curl(oppy, network.url("/", host="www.target.test"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from the oppy test target\n"


def test_no_destination_in_the_default_log(network, oppy):
    curl(oppy, network.url("/", host="secret-destination.test"))
    notice_log = "\n".join(oppy.lines)
    assert "secret-destination" not in notice_log
    assert f":{network.http_port}" not in notice_log


def test_fifty_concurrent_downloads_are_byte_exact(network, oppy):
    sizes = [100_000 + 7919 * i for i in range(50)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda size: curl(oppy, network.url(f"/bytes/{size}")), sizes))
    for size, result in zip(sizes, results):
        assert result.returncode == 0, result.stderr
        assert hashlib.sha256(result.stdout).hexdigest() == expected_sha256(network, size)


def test_a_slow_reader_keeps_memory_bounded(network, oppy):
    before = oppy.rss_kib()
    code, sock = socks5_request(oppy.socks_port, "127.0.0.1", network.http_port)
    assert code == 0
    sock.sendall(b"GET /bytes/100000000 HTTP/1.0\r\n\r\n")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    received = 0
    peak = before
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:  # about 1 MB/s, far slower than the circuit
        received += len(sock.recv(64 * 1024))
        time.sleep(0.06)
        peak = max(peak, oppy.rss_kib())
    sock.close()
    assert received > 1_000_000
    assert (peak - before) < 30 * 1024, f"oppy grew by {(peak - before) / 1024:.1f} MiB"


def reference_reply(network: TestNetwork, host: str, port: int, command: int = 1) -> int:
    code, sock = socks5_request(network.socks_port, host, port, command)
    sock.close()
    return code


@pytest.mark.parametrize("target, expected", [
    (("127.0.0.1", 1), None),       # a closed port: the exit's END (MISC on 0.4.9 exits) -> general failure
    (("nowhere.invalid", 80), 4),   # no such host: RESOLVEFAILED -> host unreachable
])
def test_socks_error_codes_match_the_c_tor_client(network, oppy, target, expected):
    host, port = target
    code, sock = socks5_request(oppy.socks_port, host, port)
    sock.close()
    assert code == reference_reply(network, host, port)
    if expected is not None:
        assert code == expected


def test_a_target_every_exit_refuses_gets_not_allowed_by_ruleset(network, oppy):
    # Every exit's policy rejects 127.0.0.1:9 (their microdescriptors' summaries cannot say so): each
    # answers END EXITPOLICY, oppy tries the other exits, then answers REP 02 as C tor maps EXITPOLICY.
    # (The C tor client keeps retrying such a stream until its SocksTimeout, so it is no quick reference.)
    started = time.monotonic()
    code, sock = socks5_request(oppy.socks_port, "127.0.0.1", network.state["exit_policy_refused_port"])
    sock.close()
    assert code == 2
    assert time.monotonic() - started < 30
    assert "Attached stream" in oppy.info_log


def test_bind_is_refused_as_unsupported(network, oppy):
    code, sock = socks5_request(oppy.socks_port, "127.0.0.1", network.http_port, BIND)
    sock.close()
    assert code == 7 == reference_reply(network, "127.0.0.1", network.http_port, BIND)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(max_size=600), cut=st.integers(min_value=0, max_value=20))
def test_random_socks_input_never_disturbs_other_clients(network, oppy, garbage, cut):
    with socket.create_connection(("127.0.0.1", oppy.socks_port), timeout=5) as sock:
        sock.sendall(garbage[:len(garbage) - cut] if cut < len(garbage) else garbage)
        sock.settimeout(0.2)
        try:
            sock.recv(4096)
        except (socket.timeout, ConnectionError):
            pass
    code, sock = socks5_request(oppy.socks_port, "127.0.0.1", network.http_port, timeout=30)
    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    answer = b""
    while chunk := sock.recv(4096):
        answer += chunk
    sock.close()
    assert code == 0 and answer.endswith(b"hello from the oppy test target\n")


def circuit_of_each_stream(oppy: OppyProcess) -> list[int]:
    return [int(m.group(2)) for m in re.finditer(r"Attached stream (\d+) to circuit (\d+)", oppy.info_log)]


@pytest.fixture
def single_circuit_oppy(network: TestNetwork, tmp_path):
    """Single circuits, as in test_isolation: a conflux set linked between two requests of one user would
    take the second (tor's conflux_get_circ_for_conn comes first), on another circuit by right."""
    process = OppyProcess(network, tmp_path / "data", extra_lines=["ConfluxEnabled 0"]).wait_ready()
    yield process
    assert process.stop() == 0


def test_socks_credentials_isolate_circuits(network, single_circuit_oppy):
    oppy = single_circuit_oppy

    def fetch_as(user: str) -> int:
        seen = len(circuit_of_each_stream(oppy))
        result = curl(oppy, network.url("/"), "--proxy-user", f"{user}:pw")
        assert result.returncode == 0, result.stderr
        return circuit_of_each_stream(oppy)[seen]

    alice_first, bob, alice_again = fetch_as("alice"), fetch_as("bob"), fetch_as("alice")
    assert alice_first != bob
    assert alice_first == alice_again


def test_sigterm_during_transfers_exits_cleanly(network, tmp_path):
    process = OppyProcess(network, tmp_path / "data").wait_ready()
    downloads = [subprocess.Popen(["curl", "-sS", "--socks5-hostname", f"127.0.0.1:{process.socks_port}",
                                   "-o", "/dev/null", network.url("/bytes/200000000")], stderr=subprocess.PIPE)
                 for _ in range(3)]
    time.sleep(2)
    started = time.monotonic()
    assert process.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    assert any("exiting cleanly" in line for line in process.lines)
    for download in downloads:
        download.wait(timeout=30)
        assert download.returncode != 0  # cut short, not hung


def test_socks4a_fetch(network, oppy):
    result = subprocess.run(["curl", "-sS", "--max-time", "60", "--socks4a", f"127.0.0.1:{oppy.socks_port}",
                             network.url("/", host="four.test")], capture_output=True, timeout=90)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from the oppy test target\n"


def tor_resolve(socks_port: int, *args: str) -> subprocess.CompletedProcess:
    # tor-resolve (from Debian's tor package) speaks Tor's SOCKS RESOLVE (0xF0) and RESOLVE_PTR (0xF1).
    return subprocess.run(["tor-resolve", "-5", *args, f"127.0.0.1:{socks_port}"], capture_output=True,
                          text=True, timeout=60)


def test_resolve_and_resolve_ptr_extensions(network, oppy):
    forward = tor_resolve(oppy.socks_port, "name.test")
    assert forward.returncode == 0 and forward.stdout.strip() == "127.0.0.1", forward.stderr
    missing = tor_resolve(oppy.socks_port, "nowhere.invalid")
    assert missing.returncode != 0 and missing.stdout.strip() == ""
    # 0.4.9 exits refuse reverse lookups of private addresses, and the network has no other: oppy must
    # answer RESOLVE_PTR exactly as the C tor client does (the encoding itself is unit-tested).
    reverse = tor_resolve(oppy.socks_port, "-x", "127.0.0.1")
    reference = tor_resolve(network.socks_port, "-x", "127.0.0.1")
    assert (reverse.returncode, reverse.stdout) == (reference.returncode, reference.stdout)
    assert "host is unreachable" in reverse.stderr


def test_a_client_stalling_mid_handshake_is_dropped(network, tmp_path):
    process = OppyProcess(network, tmp_path / "data", extra_lines=["SocksTimeout 3"]).wait_ready()
    try:
        with socket.create_connection(("127.0.0.1", process.socks_port), timeout=15) as sock:
            sock.sendall(b"\x05\x01")  # a greeting cut short, and then nothing
            started = time.monotonic()
            try:
                assert sock.recv(16) == b""  # closed by oppy
            except ConnectionResetError:
                pass  # or reset: dropped either way
            assert 2 < time.monotonic() - started < 10
    finally:
        assert process.stop() == 0
