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


BRIDGE_FINGERPRINT = "4352E58420E68F5E40BF7C74FADDCCD9D1349413"


def test_usebridges_gives_the_paths_and_the_links_the_bridges(tmp_path):
    config = config_from_torrc_text(f"DataDirectory {tmp_path}\nDirAuthority {AUTHORITY}\nUseBridges 1\n"
                                    f"Bridge 127.0.0.1:5000 {BRIDGE_FINGERPRINT}\n")
    daemon = Daemon(config, task.Clock())
    assert daemon.paths.bridges is not None and daemon.paths.bridges.fingerprints() == [BRIDGE_FINGERPRINT]
    assert daemon.paths.state_key == "bridges"
    unused = config_from_torrc_text(f"DataDirectory {tmp_path}\nDirAuthority {AUTHORITY}\nUseBridges 0\n"
                                    f"Bridge 127.0.0.1:5000 {BRIDGE_FINGERPRINT}\n")
    assert Daemon(unused, task.Clock()).paths.bridges is None


def test_a_transport_bridge_needs_a_transport_that_provides_it(tmp_path):
    config = config_from_torrc_text(f"DataDirectory {tmp_path}\nDirAuthority {AUTHORITY}\nUseBridges 1\n"
                                    f"Bridge obfs4 127.0.0.1:5000 {BRIDGE_FINGERPRINT} cert=x iat-mode=0\n")
    with pytest.raises(SystemExit, match=f"Bridge obfs4 127.0.0.1:5000 {BRIDGE_FINGERPRINT} cert=x iat-mode=0 uses "
                                         "the pluggable transport 'obfs4', but no ClientTransportPlugin line "
                                         "provides it"):
        Daemon(config, task.Clock())
