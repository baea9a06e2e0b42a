"""Production path choice (DirectoryService.choose_path) on the real 2017 directory, "now" pinned."""

from __future__ import annotations

import random
import shutil

import pytest
from twisted.internet import defer, task

from oppy.directory.authorities import DirAuthority
from oppy.directory.documents import parse_consensus_header
from oppy.directory.service import DirectoryService
from oppy.path.selection import LONG_LIVED_PORTS

from tests.support.testdata import REAL_DIRECTORY

SOURCE = REAL_DIRECTORY / "2017-03-10-bitnym"
#: tor's LongLivedPorts default (config.c).
TOR_LONG_LIVED_PORTS = {21, 22, 706, 1863, 5050, 5190, 5222, 5223, 6523, 6667, 6697, 8300}


@pytest.fixture(scope="module")
def service_2017(tmp_path_factory):
    """A DirectoryService that loaded the 2017 consensus, certificates and microdescriptors from its
    cache, 30 minutes after valid-after; nothing is fetched (the authorities point at a closed port)."""
    data = tmp_path_factory.mktemp("data")
    for name in ("cached-certs", "cached-microdesc-consensus", "cached-microdescs", "cached-microdescs.new"):
        shutil.copy(SOURCE / name, data / name)
    header = parse_consensus_header((SOURCE / "cached-microdesc-consensus").read_bytes())
    authorities = [DirAuthority(s.nickname, s.v3ident, s.v3ident, "127.0.0.1", 9, None) for s in header.dir_sources]
    now = header.valid_after + 30 * 60
    service = DirectoryService(authorities, data, links=None, reactor=task.Clock(), clock=lambda: now,
                               run_in_thread=lambda function, *args: defer.maybeDeferred(function, *args),
                               rng=random.Random(2017))
    started = service.start()
    assert started.called and service.enough_dir_info and len(service.microdescs) == 7326
    yield service
    service.stop()


def flags_of(service, target) -> frozenset[str]:
    return service.consensus.relay_by_id(target.rsa_id).flags


def test_long_lived_ports_are_tors_default():
    assert LONG_LIVED_PORTS == TOR_LONG_LIVED_PORTS


@pytest.mark.parametrize("port", [6667, 22, 6523])
def test_long_lived_port_gets_stable_relays_on_every_hop_2017(service_2017, port):
    # Before, only the exit had to be Stable: about 8% of the middles for 6667 were not.
    rng = random.Random(port)
    for _ in range(1500):
        for hop in service_2017.choose_path(port, rng=rng):
            assert "Stable" in flags_of(service_2017, hop)


def test_other_ports_do_not_need_stable_2017(service_2017):
    rng = random.Random(80)
    middles = [service_2017.choose_path(80, rng=rng)[1] for _ in range(1500)]
    assert sum("Stable" not in flags_of(service_2017, middle) for middle in middles) > 50
