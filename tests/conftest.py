"""Test-run plumbing: integration tests get the private network of real relays, brought up once."""

import os
import shutil
import signal
import subprocess

import pytest

from oppy.daemon import FORBID_PUBLIC_NETWORK_ENV
from tests.support.network import REPO, launcher

# No oppy started by a test (in process or as a child, which inherits this) may use the public authorities.
os.environ[FORBID_PUBLIC_NETWORK_ENV] = "1"


def pytest_configure(config):
    # SIGTERM (a CI timeout, a killed run) unwinds like Ctrl-C, so the network is always brought down.
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
    # Unit tests first: they run while the network boots in the background.
    items.sort(key=lambda item: "integration" in item.path.parts)


def pytest_collection_finish(session):
    # After deselection (-k, -m): start the network only when integration tests will really run.
    if any("integration" in item.path.parts for item in session.items):
        if not shutil.which("tor"):
            # A test that needs tor makes it present.
            subprocess.run([str(REPO / "scripts" / "setup")], check=True)
        launcher.start()


def pytest_sessionfinish(session, exitstatus):
    launcher.stop()
