"""ClientOnionAuthDir key files, in tor's ``<address>:descriptor:x25519:<key>`` format (the private
network's C tor service's client key from tests/unit/data/onion_service/capture.json)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from oppy.hs.address import parse_onion_address
from oppy.hs.client_auth import parse_client_auth_line, read_client_auth_dir
from oppy.hs.errors import ClientAuthKeyError

CAPTURE = json.loads((Path(__file__).resolve().parent / "data" / "onion_service" / "capture.json").read_text())
LINE = CAPTURE["auth"]["client_key_line"]
ADDRESS, _, _, KEY = LINE.split(":")


def test_tors_key_line_parses():
    key = parse_client_auth_line(LINE + "\n")
    assert key.identity_key == parse_onion_address(ADDRESS + ".onion").identity_key
    assert len(key.private_key) == 32
    assert "private_key=<hidden>" in repr(key) and key.private_key.hex() not in repr(key)
    assert parse_client_auth_line(f" {ADDRESS} : descriptor : x25519 : {KEY.lower()} ") == key


@pytest.mark.parametrize("line, message", [
    (f"{ADDRESS}:descriptor:x25519", "3 fields"),
    (f"{ADDRESS}:descriptor:x25519:{KEY}:extra", "5 fields"),
    (f"{ADDRESS}:intro:x25519:{KEY}", "type"),
    (f"{ADDRESS}:descriptor:ed25519:{KEY}", "type"),
    (f"{ADDRESS}:descriptor:x25519:{KEY[:-1]}", "51 base32"),
    (f"{ADDRESS}:descriptor:x25519:{KEY[:-1]}1", "base32"),
    (f"{ADDRESS}:descriptor:x25519:{'A' * 52}", "usable"),
    (f"{ADDRESS[:-1]}a:descriptor:x25519:{KEY}", "onion address"),
    (f"www.{ADDRESS}:descriptor:x25519:{KEY}", "onion address"),
    (f"{ADDRESS}.onion:descriptor:x25519:{KEY}", "onion address"),
])
def test_malformed_key_lines(line, message):
    with pytest.raises(ClientAuthKeyError, match=message):
        parse_client_auth_line(line)


def test_the_directory_keeps_good_files_and_skips_the_rest(tmp_path, caplog):
    (tmp_path / "service.auth_private").write_text(LINE + "\n")
    (tmp_path / "broken.auth_private").write_text("not a key\n")
    (tmp_path / "notes.txt").write_text(LINE + "\n")
    with caplog.at_level(logging.INFO, logger="oppy.hs.client_auth"):
        keys = read_client_auth_dir(tmp_path)
    assert list(keys) == [parse_onion_address(ADDRESS + ".onion").identity_key]
    assert "broken.auth_private skipped" in caplog.text
    assert "notes.txt" in caplog.text


def test_a_missing_directory_is_an_error(tmp_path):
    with pytest.raises(ClientAuthKeyError, match="cannot read"):
        read_client_auth_dir(tmp_path / "absent")
