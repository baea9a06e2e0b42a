"""What txtorcon's TorConfig and TorState read from a control port, answered as tor answers it (each of these
made txtorcon fail against oppy): option types it has parsers for, GETCONF values in tor's encoding, and
GETINFO address-mappings/*."""

from __future__ import annotations

from txtorcon.torconfig import config_types

from tests.unit.test_control_commands import ask, parse, session_for


def test_config_names_use_only_tors_type_names():
    _, session = session_for()
    names = parse(ask(session, "GETINFO config/names"), "GETINFO").entries["config/names"].decode()
    types = {line.split()[1] for line in names.splitlines()}
    parsers = {cls.__name__.replace("_", "+") for cls in config_types} | {"Virtual", "Dependent"}
    assert types <= parsers, types - parsers
    assert "ExitRelay Boolean+Auto" in names.splitlines()


def test_getconf_data_sizes_are_numbers_as_tor_encodes_them():
    _, session = session_for()
    assert ask(session, "GETCONF AccountingMax BandwidthRate") == \
        b"250-AccountingMax=0\r\n250 BandwidthRate=1073741824\r\n"


def test_address_mappings_are_empty_lists():
    _, session = session_for()
    entries = parse(ask(session, "GETINFO address-mappings/all address-mappings/control"), "GETINFO").entries
    assert entries == {"address-mappings/all": b"", "address-mappings/control": b""}
    assert ask(session, "GETINFO address-mappings/bogus").startswith(b"552 ")
