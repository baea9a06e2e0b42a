"""oppy as a user runs it: a subprocess with a torrc pointing at the private network."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support.network import REPO, TestNetwork

READY_LINE = "Bootstrapped 100% (done): Done"
BOOTSTRAP_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class OppyProcess:
    """A running `python -m oppy -f torrc`, its log lines collected as they come."""

    def __init__(self, network: TestNetwork, data_directory: Path, extra_lines: list[str] = (),
                 extra_args: list[str] = (), command_prefix: list[str] = (), control_port: bool = False) -> None:
        """`command_prefix` runs oppy under another program (`strace ... --`), whose child it then is; with
        `control_port` it listens on `self.control_port` (no authentication)."""
        self.network = network
        self.data_directory = data_directory
        self.socks_port = free_port()
        self.control_port = free_port()
        self.torrc = data_directory.parent / f"{data_directory.name}.torrc"
        lines = [f"SocksPort 127.0.0.1:{self.socks_port}", f"DataDirectory {data_directory}",
                 "TestingTorNetwork 1", "Log notice stdout", f"Log info file {data_directory}.info.log",
                 *network.dir_authority_lines, *extra_lines]
        if control_port:
            lines.append(f"ControlPort 127.0.0.1:{self.control_port}")
        self.torrc.write_text("\n".join(lines) + "\n")
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.wrapped = bool(command_prefix)
        self.process = subprocess.Popen([*command_prefix, sys.executable, "-m", "oppy", "-f", str(self.torrc),
                                         *extra_args],
                                        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_line(self, pattern: str, timeout: float = BOOTSTRAP_TIMEOUT) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if regex.search(line):
                        return line
                if self.process.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"oppy exited ({self.process.returncode}) before {pattern!r}:\n"
                                         + "\n".join(self.lines[-40:]))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {pattern!r} after {timeout:.0f}s:\n" + "\n".join(self.lines[-40:]))
                self._changed.wait(min(remaining, 0.5))

    def wait_ready(self) -> "OppyProcess":
        self.wait_for_line(re.escape(READY_LINE))
        return self

    @property
    def info_log(self) -> str:
        path = Path(f"{self.data_directory}.info.log")
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def pid(self) -> int:
        """oppy's process id (the wrapper's only child, when it runs under one)."""
        if not self.wrapped:
            return self.process.pid
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        assert len(children) == 1, f"the wrapper has children {children}"
        return int(children[0])

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            pid = self.pid
            os.kill(pid, sig)      # a wrapper (strace) ends with oppy
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                if pid != self.process.pid:
                    os.kill(pid, signal.SIGKILL)
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=5)
        return self.process.returncode
