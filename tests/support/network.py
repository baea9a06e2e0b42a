"""The private network of real tor relays, as the integration tests see it.

The network is brought up once per test run by `scripts/testnet up`, started in the background as soon as
pytest knows that integration tests are selected (so the unit tests run while it boots), and always brought
down at the end of the run, also when tests fail or the run is interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTNET = REPO / "scripts" / "testnet"
RUN_DIR = Path(os.environ.get("OPPY_TEST_NETWORK_DIR", REPO / "testnet-run" / "pytest"))
BASE_PORT = int(os.environ.get("OPPY_TEST_NETWORK_BASE_PORT", "17000"))
# Relays close circuits that send unauthenticated SENDMEs: proof that oppy's v1 SENDMEs are accepted.
# OPPY_TEST_CONSENSUS_PARAMS replaces them for a run, e.g. "sendme_accept_min_version=1 cc_alg=0" to run the
# suite on a network without congestion control (tests/integration/test_congestion_control.py).
CONSENSUS_PARAMS = os.environ.get("OPPY_TEST_CONSENSUS_PARAMS", "sendme_accept_min_version=1")
UP_LOG = RUN_DIR.parent / "pytest-testnet-up.log"
# For development: the run directory of a network already running (`scripts/testnet up --dir DIR
# --consensus-params "sendme_accept_min_version=1" --onion --bridges`), used as it is and left running.
EXTERNAL_DIR = os.environ.get("OPPY_TEST_NETWORK_EXTERNAL")


@dataclass(frozen=True)
class TestNetwork:
    """What `scripts/testnet env --json` says about the running network."""

    __test__ = False  # not a test class, whatever pytest thinks of its name

    state: dict
    _log_marks: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def host(self) -> str:
        return self.state["host"]

    @property
    def http_port(self) -> int:
        return self.state["http_port"]

    @property
    def socks_port(self) -> int:
        """The reference C tor client's SocksPort."""
        return self.state["socks_port"]

    @property
    def dir_authority_lines(self) -> list[str]:
        return self.state["dir_authority_lines"]

    @property
    def nodes(self) -> list[dict]:
        return self.state["nodes"]

    @property
    def onion(self) -> dict:
        """The onion services of `scripts/testnet onion`: addresses, virtual port, the client's key line."""
        return self.state["onion"]

    @property
    def bridges(self) -> list[dict]:
        """The bridges `scripts/testnet bridges` started (not in the consensus): nickname, transport (None or
        "obfs4"), bridge_line (a Bridge option's value), ports, fingerprint, data_directory."""
        return self.state.get("bridges", [])

    def bridge(self, transport: str | None = None) -> dict:
        return next(b for b in self.bridges if b["transport"] == transport)

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.http_port}{path}"

    def relays(self, role: str | None = None) -> list[dict]:
        return [n for n in self.nodes if n["role"] != "client" and (role is None or n["role"] == role)]

    def node(self, nickname: str) -> dict:
        return next(n for n in self.nodes if n["nickname"] == nickname)

    def set_consensus_params(self, params: str) -> None:
        """Give the authorities new ConsensusParams and return once every relay holds a consensus with them
        (`scripts/testnet params`: within about two voting intervals of 20 s)."""
        result = subprocess.run([sys.executable, str(TESTNET), "params", "--dir", self.state["dir"],
                                 "--consensus-params", params], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"scripts/testnet params failed (exit {result.returncode}):\n{result.stdout}"
                               f"{result.stderr}")
        self.state["consensus_params"] = params

    def mark_relay_logs(self) -> None:
        """Remember how long each relay's notice.log is, so tests can read what was logged since."""
        for relay in self.relays():
            path = Path(relay["data_directory"]) / "notice.log"
            self._log_marks[relay["nickname"]] = path.stat().st_size if path.exists() else 0

    def relay_log_lines_since_mark(self) -> dict[str, list[str]]:
        lines = {}
        for relay in self.relays():
            with open(Path(relay["data_directory"]) / "notice.log", "rb") as log:
                log.seek(self._log_marks.get(relay["nickname"], 0))
                lines[relay["nickname"]] = log.read().decode(errors="replace").splitlines()
        return lines


class NetworkLauncher:
    """Starts `scripts/testnet up` in the background once, waits for it, and brings the network down."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.network: TestNetwork | None = None
        self.error: str | None = None

    def start(self) -> None:
        if self.process is not None or EXTERNAL_DIR:
            return
        RUN_DIR.parent.mkdir(parents=True, exist_ok=True)
        # A network left over from an interrupted run of this same directory goes first.
        subprocess.run([sys.executable, str(TESTNET), "down", "--dir", str(RUN_DIR)], capture_output=True)
        self._log = open(UP_LOG, "w")
        self.process = subprocess.Popen(
            [sys.executable, str(TESTNET), "up", "--dir", str(RUN_DIR), "--base-port", str(BASE_PORT),
             "--consensus-params", CONSENSUS_PARAMS, "--onion", "--bridges"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait(self) -> TestNetwork:
        if self.network is None and EXTERNAL_DIR:
            env = subprocess.run([sys.executable, str(TESTNET), "env", "--dir", EXTERNAL_DIR, "--json"],
                                 capture_output=True, text=True, check=True)
            self.network = TestNetwork(json.loads(env.stdout))
            self.network.mark_relay_logs()
        if self.network is None and self.error is None:
            self.start()
            code = self.process.wait()
            output = UP_LOG.read_text()
            if code != 0:
                self.error = f"scripts/testnet up failed (exit {code}):\n{output}"
            else:
                env = subprocess.run([sys.executable, str(TESTNET), "env", "--dir", str(RUN_DIR), "--json"],
                                     capture_output=True, text=True, check=True)
                self.network = TestNetwork(json.loads(env.stdout))
                self.network.mark_relay_logs()
                sys.stderr.write("\n" + output)
        if self.error:
            raise RuntimeError(self.error)
        return self.network

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # `up` stops what it started so far
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        result = subprocess.run([sys.executable, str(TESTNET), "down", "--dir", str(RUN_DIR)],
                                capture_output=True, text=True)
        sys.stderr.write(f"\ntestnet down: {result.stdout.strip()}\n")
        self.process = None


launcher = NetworkLauncher()
