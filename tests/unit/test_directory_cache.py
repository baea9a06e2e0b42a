"""DataDirectory cache files: atomic writes, tor-compatible formats, state round trips."""

from __future__ import annotations

import os
import stat

import pytest

from oppy.directory import cache as cache_module
from oppy.directory.cache import (
    CACHED_CONSENSUS_FILE,
    CACHED_MICRODESCS_FILE,
    CACHED_MICRODESCS_JOURNAL_FILE,
    STATE_FILE,
    CacheError,
    DirectoryCache,
    atomic_write,
    encode_microdescriptors,
    split_key_certificates,
    split_microdescriptors,
)
from oppy.netdoc.documents import (
    microdesc_digest,
    parse_consensus,
    parse_key_certificates,
    parse_microdescriptor,
)
from oppy.netdoc.fields import parse_time
from tests.support.testdata import REAL_DIRECTORY

BITNYM = REAL_DIRECTORY / "2017-03-10-bitnym"
TESTNET = REAL_DIRECTORY / "testnet-0.4.9.11"


def test_atomic_write_replaces_whole_files_owner_only(tmp_path):
    target = tmp_path / "f"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["f"]          # no temporary file left behind


def test_a_failed_write_keeps_the_old_file_and_no_debris(tmp_path, monkeypatch):
    target = tmp_path / "f"
    atomic_write(target, b"old")

    def broken_replace(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module.os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["f"]


@pytest.mark.parametrize("folder", ["2017-03-10-bitnym", "2022-11-19-safetor", "testnet-0.4.9.11"])
def test_split_key_certificates_yields_each_parsable_certificate(folder):
    data = (REAL_DIRECTORY / folder / "cached-certs").read_bytes()
    texts = split_key_certificates(data)
    assert len(texts) == data.count(b"dir-key-certificate-version")
    assert b"".join(texts) == data
    fingerprints = [parse_key_certificates(text)[0].fingerprint for text in texts]
    assert fingerprints == [c.fingerprint for c in parse_key_certificates(data)]
    # Windows line ends (tor on Windows caches CRLF) come back in the LF form that was signed.
    assert split_key_certificates(data.replace(b"\n", b"\r\n")) == texts


def test_split_microdescriptors_of_tors_cache_matches_the_consensus():
    consensus = parse_consensus((BITNYM / "cached-microdesc-consensus").read_bytes())
    data = (BITNYM / "cached-microdescs").read_bytes() + (BITNYM / "cached-microdescs.new").read_bytes()
    entries = list(split_microdescriptors(data))
    assert len(entries) == 7701 + 1875
    digests = {microdesc_digest(body) for body, _ in entries}
    assert consensus.microdesc_digests() <= digests
    assert all(body.startswith(b"onion-key\n") for body, _ in entries)
    assert entries[0][1] == parse_time("2017-03-09 02:00:12")
    assert all(listed is not None for _, listed in entries)


def test_encoded_microdescriptors_read_back_identically():
    entries = list(split_microdescriptors((TESTNET / "cached-microdescs").read_bytes()))
    assert len(entries) == 10
    stamped = [(body, 1_700_000_000.0 + index) for index, (body, _) in enumerate(entries)]
    stamped[3] = (stamped[3][0], None)
    again = list(split_microdescriptors(encode_microdescriptors(stamped)))
    assert again == stamped
    for body, _ in again:
        parse_microdescriptor(body)


def test_an_annotation_with_an_impossible_date_is_ignored():
    body = b"onion-key\nntor-onion-key AAAA\n"
    dates = (b"0000-01-01 00:00:00", b"2023-02-29 00:00:00", "\u0662\u0660\u0662\u0660-01-01 00:00:00".encode())
    for date in dates:
        assert list(split_microdescriptors(b"@last-listed " + date + b"\n" + body)) == [(body, None)]


def test_cache_files_round_trip_under_tors_names(tmp_path):
    cache = DirectoryCache(tmp_path / "data")
    assert cache.read_consensus() is None and cache.read_certificates() is None
    assert cache.read_microdescriptors() is None and cache.read_state() is None
    cache.write_consensus(b"network-status-version 3 microdesc\n")
    cache.write_certificates([b"dir-key-certificate-version 3\nA", b"dir-key-certificate-version 3\nB\n"])
    cache.write_microdescriptors([(b"onion-key\nx\n", None)])
    cache.write_state({"guards": {"version": 1, "guards": []}})
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    assert (tmp_path / "data" / CACHED_CONSENSUS_FILE).read_bytes() == b"network-status-version 3 microdesc\n"
    assert cache.read_certificates() == b"dir-key-certificate-version 3\nA\ndir-key-certificate-version 3\nB\n"
    assert cache.read_state() == {"guards": {"version": 1, "guards": []}, "version": 1}
    assert sorted(os.listdir(tmp_path / "data")) == sorted(
        ["cached-certs", CACHED_CONSENSUS_FILE, CACHED_MICRODESCS_FILE, STATE_FILE])


def test_tors_microdescriptor_journal_is_read_and_folded_in(tmp_path):
    cache = DirectoryCache(tmp_path)
    (tmp_path / CACHED_MICRODESCS_FILE).write_bytes(b"onion-key\na\n")
    (tmp_path / CACHED_MICRODESCS_JOURNAL_FILE).write_bytes(b"onion-key\nb\n")
    assert cache.read_microdescriptors() == b"onion-key\na\nonion-key\nb\n"
    cache.write_microdescriptors([(b"onion-key\na\n", None), (b"onion-key\nb\n", None)])
    assert not (tmp_path / CACHED_MICRODESCS_JOURNAL_FILE).exists()
    assert cache.read_microdescriptors() == b"onion-key\na\nonion-key\nb\n"


@pytest.mark.parametrize("content", [
    b"{not json", b"\xff\xfe", b"[]", b'{"version": 99}',
    b'{"version": 1, "guards": ' + b"9" * 5000 + b"}",      # beyond int()'s 4300 digits: ValueError
    b"[" * 100000 + b"]" * 100000,                            # deeper than the parser recurses
])
def test_malformed_state_is_a_cache_error(tmp_path, content):
    (tmp_path / STATE_FILE).write_bytes(content)
    with pytest.raises(CacheError):
        DirectoryCache(tmp_path).read_state()


def test_unwritable_directory_is_a_cache_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(CacheError):
        DirectoryCache(blocker / "data").write_consensus(b"x")
