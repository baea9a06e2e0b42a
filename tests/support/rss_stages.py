"""Where oppy's memory goes: RSS of a fresh daemon at each stage of its life, on a running private network.

    OPPY_TEST_NETWORK_EXTERNAL=DIR python -m tests.support.rss_stages [--runs 3] [--bulk-mb 50] [--no-control-port]
                                                                  [--no-compile]

Stages, each a fresh process per run (VmRSS, and VmHWM the high-water mark, in MiB):
  imports     `python -c "import oppy.cli, oppy.daemon"`: the interpreter with everything the daemon imports
  bootstrap   `python -m oppy` (as scripts/bench starts it: SocksPort, ControlPort, DirAuthority lines)
              once it logged "Bootstrapped 100%" and its first conflux set is linked (the consensus and the
              microdescriptors parsed, the prebuilt sets built)
  bulk        after GET /bytes/N (--bulk-mb) through SOCKS, byte-checked against the target's sha256
  concurrent  after 100 streams of 1 MB at once (the scripts/bench load where its peak usually is)
Medians [min-max] over the runs. oppy's modules are byte-compiled first (`compileall`), as an installed
oppy has them: without its .pyc files (PYTHONDONTWRITEBYTECODE) every start compiles them again, which leaves
about 1.6 MiB more RSS after the bootstrap (the transfers reuse most of it).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.support.network import REPO, NetworkLauncher
from tests.support.oppy_process import OppyProcess
from tests.support.socks_client import socks5_request

MIB = 1024
CONCURRENT_STREAMS = 100
CONCURRENT_BYTES = 1_000_000
LINKED_TIMEOUT = 60.0


def memory_kib(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return (int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)),
            int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)))


def imports_kib() -> tuple[int, int]:
    code = ("import oppy.cli, oppy.daemon, re; s = open('/proc/self/status').read(); "
            "print(re.search(r'VmRSS:\\s+(\\d+)', s).group(1), re.search(r'VmHWM:\\s+(\\d+)', s).group(1))")
    rss, hwm = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return int(rss), int(hwm)


def fetch(socks_port: int, http_port: int, length: int, expected_sha256: str | None = None) -> None:
    reply, sock = socks5_request(socks_port, "127.0.0.1", http_port)
    try:
        if reply != 0:
            raise RuntimeError(f"SOCKS5 reply {reply}")
        sock.settimeout(120)
        sock.sendall(f"GET /bytes/{length} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = bytearray()
        while piece := sock.recv(1 << 18):
            data += piece
    finally:
        sock.close()
    body = bytes(data.partition(b"\r\n\r\n")[2])
    if len(body) != length or (expected_sha256 and hashlib.sha256(body).hexdigest() != expected_sha256):
        raise RuntimeError(f"/bytes/{length}: {len(body)} bytes, not the target's")


def target_sha256(http_port: int, length: int) -> str:
    with socket.create_connection(("127.0.0.1", http_port), timeout=30) as sock:
        sock.sendall(f"GET /sha256/{length} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while piece := sock.recv(4096):
            data += piece
    return data.partition(b"\r\n\r\n")[2].strip().decode()


def one_run(network, bulk_bytes: int, bulk_sha256: str, control_port: bool) -> dict[str, tuple[int, int]]:
    stages = {"imports": imports_kib()}
    with tempfile.TemporaryDirectory(prefix="oppy-rss-") as workdir:
        oppy = OppyProcess(network, Path(workdir) / "data", control_port=control_port)
        try:
            oppy.wait_ready()
            deadline = time.monotonic() + LINKED_TIMEOUT
            while not re.search(r"Conflux set \S+ linked:", oppy.info_log):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no conflux set linked within {LINKED_TIMEOUT:.0f}s")
                time.sleep(0.2)
            stages["bootstrap"] = memory_kib(oppy.pid)
            fetch(oppy.socks_port, network.http_port, bulk_bytes, bulk_sha256)
            stages["bulk"] = memory_kib(oppy.pid)
            errors: list[BaseException] = []

            def one() -> None:
                try:
                    fetch(oppy.socks_port, network.http_port, CONCURRENT_BYTES)
                except BaseException as exc:  # noqa: BLE001 - counted below
                    errors.append(exc)

            threads = [threading.Thread(target=one) for _ in range(CONCURRENT_STREAMS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                raise RuntimeError(f"{len(errors)} concurrent downloads failed: {errors[0]!r}")
            stages["concurrent"] = memory_kib(oppy.pid)
        finally:
            oppy.stop()
    return stages


def spread(values: list[int]) -> str:
    return f"{statistics.median(values) / MIB:.1f} [{min(values) / MIB:.1f}-{max(values) / MIB:.1f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bulk-mb", type=int, default=50)
    parser.add_argument("--no-control-port", action="store_true")
    parser.add_argument("--no-compile", action="store_true", help="leave oppy's modules without .pyc files")
    args = parser.parse_args()
    network = NetworkLauncher().wait()
    if not args.no_compile:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "oppy")], check=True)
    bulk_bytes = args.bulk_mb * 1_000_000
    bulk_sha256 = target_sha256(network.http_port, bulk_bytes)
    runs = []
    for run in range(args.runs):
        started = time.monotonic()
        runs.append(one_run(network, bulk_bytes, bulk_sha256, not args.no_control_port))
        print(f"run {run + 1}: " + ", ".join(f"{stage} {rss / MIB:.1f}/{hwm / MIB:.1f}"
                                            for stage, (rss, hwm) in runs[-1].items())
              + f" MiB (RSS/HWM), {time.monotonic() - started:.0f}s", flush=True)
    print(f"{'stage':<12} {'VmRSS (MiB)':<20} VmHWM (MiB)")
    for stage in runs[0]:
        print(f"{stage:<12} {spread([r[stage][0] for r in runs]):<20} {spread([r[stage][1] for r in runs])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
