"""The suite's guard: an oppy started by a test without DirAuthority lines refuses to run."""

import os

import pytest
from twisted.internet.task import Clock

from oppy.config import Config
from oppy.daemon import FORBID_PUBLIC_NETWORK_ENV, Daemon


def test_the_suite_forbids_the_public_network():
    assert os.environ.get(FORBID_PUBLIC_NETWORK_ENV) == "1"


def test_a_daemon_without_dir_authorities_refuses_to_start(tmp_path):
    with pytest.raises(SystemExit, match="refusing to contact the public Tor network"):
        Daemon(Config(data_directory=str(tmp_path)), Clock())
