"""The plumbing of `scripts/bench --torture`: a seeded fault schedule, the process that carries it out on a
private network, a load of concurrent byte-checked downloads, and a memory sampler.

Standard library only (scripts/bench runs before any virtualenv exists).

Faults: every `interval` seconds one middle relay or exit is either killed (SIGKILL, then started again
with its own torrc, same keys) or stopped (SIGSTOP, then SIGCONT), and restored after a few seconds, so at
most one relay is down at a time. The schedule depends only on the seed, the duration and the relays'
nicknames, so both clients meet the same faults at the same offsets from the start of their run.

Load: `clients` workers, each downloading `GET /bytes/N` through SOCKS5, one after the other with a pause
of THINK_TIME seconds on average in between (N log-uniform in [MIN_SIZE, MAX_SIZE], sizes and pauses from a
per-worker seeded generator). Every body byte is compared with the target's
deterministic content (its 1 MiB shake-256 block, repeated): a request is
  ok        status 200, the announced length, every byte as served, then the end of the stream;
  corrupt   any byte that differs, more bytes than announced, or a status line / header that is not the target's;
  failed    SOCKS refused or an error reply, or the stream closed early (truncation is loss, not corruption);
  hang      nothing at all (no byte, no close) for `hang_timeout` seconds at any step.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import random
import signal
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
# The HTTP target's content (scripts/http-target BLOCK): /bytes/N is this block repeated, cut at N.
BLOCK = hashlib.shake_256(b"oppy test target").digest(1 << 20)
MIN_SIZE = 1_000
MAX_SIZE = 1_000_000
RECV_SIZE = 1 << 16
HANG_TIMEOUT = 60.0
# Between two requests a worker thinks for a while, uniform in [0, 2 * THINK_TIME] (a browser, not a bulk
# downloader: 20 workers then make about 15 requests a second on this network).
THINK_TIME = 1.0
# After a failed request a worker waits this long before the next one (a client that refuses at once
# would otherwise be asked hundreds of times a second).
FAILURE_PAUSE = 1.0
# A fault is restored after this many seconds (uniform), always before the next fault begins.
RESTORE_AFTER = (2.0, 8.0)
FAULT_KINDS = ("kill", "stop")
FAULT_ROLES = ("middle", "exit")


# ---------------------------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Fault:
    at: float           # seconds after the start of the run
    relay: str          # nickname
    kind: str           # "kill" (SIGKILL, restart) or "stop" (SIGSTOP, SIGCONT)
    restore_after: float

    def describe(self) -> str:
        action = "SIGKILL, restart" if self.kind == "kill" else "SIGSTOP, SIGCONT"
        return f"t={self.at:6.1f}s  {self.kind:4} {self.relay:8} ({action} {self.restore_after:.1f}s later)"


def make_schedule(seed: int, duration: float, interval: float, relays: list[str]) -> list[Fault]:
    """One fault every `interval` seconds from t=interval to the end, chosen by `random.Random(seed)`."""
    if not relays:
        raise ValueError("no relay to put faults on")
    rng = random.Random(seed)
    ordered = sorted(relays)
    faults = []
    at = interval
    while at < duration:
        low, high = RESTORE_AFTER
        faults.append(Fault(at=at, relay=rng.choice(ordered), kind=rng.choice(FAULT_KINDS),
                            restore_after=round(min(rng.uniform(low, high), interval * 0.8), 1)))
        at += interval
    return faults


# ---------------------------------------------------------------------------------------------- faults


def process_matches(pid: int, marker: str) -> bool:
    """pid is alive and its command line names `marker` (the relay's own torrc): never signal a stranger."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        state = next((line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if line.startswith("State:")), "")
    except OSError:
        return False
    return marker in cmdline and "zombie" not in state


def relay_pid(node: dict) -> int | None:
    """The pid of a relay of the network (`scripts/testnet env --json` node) while it runs."""
    try:
        pid = int((Path(node["data_directory"]) / "tor.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if process_matches(pid, node["torrc"]) else None


def kill_relay(node: dict) -> int | None:
    """SIGKILL a relay of the network (a `scripts/testnet env --json` node); its pid, None if it was not
    running."""
    pid = relay_pid(node)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    return pid


def start_relay(node: dict, empty_defaults: Path) -> None:
    """The relay again, from its own torrc and keys (RunAsDaemon: tor forks, writes its pid file and
    returns)."""
    deadline = time.monotonic() + 10
    while relay_pid(node) is not None and time.monotonic() < deadline:
        time.sleep(0.1)  # the killed process is reaped by init; its lock on the data directory goes with it
    subprocess.run(["tor", "--defaults-torrc", str(empty_defaults), "-f", node["torrc"]],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                   timeout=60, check=False)


def wait_relay_listening(node: dict, timeout: float = 30.0) -> None:
    """Until the relay runs and its ORPort accepts connections (RuntimeError after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        if relay_pid(node) is not None:
            try:
                socket.create_connection((HOST, node["ports"]["or"]), timeout=1.0).close()
                return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{node['nickname']} is not listening on its ORPort {timeout:.0f}s after its start")
        time.sleep(0.1)


@contextlib.contextmanager
def relay_killed(node: dict, empty_defaults: Path, restore_after: float):
    """SIGKILL a relay for the block's duration: it is started again (same torrc and keys) at the latest
    `restore_after` seconds after the kill, whatever the block is doing then, and on leaving the block,
    which returns only once its ORPort accepts connections again."""
    if kill_relay(node) is None:
        raise RuntimeError(f"{node['nickname']} is not running")
    lock = threading.Lock()
    restarted = []

    def restore() -> None:
        with lock:
            if not restarted:
                start_relay(node, empty_defaults)
                restarted.append(True)

    timer = threading.Timer(restore_after, restore)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        restore()
        wait_relay_listening(node)


class FaultInjector:
    """Carries out a schedule on the relays of a network this bench brought up (`scripts/testnet env --json`)."""

    def __init__(self, network: dict, schedule: list[Fault], log=print) -> None:
        self.nodes = {n["nickname"]: n for n in network["nodes"]}
        self.empty_defaults = Path(network["dir"]) / "empty-defaults-torrc"
        self.schedule = schedule
        self.log = log
        self.done: list[dict] = []
        self._stopped: dict[str, int] = {}   # nickname -> pid under SIGSTOP
        self._killed: set[str] = set()
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    def pid(self, nickname: str) -> int | None:
        return relay_pid(self.nodes[nickname])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="faults", daemon=True)
        self._started = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        events = sorted([(f.at, "fault", f) for f in self.schedule]
                        + [(f.at + f.restore_after, "restore", f) for f in self.schedule], key=lambda e: e[0])
        for at, what, fault in events:
            if self._cancel.wait(max(0.0, self._started + at - time.monotonic())):
                return
            try:
                if what == "fault":
                    self._fault(fault)
                else:
                    self._restore(fault.relay)
            except OSError as exc:  # reported; the run goes on
                self.log(f"  fault {fault.describe()}: {what} failed: {exc}")

    def _fault(self, fault: Fault) -> None:
        with self._lock:
            pid = self.pid(fault.relay)
            record = {"at": round(time.monotonic() - self._started, 1), **asdict(fault), "pid": pid}
            if pid is None:
                record["skipped"] = "not running"
            elif fault.kind == "kill":
                kill_relay(self.nodes[fault.relay])
                self._killed.add(fault.relay)
            else:
                os.kill(pid, signal.SIGSTOP)
                self._stopped[fault.relay] = pid
            self.done.append(record)

    def _restore(self, nickname: str) -> None:
        with self._lock:
            pid = self._stopped.pop(nickname, None)
            if pid is not None and process_matches(pid, self.nodes[nickname]["torrc"]):
                os.kill(pid, signal.SIGCONT)
            if nickname in self._killed:
                self._killed.discard(nickname)
                self._restart(nickname)

    def _restart(self, nickname: str) -> None:
        start_relay(self.nodes[nickname], self.empty_defaults)

    def stop(self) -> None:
        """Cancel what is left of the schedule and restore every relay still faulted."""
        self._cancel.set()
        if self._thread is not None:
            self._thread.join()
        for nickname in list(self._stopped) + list(self._killed):
            self._restore(nickname)


# How long the network is given after a run's faults before the next client's run begins (a relay started
# again must be listed Running in a new consensus: the authorities vote every 20 s).
SETTLE_SECONDS = 25.0
SETTLE_TIMEOUT = 180.0


def network_settled(network: dict) -> bool:
    """Every relay process runs and every authority's consensus lists every relay Running and Valid."""
    relays = [n for n in network["nodes"] if n["role"] != "client"]
    if any(relay_pid(node) is None for node in relays):
        return False
    for node in (n for n in relays if n["role"] == "authority"):
        try:
            lines = (Path(node["data_directory"]) / "cached-microdesc-consensus").read_text(errors="replace")
        except OSError:
            return False
        listed = sum(1 for line in lines.splitlines() if line.startswith("r "))
        running = sum(1 for line in lines.splitlines()
                      if line.startswith("s ") and {"Running", "Valid"} <= set(line.split()[1:]))
        if listed != len(relays) or running != len(relays):
            return False
    return True


def wait_network_settled(network: dict, after_faults: bool) -> None:
    if after_faults:
        time.sleep(SETTLE_SECONDS)
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while not network_settled(network):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the network did not settle within {SETTLE_TIMEOUT:.0f}s after the faults")
        time.sleep(2)


# ---------------------------------------------------------------------------------------------- load


class Hang(Exception):
    """Nothing came for HANG_TIMEOUT seconds."""


class Corrupt(Exception):
    """Bytes that are not the target's."""


def content_matches(offset: int, data: bytes) -> bool:
    """`data` is /bytes/N's content from `offset` on (BLOCK repeated)."""
    position = 0
    while position < len(data):
        start = (offset + position) % len(BLOCK)
        piece = min(len(data) - position, len(BLOCK) - start)
        if data[position:position + piece] != BLOCK[start:start + piece]:
            return False
        position += piece
    return True


async def _within(awaitable, timeout: float):
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise Hang() from None


async def fetch_checked(socks_port: int, http_port: int, size: int, hang_timeout: float = HANG_TIMEOUT) -> str:
    """One GET /bytes/size through SOCKS5: "ok", "corrupt", "hang during <step>" or "failed: why"."""
    writer = None
    phase = "the SOCKS handshake"
    try:
        reader, writer = await _within(asyncio.open_connection(HOST, socks_port), hang_timeout)
        writer.write(b"\x05\x01\x00")
        if await _within(reader.readexactly(2), hang_timeout) != b"\x05\x00":
            return "failed: SOCKS method refused"
        writer.write(b"\x05\x01\x00\x01" + socket.inet_aton(HOST) + struct.pack(">H", http_port))
        phase = "the SOCKS reply"
        head = await _within(reader.readexactly(4), hang_timeout)
        if head[1] != 0:
            return f"failed: SOCKS reply {head[1]}"
        await _within(reader.readexactly({1: 4, 4: 16}.get(head[3], 0) + 2), hang_timeout)
        writer.write(f"GET /bytes/{size} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        phase = "the HTTP header"
        header = await _within(reader.readuntil(b"\r\n\r\n"), hang_timeout)
        lines = header.decode("latin-1").split("\r\n")
        if not lines[0].startswith("HTTP/1.") or lines[0].split(" ")[1:2] != ["200"] \
                or f"content-length: {size}" not in (line.lower() for line in lines):
            raise Corrupt()
        received = 0
        while True:
            piece = await _within(reader.read(RECV_SIZE), hang_timeout)
            if not piece:
                break
            if received + len(piece) > size or not content_matches(received, piece):
                raise Corrupt()
            received += len(piece)
        return "ok" if received == size else f"failed: closed after {received} of {size} bytes"
    except Hang:
        return f"hang during {phase}"
    except Corrupt:
        return "corrupt"
    except asyncio.IncompleteReadError:
        return f"failed: closed during {phase}"
    except asyncio.LimitOverrunError:
        return "corrupt"
    except OSError as exc:
        return f"failed: {type(exc).__name__} during {phase}"
    finally:
        if writer is not None:
            writer.close()


@dataclass
class LoadResult:
    """The verdicts of one load run, counted (and the failures and hangs by kind)."""

    requests: int = 0
    ok: int = 0
    corrupt: int = 0
    hangs: int = 0
    failed: int = 0
    bytes_ok: int = 0
    failures: Counter = field(default_factory=Counter)
    # Per `bucket` seconds of the run: [requests, ok].
    timeline: list = field(default_factory=list)

    def add(self, outcome: str, size: int, started: float, bucket: float) -> None:
        self.requests += 1
        index = int(started // bucket)
        while len(self.timeline) <= index:
            self.timeline.append([0, 0])
        self.timeline[index][0] += 1
        if outcome == "ok":
            self.ok += 1
            self.bytes_ok += size
            self.timeline[index][1] += 1
        elif outcome == "corrupt":
            self.corrupt += 1
        elif outcome.startswith("hang"):
            self.hangs += 1
            self.failures[outcome] += 1
        else:
            self.failed += 1
            self.failures[outcome] += 1

    def summary(self) -> dict:
        return {"requests": self.requests, "ok": self.ok,
                "byte_exact_percent": 100.0 * self.ok / self.requests if self.requests else None,
                "corrupt": self.corrupt, "hangs": self.hangs, "failed": self.failed, "bytes_ok": self.bytes_ok,
                "failures": dict(self.failures.most_common(10)), "timeline_requests_ok": self.timeline}


def request_size(rng: random.Random) -> int:
    """Log-uniform in [MIN_SIZE, MAX_SIZE]: mostly small pages, now and then a large download."""
    return int(math.exp(rng.uniform(math.log(MIN_SIZE), math.log(MAX_SIZE))))


def run_load(socks_port: int, http_port: int, clients: int, duration: float, seed: int,
             hang_timeout: float = HANG_TIMEOUT, bucket: float = 30.0, think_time: float = THINK_TIME
             ) -> LoadResult:
    """`clients` workers downloading (with pauses) for `duration` seconds; requests under way at the end
    finish (or hang) before this returns."""
    result = LoadResult()

    async def worker(index: int, started: float) -> None:
        rng = random.Random(f"{seed}-{index}")
        while time.monotonic() - started < duration:
            size = request_size(rng)
            began = time.monotonic() - started
            outcome = await fetch_checked(socks_port, http_port, size, hang_timeout)
            result.add(outcome, size, began, bucket)
            await asyncio.sleep(rng.uniform(0, 2 * think_time) + (FAILURE_PAUSE if outcome != "ok" else 0.0))

    async def main() -> None:
        started = time.monotonic()
        await asyncio.gather(*(worker(index, started) for index in range(clients)))

    asyncio.run(main())
    return result


# ---------------------------------------------------------------------------------------------- memory


def rss_kib(pid: int, field_name: str = "VmRSS") -> int | None:
    """A memory figure of /proc/PID/status in KiB (VmRSS, VmHWM), None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler:
    """VmRSS of one process once a `period`, in a thread: (seconds since start, KiB)."""

    def __init__(self, pid: int, period: float = 1.0) -> None:
        self.pid = pid
        self.period = period
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            value = rss_kib(self.pid)
            if value is not None:
                self.samples.append((round(time.monotonic() - self._started, 1), value))
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak_kib(self) -> int | None:
        return max((kib for _, kib in self.samples), default=None)
