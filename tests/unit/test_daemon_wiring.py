"""The daemon's wiring: one PathChooser for the directory, the circuit manager and the control port."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet import task
from twisted.internet.testing import MemoryReactorClock

from oppy.config import config_from_torrc_text
from oppy.daemon import Daemon
from oppy.directory.service import BootstrapPhase
from oppy.link.connection import LinkLaunched
from oppy.netdoc.relay import RelayTarget
from oppy.pt.manager import TransportConnected

REPO = Path(__file__).resolve().parents[2]
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


OBFS4_BRIDGE = f"obfs4 127.0.0.1:5001 {BRIDGE_FINGERPRINT} cert=abc iat-mode=0"


def test_client_transport_plugins_reach_the_link_pool_and_a_transport_bridge_starts_with_conn_pt(tmp_path):
    config = config_from_torrc_text(f"DataDirectory {tmp_path}\nDirAuthority {AUTHORITY}\nUseBridges 1\n"
                                    f"Bridge {OBFS4_BRIDGE}\nClientTransportPlugin obfs4 socks5 127.0.0.1:4444\n")
    reactor = MemoryReactorClock()
    daemon = Daemon(config, reactor)
    assert daemon.links.transports is daemon.pluggable_transports
    assert daemon.pluggable_transports.provides("obfs4")
    link_events = []
    daemon.links.add_observer(link_events.append)
    bridge = RelayTarget("bridge", bytes.fromhex(BRIDGE_FINGERPRINT), "127.0.0.1", 5001)
    daemon.links.get(bridge)
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("127.0.0.1", 4444)]  # the transport
    assert link_events == [LinkLaunched(bridge, "obfs4")]  # the directory's conn_pt (the integration test)
    daemon.directory.report_bootstrap(BootstrapPhase.STARTING)
    daemon.pluggable_transports.notify(TransportConnected(("obfs4",), "127.0.0.1:5001"))
    assert daemon.directory.bootstrap_phase[:2] == (2, "conn_done_pt")


def test_managed_proxies_keep_their_state_in_the_data_directory(tmp_path):
    config = config_from_torrc_text(f"DataDirectory {tmp_path}\nDirAuthority {AUTHORITY}\n"
                                    "ClientTransportPlugin obfs4 exec /usr/bin/obfs4proxy\n")
    daemon = Daemon(config, task.Clock())
    assert [proxy.state_location for proxy in daemon.pluggable_transports.proxies] == [f"{tmp_path}/pt_state/"]


def test_a_bridge_whose_transport_no_plugin_provides_is_refused_at_startup(tmp_path):
    config = config_from_torrc_text(f"DataDirectory {tmp_path}\nDirAuthority {AUTHORITY}\nUseBridges 1\n"
                                    f"Bridge {OBFS4_BRIDGE}\nClientTransportPlugin meek_lite exec /usr/bin/x\n")
    with pytest.raises(SystemExit, match="no ClientTransportPlugin line provides it"):
        Daemon(config, task.Clock())


_CONTROL_LAYER_PROBE = """
import sys
from twisted.internet import reactor
from oppy.config import config_from_torrc_text
from oppy.daemon import Daemon
daemon = Daemon(config_from_torrc_text(sys.argv[1]), reactor)
daemon.start()  # the reactor never runs: nothing is sent, and the listeners close with the process
print(daemon.control is not None, any(name.startswith("oppy.control") for name in sys.modules))
"""


@pytest.mark.parametrize("option, loaded", [("", False), ("ControlPort auto\n", True)])
def test_the_control_layer_is_loaded_only_with_a_control_port(tmp_path, option, loaded):
    """Without a ControlPort nothing of the control layer is imported (about 0.7 MiB of RSS saved); in a fresh
    interpreter, since this one has imported it for other tests."""
    torrc = f"DataDirectory {tmp_path}\nDirAuthority {AUTHORITY}\nSocksPort 0\n{option}"
    answer = subprocess.run([sys.executable, "-c", _CONTROL_LAYER_PROBE, torrc], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.split() == [str(loaded), str(loaded)]
