"""Headless Chromium loads a page with twenty subresources through oppy."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.support.network import REPO, TestNetwork
from tests.support.oppy_process import OppyProcess

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=20000", "--dump-dom",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    if not shutil.which("chromium"):
        # A test that needs a browser makes it present.
        subprocess.run([str(REPO / "scripts" / "setup"), "--browser"], check=True)
    return shutil.which("chromium")


def test_chromium_loads_a_page_with_all_its_subresources(network: TestNetwork, chromium, tmp_path):
    oppy = OppyProcess(network, tmp_path / "data").wait_ready()
    try:
        # A hostname, not 127.0.0.1: Chromium never proxies loopback addresses, and the exit resolves it.
        url = network.url("/page", host="browser.test")
        result = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                                 f"--proxy-server=socks5://127.0.0.1:{oppy.socks_port}", url],
                                capture_output=True, text=True, timeout=120)
        assert "<p id=\"status\">complete</p>" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
        assert "<title>complete</title>" in result.stdout
        attached = oppy.info_log.count("Attached stream")
        assert attached >= 1
    finally:
        assert oppy.stop() == 0


def test_chromium_loads_a_page_over_an_onion_address(network: TestNetwork, chromium, tmp_path):
    oppy = OppyProcess(network, tmp_path / "data").wait_ready()
    try:
        onion = network.onion
        url = f"http://{onion['plain']['address']}:{onion['virtual_port']}/page"
        result = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                                 f"--proxy-server=socks5://127.0.0.1:{oppy.socks_port}", url],
                                capture_output=True, text=True, timeout=120)
        assert "<p id=\"status\">complete</p>" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
        assert f"Connected to {onion['plain']['address']} on circuit" in oppy.info_log
    finally:
        assert oppy.stop() == 0
