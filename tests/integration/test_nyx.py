"""nyx 2.1.0, the terminal monitor, against oppy's control port: every page shows live data.

nyx runs in a detached tmux of its own (a private socket, a temporary HOME so no old ~/.nyx cache is
read), and the screen is read back with ``tmux capture-pane``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time

import pytest
from stem.control import Controller

from tests.support.network import TestNetwork
from tests.support.oppy_process import OppyProcess, free_port
from tests.support.tools import make_present



@pytest.fixture(autouse=True, scope="module")
def tmux_and_nyx():
    make_present("tmux")
    assert importlib.util.find_spec("nyx") is not None, "nyx comes with the test extra (scripts/setup)"

# nyx 2.1.0 calls inspect.getargspec, gone in Python 3.11 (torproject/nyx#63): patch it, change nothing else.
NYX_LAUNCHER = ("import inspect, sys; inspect.getargspec = inspect.getfullargspec; import nyx; "
                "sys.argv[0] = 'nyx'; sys.exit(nyx.main())")
SCREEN = (160, 250)  # tall: nyx lists every socket it finds, circuits may come after them
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def oppy(network: TestNetwork, tmp_path_factory):
    control_port = free_port()
    process = OppyProcess(network, tmp_path_factory.mktemp("oppy-nyx") / "data",
                          extra_lines=[f"ControlPort {control_port}", "CookieAuthentication 1"])
    process.control_port = control_port
    process.wait_ready()
    yield process
    assert process.stop() == 0


class Nyx:
    """nyx in a private tmux server."""

    def __init__(self, control_port: int, home) -> None:
        self.socket = f"oppy-nyx-test-{os.getpid()}"
        command = (f"env -u COLUMNS -u LINES HOME={home} {sys.executable} -c \"{NYX_LAUNCHER}\" -i 127.0.0.1:{control_port} "
                   f"2>{home}/nyx.stderr; sleep 600")
        self.tmux("new-session", "-d", "-s", "nyx", "-x", str(SCREEN[0]), "-y", str(SCREEN[1]), command)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=20).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-t", "nyx", "-p")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "nyx", *keys)

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if re.search(pattern, screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"nyx never showed {pattern!r}; the screen:\n{screen}")
            time.sleep(0.5)

    def close(self) -> None:
        self.tmux("kill-server")


def curl(oppy: OppyProcess, url: str) -> bytes:
    result = subprocess.run(["curl", "-sS", "--max-time", "60", "--socks5-hostname", f"127.0.0.1:{oppy.socks_port}",
                             url], capture_output=True, timeout=90)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_nyx_shows_oppy_live(oppy, network, tmp_path):
    assert len(curl(oppy, network.url("/bytes/1000000"))) == 1_000_000  # in bw-event-cache before nyx starts
    nyx = Nyx(oppy.control_port, tmp_path)
    try:
        # Page 1: header, bandwidth graph and the event log.
        header = nyx.wait_for(r"Tor 0\.4\.9\.11")
        assert re.search(rf"Control Port \(\w+\): {oppy.control_port}", header), header
        assert f"pid: {oppy.process.pid}" in header
        nyx.wait_for(r"Download \(")
        with Controller.from_port(port=oppy.control_port) as controller:
            controller.authenticate()
            assert len(curl(oppy, network.url("/bytes/3000000"))) == 3_000_000
            controller.signal("HEARTBEAT")  # a NOTICE line oppy logs now, after nyx subscribed
            screen = nyx.wait_for(r"\[NOTICE\] Heartbeat: oppy's uptime is")
            # The graph's total passes 3 MB once a BW event after the download reached nyx (once a second).
            totals = re.findall(r"total: ([\d.]+) (\w+)\)",
                                nyx.wait_for(r"total: (?:[3-9]|[1-9]\d+)(?:\.\d+)? MB\)"))
            assert totals and float(totals[0][0]) >= 3.0 and totals[0][1] == "MB", totals
            assert "Bootstrapped 100% (done): Done" in screen

        # Page 2: connections, with oppy's circuits and their relays named from ns/all.
        # nyx lists the circuits for client traffic; the one-hop directory circuits it leaves out. It
        # follows CIRC events, so its count may lag a circuit just built (after the download took a
        # conflux set, new sets are linking): compare with oppy's circuits read again until nyx caught up.
        nyx.keys("Right")
        deadline = time.monotonic() + TIMEOUT
        with Controller.from_port(port=oppy.control_port) as controller:
            controller.authenticate()
            while True:
                screen = nyx.wait_for(r"Connections \(.*\d+ circuit")
                count = int(re.search(r"(\d+) circuit", screen).group(1))
                circuits = [c for c in controller.get_circuits()
                            if c.status == "BUILT" and "ONEHOP_TUNNEL" not in (c.build_flags or ())]
                if count >= len(circuits) >= 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        assert count >= len(circuits) >= 1
        for circuit in circuits:
            screen = nyx.wait_for(rf"Circuit ID: {circuit.id}\b")
            for fingerprint, nickname in circuit.path:
                assert re.search(rf"{fingerprint}\s+{nickname}", screen), (circuit, screen)

        # Page 3: the configuration, from config/names and GETCONF.
        nyx.keys("Right")
        screen = nyx.wait_for(r"Tor Configuration")
        assert re.search(rf"ControlPort\s+{oppy.control_port}", screen), screen
        assert re.search(r"CookieAuthentication\s+True", screen), screen

        # Page 4: the torrc, found through GETINFO config-file.
        nyx.keys("Right")
        nyx.wait_for(r"Tor Configuration File")
        # The title comes first; the file's path and lines once nyx has read it (GETINFO config-text).
        nyx.wait_for(re.escape(str(oppy.torrc)))
        nyx.wait_for(rf"ControlPort {oppy.control_port}\b")
        stderr = (tmp_path / "nyx.stderr").read_text(errors="replace")
        assert "Traceback" not in stderr, stderr
    finally:
        nyx.close()
