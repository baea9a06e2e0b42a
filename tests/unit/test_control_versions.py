"""GETINFO status/version/current and status/version/recommended, as tor answers them (versions.c), from the
consensus's client-versions: real consensuses, and tor's cases one by one."""

from __future__ import annotations

import pytest

from oppy.control.versions import TorVersion, parse_tor_version, version_status
from oppy.netdoc.netdir import NetDir
from tests.support.testdata import real_netdir
from tests.unit.test_control_commands import FakeBackend, ask, parse, session_for

OWN = "0.4.9.11 (oppy-0.1.0)"  # what oppy reports (PROTOCOLINFO, GETINFO version)


@pytest.mark.parametrize("text, expected", [
    ("0.4.9.11 (oppy-0.1.0)", TorVersion(0, 4, 9, 2, 11, "")),
    ("Tor 0.4.5.14", TorVersion(0, 4, 5, 2, 14, "")),
    ("0.4.8.1-alpha", TorVersion(0, 4, 8, 2, 1, "alpha")),
    ("0.0.9pre5", TorVersion(0, 0, 9, 0, 5, "")),
    ("0.1.0rc2", TorVersion(0, 1, 0, 1, 2, "")),
    ("0.4-dev", TorVersion(0, 4, 0, 2, 0, "dev")),
    ("0.4.9x", None), ("x", None), ("0.", None), ("0.4x", None), ("99999999999.1", None),
])
def test_versions_parse_as_tor_parses_them(text, expected):
    assert parse_tor_version(text) == expected


@pytest.mark.parametrize("recommended, status", [
    ("", "none recommended"),
    ("0.4.8.10,0.4.9.11,0.4.9.12", "recommended"),
    ("Tor 0.4.9.11", "recommended"),
    ("0.4.9.12,0.5.0.1", "obsolete"),
    ("0.4.8.10,0.4.9.2", "new"),
    ("0.4.9.2,0.5.0.1", "new in series"),
    ("0.4.8.1,0.5.0.1", "unrecommended"),
    ("garbage,also-garbage", "unrecommended"),
])
def test_version_status_follows_tor_version_is_obsolete(recommended, status):
    assert version_status(OWN, recommended) == status


def getinfo(session, *keys):
    entries = parse(ask(session, "GETINFO " + " ".join(keys)), "GETINFO").entries
    return [entries[key].decode() for key in keys]


@pytest.mark.parametrize("folder, recommended, current", [
    ("2024-05-17-aziz", "0.4.8.1-alpha,0.4.8.2-alpha,0.4.8.3-rc,0.4.8.4,0.4.8.5,0.4.8.6,0.4.8.7,0.4.8.8,"
                        "0.4.8.9,0.4.8.10,0.4.8.11", "new"),
    ("testnet-0.4.9.11", "", "none recommended"),
])
def test_getinfo_reads_the_consensus_client_versions(folder, recommended, current):
    backend = FakeBackend()
    backend.directory.netdir = real_netdir(folder)
    _, session = session_for(backend)
    assert getinfo(session, "status/version/recommended", "status/version/current") == [recommended, current]


def test_getinfo_without_a_consensus_is_unknown():
    backend = FakeBackend()
    backend.directory.netdir = None
    _, session = session_for(backend)
    assert getinfo(session, "status/version/recommended", "status/version/current") == ["?", "unknown"]
