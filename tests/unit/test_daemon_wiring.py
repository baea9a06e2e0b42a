"""The daemon's wiring: one PathChooser for the directory, the circuit manager and the control port."""

from __future__ import annotations

import pytest
from twisted.internet import task

from oppy.config import config_from_torrc_text
from oppy.daemon import Daemon

AUTHORITY = "auth0 orport=5000 v3ident=" + "A" * 40 + " 127.0.0.1:7000 " + "B" * 40


@pytest.mark.parametrize("option, enforced", [("", True), ("EnforceDistinctSubnets 0\n", False)])
def test_one_path_chooser_that_follows_enforce_distinct_subnets(tmp_path, option, enforced):
    config = config_from_torrc_text(f"DataDirectory {tmp_path}\nDirAuthority {AUTHORITY}\n{option}")
    daemon = Daemon(config, task.Clock())
    assert daemon.directory.paths is daemon.paths and daemon.manager.paths is daemon.paths
    # Before, the directory chose paths with `not TestingTorNetwork` whatever the option said.
    assert daemon.paths.enforce_distinct_subnets is enforced
