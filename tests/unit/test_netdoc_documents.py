"""Consensus, microdescriptor and key-certificate parsing into compact records."""

from __future__ import annotations

import base64
import functools
import hashlib
import random
import tracemalloc

import pytest

from oppy.netdoc import documents
from oppy.netdoc.documents import (
    REJECT_ALL_PORTS,
    PortPolicy,
    consensus_refresh_time,
    parse_consensus,
    parse_consensus_header,
    parse_key_certificates,
    parse_microdescriptor,
    parse_microdescriptors,
    parse_port_policy,
    parse_protocols,
)
from oppy.netdoc.errors import (
    CertificateParseError,
    ConsensusParseError,
    DocumentParseError,
    MicrodescriptorParseError,
)
from oppy.netdoc.fields import parse_time

from tests.support.testdata import REAL_DIRECTORY


@functools.cache
def read(folder: str, name: str) -> bytes:
    return (REAL_DIRECTORY / folder / name).read_bytes()


@functools.cache
def consensus(folder: str, name: str = "cached-microdesc-consensus"):
    return parse_consensus(read(folder, name))


# A microdescriptor in tor 0.4.9's format (consensus method 35): no TAP key body,
# unpadded base64, family-ids. Keys are made up.
NTOR_KEY = bytes(range(32))
ED_KEY = bytes(range(100, 132))
SYNTHETIC_MICRODESC = (
    "onion-key\n"
    f"ntor-onion-key {base64.b64encode(NTOR_KEY).decode().rstrip('=')}\n"
    "a [2001:db8::7]:9001\n"
    "family $0123456789ABCDEF0123456789ABCDEF01234567 somenick "
    "$89abcdef0123456789abcdef0123456789abcdef=named $FEDCBA9876543210FEDCBA9876543210FEDCBA98~x\n"
    "family-ids ed25519:YWxsIGhhcHB5IGZhbWlsaWVzIGFyZSBhbGlrZSAtTFQ rlwe:0YHRh9Cw0YHRgtC70LjQstGL0LUg\n"
    "p accept 80,443,8000-8100\n"
    "p6 reject 1-1024\n"
    f"id ed25519 {base64.b64encode(ED_KEY).decode().rstrip('=')}\n"
    "id rsa1024 uIngylmmqERZUE8gPUXYVjaCKrw\n"
    "future-keyword ignored\n"
).encode()


# ---------------------------------------------------------------- consensus


@pytest.mark.parametrize("folder, name, n_relays, method, flavor", [
    ("2024-05-17-aziz", "cached-microdesc-consensus", 7195, 33, "microdesc"),
    ("2017-03-10-bitnym", "cached-microdesc-consensus", 7326, 25, "microdesc"),
    ("2022-11-19-safetor", "cached-microdesc-consensus", 6088, 32, "microdesc"),
    ("2022-11-19-safetor", "cached-consensus", 6088, 32, "ns"),
    ("testnet-0.4.9.11", "cached-microdesc-consensus", 10, 35, "microdesc"),
])
def test_consensus_sizes(folder, name, n_relays, method, flavor):
    parsed = consensus(folder, name)
    assert len(parsed.relays) == n_relays
    assert parsed.consensus_method == method and parsed.flavor == flavor
    assert len({relay.rsa_id for relay in parsed.relays}) == n_relays
    if flavor == "microdesc":
        assert all(relay.microdesc_digest for relay in parsed.relays)


def test_safetor_header_and_entries():
    parsed = consensus("2022-11-19-safetor")
    assert parsed.valid_after == parse_time("2022-11-19 10:00:00")
    assert parsed.fresh_until == parse_time("2022-11-19 11:00:00")
    assert parsed.valid_until == parse_time("2022-11-19 13:00:00")
    assert "MiddleOnly" in parsed.known_flags and "Guard" in parsed.known_flags
    assert parsed.params["cc_alg"] == 2 and parsed.params["guard-n-primary-guards-to-use"] == 2
    assert parsed.bandwidth_weights["Wgg"] == 9611 and parsed.bandwidth_weights["Wmd"] == 0
    assert parsed.required_client_protocols["Link"] == frozenset({4})
    assert parsed.recommended_client_protocols["Link"] == frozenset({4, 5})
    assert [s.nickname for s in parsed.dir_sources][:2] == ["dannenberg", "tor26"]
    relay = parsed.relay_by_fingerprint("$" + base64.b64decode("ADb6NqtDX9XQ9kBiZjaGfr+3LGg=").hex())
    assert relay is not None and relay.nickname == "ForPrivacyNET"
    assert (relay.address, relay.or_port, relay.dir_port) == ("185.220.101.33", 10133, 0)
    assert relay.ipv6_or_addresses == (("2a0b:f4c2:2::33", 10133),)
    assert relay.flags == frozenset({"Exit", "Fast", "Running", "V2Dir", "Valid"})
    assert relay.bandwidth == 31000 and not relay.unmeasured
    assert relay.microdesc_digest == "epP7Gxm+NYhwC3V7SPORQCPoVgdqc22YKUh0LL7D5ps"
    assert relay.protocols["Relay"] == frozenset({1, 2, 3, 4}) and relay.supports_protocol("FlowCtrl", 2)
    assert relay.protocols["LinkAuth"] == frozenset({1, 3})
    # Identical flag lines share one object.
    exits = [r for r in parsed.relays if r.flags == relay.flags]
    assert len({id(r.flags) for r in exits}) == 1


@pytest.mark.parametrize("piece", [1, 97, 4096])
def test_the_router_entries_parse_the_same_whatever_the_piece_they_are_split_in(monkeypatch, piece):
    raw = read("2022-11-19-safetor", "cached-microdesc-consensus")
    monkeypatch.setattr(documents, "_SPLIT_PIECE_LEN", piece)
    assert parse_consensus(raw) == consensus("2022-11-19-safetor")


def test_parsing_a_public_consensus_does_not_hold_all_its_lines_at_once():
    """Splitting the 2 MiB router section whole held a copy of it and its 50,000 lines: the traced peak was
    10 MiB (3.3 of it kept); now it is about 5.5."""
    raw = read("2017-03-10-bitnym", "cached-microdesc-consensus")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        parsed = parse_consensus(raw)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert len(parsed.relays) == 7326
    assert peak < 8 * 1024 * 1024


def test_relay_lookup_follows_the_relays():
    import dataclasses

    parsed = consensus("testnet-0.4.9.11")
    first = parsed.relays[0]
    assert parsed.relay_by_id(first.rsa_id) is first
    assert parsed.relay_by_fingerprint(first.fingerprint.lower()) is first
    assert parsed.relay_by_fingerprint("not hex") is None
    trimmed = dataclasses.replace(parsed, relays=parsed.relays[1:])
    assert trimmed.relay_by_id(first.rsa_id) is None


def test_ns_and_microdesc_flavours_agree():
    micro = consensus("2022-11-19-safetor")
    ns = consensus("2022-11-19-safetor", "cached-consensus")
    assert [(r.rsa_id, r.address, r.or_port, r.flags, r.bandwidth) for r in micro.relays] == \
           [(r.rsa_id, r.address, r.or_port, r.flags, r.bandwidth) for r in ns.relays]
    assert all(r.microdesc_digest is None for r in ns.relays)


def test_testnet_unmeasured_and_empty_versions():
    parsed = consensus("testnet-0.4.9.11")
    assert all(relay.unmeasured for relay in parsed.relays)
    assert {relay.address for relay in parsed.relays} == {"127.0.0.1"}
    assert parsed.bandwidth_weights["Wgg"] == 5007


def test_consensus_header_errors():
    minimal = (b"network-status-version 3 microdesc\nvote-status consensus\n"
               b"valid-after 2022-11-19 10:00:00\nfresh-until 2022-11-19 11:00:00\n"
               b"valid-until 2022-11-19 13:00:00\ndirectory-footer\n")
    assert parse_consensus(minimal).relays == ()
    with pytest.raises(ConsensusParseError, match="vote-status"):
        parse_consensus(minimal.replace(b"vote-status consensus", b"vote-status vote"))
    with pytest.raises(ConsensusParseError, match="out of order"):
        parse_consensus(minimal.replace(b"fresh-until 2022-11-19 11", b"fresh-until 2022-11-19 14"))
    with pytest.raises(ConsensusParseError, match="lacks 'valid-until'"):
        parse_consensus(minimal.replace(b"valid-until", b"valid-untiX"))
    with pytest.raises(ConsensusParseError, match="bad time"):
        parse_consensus(minimal.replace(b"10:00:00", b"10:00"))
    with pytest.raises(ConsensusParseError, match="network-status-version"):
        parse_consensus(b"hello\n" + minimal)
    with pytest.raises(ConsensusParseError, match="bad router line"):
        parse_consensus(minimal.replace(b"directory-footer", b"r onlynick\ndirectory-footer"))


#: What fuzzing found in consensus fields: year 0000 (calendar.timegm raised ValueError), integers beyond
#: int()'s 4300 digits (ValueError "Exceeds the limit"), and other scripts' digits.
HUGE = b"7" * 5000


@pytest.mark.parametrize("old, new", [
    (b"valid-after 2026-11-21 14:39:40", b"valid-after 0000-01-01 00:00:00"),
    (b"valid-until 2026-11-21 14:40:40", b"valid-until 2026-02-30 14:40:40"),
    (b"valid-after 2026-11-21 14:39:40", b"valid-after 1969-12-31 23:59:59"),
    (b"consensus-method 35", b"consensus-method " + HUGE),
    (b"consensus-method 35", "consensus-method \u0663\u0665".encode()),
    (b"known-flags", b"params cc_alg=" + HUGE + b"\nknown-flags"),
    (b"known-flags", b"params cc_alg=-" + HUGE + b"\nknown-flags"),
    (b"127.0.0.1 127.0.0.1 16021 16020", b"127.0.0.1 127.0.0.1 " + HUGE + b" 16020"),
    (b"Link=4-5 Microdesc=2", b"Link=4-" + HUGE + b" Microdesc=2"),
    (b"w Bandwidth=53 ", b"w Bandwidth=" + HUGE + b" "),
    (b"127.0.0.1 16060 0", b"127.0.0.1 " + HUGE + b" 0"),
    (b"127.0.0.1 16060 0", "127.0.0.1 \uff11\uff16\uff10 0".encode()),
    (b"bandwidth-weights Wbd=", b"bandwidth-weights Wbd=" + HUGE + b" Wx="),
])
def test_hostile_consensus_fields_raise_only_consensus_parse_error(old, new):
    original = read("testnet-0.4.9.11", "cached-microdesc-consensus")
    assert old in original
    with pytest.raises(ConsensusParseError):
        parse_consensus(original.replace(old, new, 1))


@pytest.mark.parametrize("text", [
    "0000-01-01 00:00:00", "1969-12-31 23:59:59", "2023-02-29 00:00:00", "2024-04-31 12:00:00",
    "2024-01-01 24:00:00", "\uff12\uff10\uff12\uff14-01-01 00:00:00", "2024-01-01 00:00:00 ",
])
def test_times_are_real_dates_from_1970(text):
    with pytest.raises(DocumentParseError, match="bad time"):
        parse_time(text)


def test_leap_days_and_leap_seconds_are_times():
    assert parse_time("2024-02-29 23:59:60") == parse_time("2024-03-01 00:00:00")
    assert parse_time("1970-01-01 00:00:00") == 0


# ---------------------------------------------------------------- refresh schedule


def test_refresh_time_window():
    header = parse_consensus_header(read("2022-11-19-safetor", "cached-microdesc-consensus"))
    start = parse_time("2022-11-19 11:45:00")                  # FU + 3/4 (FU - VA)
    end = start + (header.valid_until - start) * 7 / 8          # 12:50:37.5
    times = [consensus_refresh_time(header, random.Random(seed)) for seed in range(500)]
    assert all(start <= t <= end for t in times)
    assert min(times) < start + 300 and max(times) > end - 300   # spread over the window
    assert consensus_refresh_time(header, random.Random(7)) == consensus_refresh_time(header, random.Random(7))


# ---------------------------------------------------------------- microdescriptors


def test_2017_microdescriptors_match_every_consensus_digest():
    parsed = consensus("2017-03-10-bitnym")
    wanted = parsed.microdesc_digests()
    assert len(wanted) == 7326
    found = {}
    for name in ("cached-microdescs", "cached-microdescs.new"):
        batch = parse_microdescriptors(read("2017-03-10-bitnym", name), wanted)
        assert batch.invalid == {}
        found.update(batch.microdescs)
    assert set(found) == wanted
    assert all(len(md.ntor_onion_key) == 32 for md in found.values())
    assert all(md.digest == digest for digest, md in found.items())


def test_a_microdescriptor_digest_is_one_string_for_the_consensus_and_the_record():
    """A record keeps the consensus entry's digest string, not a copy (the directory keys its tables with it
    too): on the public network the copies held about 1.3 MiB."""
    parsed = consensus("2017-03-10-bitnym")
    batch = parse_microdescriptors(read("2017-03-10-bitnym", "cached-microdescs"), parsed.microdesc_digests())
    again = parse_microdescriptors(read("2017-03-10-bitnym", "cached-microdescs"), parsed.microdesc_digests())
    shared = [relay for relay in parsed.relays if relay.microdesc_digest in batch.microdescs]
    assert len(shared) > 5000
    assert all(batch.microdescs[relay.microdesc_digest].digest is relay.microdesc_digest
               and again.microdescs[relay.microdesc_digest].digest is relay.microdesc_digest for relay in shared)


def test_unrequested_microdescriptors_are_dropped():
    wanted = consensus("2022-11-19-safetor").microdesc_digests()
    batch = parse_microdescriptors(read("2022-11-19-safetor", "cached-microdescs.new"), wanted)
    assert (len(batch.microdescs), batch.unrequested) == (1722, 66)
    some = sorted(wanted & batch.microdescs.keys())[:5]
    assert set(parse_microdescriptors(read("2022-11-19-safetor", "cached-microdescs.new"), some).microdescs) \
        == set(some)
    assert parse_microdescriptors(read("2022-11-19-safetor", "cached-microdescs.new"), ()).unrequested == 1788


def test_testnet_microdescriptors_have_unpadded_keys():
    parsed = consensus("testnet-0.4.9.11")
    raw = read("testnet-0.4.9.11", "cached-microdescs")
    assert b"ntor-onion-key LwN45dGtQ4G43Q1faFCtQpTcZUsbs1BwQMJFUDV7kBg\n" in raw
    batch = parse_microdescriptors(raw, parsed.microdesc_digests())
    assert len(batch.microdescs) == 10
    exits = [r for r in parsed.relays if "Exit" in r.flags]
    assert all(batch.microdescs[r.microdesc_digest].exit_policy.allows_port(443) for r in exits)
    assert all(batch.microdescs[r.microdesc_digest].ed25519_id is not None for r in parsed.relays)


def test_synthetic_microdescriptor_fields():
    md = parse_microdescriptor(SYNTHETIC_MICRODESC)
    assert md.digest == base64.b64encode(hashlib.sha256(SYNTHETIC_MICRODESC).digest()).decode().rstrip("=")
    assert md.ntor_onion_key == NTOR_KEY and md.ed25519_id == ED_KEY
    assert md.ipv6_or_addresses == (("2001:db8::7", 9001),)
    assert md.family == frozenset({"0123456789ABCDEF0123456789ABCDEF01234567",
                                   "89ABCDEF0123456789ABCDEF0123456789ABCDEF",
                                   "FEDCBA9876543210FEDCBA9876543210FEDCBA98"})
    assert md.family_ids == frozenset({"ed25519:YWxsIGhhcHB5IGZhbWlsaWVzIGFyZSBhbGlrZSAtTFQ",
                                       "rlwe:0YHRh9Cw0YHRgtC70LjQstGL0LUg"})
    assert [md.exit_policy.allows_port(p) for p in (79, 80, 443, 8050, 8101)] == [False, True, True, True, False]
    assert [md.exit_policy_v6.allows_port(p) for p in (22, 1024, 1025)] == [False, False, True]


def test_digest_covers_exact_text_including_final_newline():
    with_annotation = b"@last-listed 2026-11-21 14:37:12\n" + SYNTHETIC_MICRODESC
    digest = parse_microdescriptor(SYNTHETIC_MICRODESC).digest
    assert set(parse_microdescriptors(with_annotation).microdescs) == {digest}
    two = SYNTHETIC_MICRODESC + SYNTHETIC_MICRODESC.replace(b"p accept 80,", b"p accept 81,")
    assert len(parse_microdescriptors(two).microdescs) == 2
    changed = SYNTHETIC_MICRODESC[:-1]               # final newline dropped: another digest
    assert parse_microdescriptor(changed).digest != digest
    assert parse_microdescriptors(changed, {digest}).unrequested == 1


def test_microdescriptor_with_tap_key_and_no_policy():
    body = (b"onion-key\n-----BEGIN RSA PUBLIC KEY-----\nMIGJAoGBAL\n-----END RSA PUBLIC KEY-----\n"
            b"ntor-onion-key " + base64.b64encode(NTOR_KEY) + b"\n")
    md = parse_microdescriptor(body)
    assert md.exit_policy is REJECT_ALL_PORTS and md.exit_policy_v6 is REJECT_ALL_PORTS
    assert md.ed25519_id is None and md.family == frozenset() and md.family_ids == frozenset()


@pytest.mark.parametrize("mutation, reason", [
    (lambda b: b.replace(b"ntor-onion-key", b"ntor-onion-kex"), "no ntor-onion-key"),
    (lambda b: b.replace(b"p accept 80,443,8000-8100\n", b"p accept 80\np accept 81\n"), "more than one 'p'"),
    (lambda b: b.replace(b"p6 reject 1-1024", b"p6 reject 1024-1"), "bad port range"),
    (lambda b: b.replace(b"p accept 80,", b"p allow 80,"), "bad port policy"),
    (lambda b: b + b"id ed25519 " + base64.b64encode(ED_KEY) + b"\n", "more than one ed25519"),
    (lambda b: b.replace(b"ntor-onion-key ", b"ntor-onion-key AAAA"), "not 32 bytes"),
    (lambda b: b.replace(b"a [2001:db8::7]:9001", b"a [2001:zz8::7]:9001"), "bad IPv6"),
    (lambda b: b"onion-key\n-----BEGIN RSA PUBLIC KEY-----\nAAAA\n" + b, "unterminated"),
    (lambda b: b.replace(b"future-keyword", "fütüre".encode()), "not ASCII"),
    (lambda b: b.replace(b":9001", b":" + b"9" * 5000), "bad a line"),
    (lambda b: b.replace(b":9001", ":\u0669\u0660\u0660\u0661".encode()), "not ASCII"),
])
def test_malformed_microdescriptors(mutation, reason):
    body = mutation(SYNTHETIC_MICRODESC)
    with pytest.raises(MicrodescriptorParseError, match=reason):
        parse_microdescriptor(body)
    batch = parse_microdescriptors(body)
    assert len(batch.invalid) == 1 and reason.split("'")[0] in next(iter(batch.invalid.values()))


# ---------------------------------------------------------------- small parsers


def test_port_policy():
    policy = parse_port_policy("reject 25,119,135-139,445")
    assert not policy.allows_port(25) and not policy.allows_port(137) and policy.allows_port(443)
    assert policy.allows_any_port()
    assert not REJECT_ALL_PORTS.allows_any_port() and not REJECT_ALL_PORTS.allows_port(80)
    assert parse_port_policy("accept 1-65535").allows_port(65535)
    assert parse_port_policy("accept 80-81,82,1-5") == PortPolicy(True, ((1, 5), (80, 82)))
    assert str(parse_port_policy("accept 80-81,82,1-5")) == "accept 1-5,80-82"
    for bad in ("accept", "accept 0", "accept 70000", "accept 5-4", "accept 1,,2", "deny 1", "accept 1 2"):
        with pytest.raises(DocumentParseError):
            parse_port_policy(bad)


def test_protocols():
    assert dict(parse_protocols("Link=1-5 LinkAuth=1,3 Padding=")) == {
        "Link": frozenset({1, 2, 3, 4, 5}), "LinkAuth": frozenset({1, 3}), "Padding": frozenset()}
    for bad in ("Link", "Link=64", "Link=3-1", "Link=1 Link=2", "=1", "Link=a"):
        with pytest.raises(DocumentParseError):
            parse_protocols(bad)


# ---------------------------------------------------------------- key certificates


def test_key_certificates_parse():
    for folder, count in (("2017-03-10-bitnym", 9), ("2022-11-19-safetor", 9), ("2024-05-17-aziz", 9),
                          ("testnet-0.4.9.11", 3)):
        certificates = parse_key_certificates(read(folder, "cached-certs"))
        assert len(certificates) == count
        for certificate in certificates:
            assert certificate.signed_text.startswith(b"dir-key-certificate-version 3\n")
            assert certificate.signed_text.endswith(b"\ndir-key-certification\n")
            assert certificate.published < certificate.expires
    testnet = parse_key_certificates(read("testnet-0.4.9.11", "cached-certs"))
    assert testnet[0].fingerprint == "938FCDF3952D7ADA059E7B85CBE514B4F08C138E"
    assert testnet[0].address == "127.0.0.1:16011"
    assert testnet[0].signing_key_digest == "E2BF42C61E451852E5119F22FCF5927ECBB5A62A"


@pytest.mark.parametrize("old, new", [
    (b"dir-key-published 2026-11-21 14:36:59", b"dir-key-published 0000-11-21 14:36:59"),
    (b"dir-key-expires 2027-11-21 14:36:59", b"dir-key-expires 2027-11-31 14:36:59"),
    (b"fingerprint 938FCDF3952D7ADA059E7B85CBE514B4F08C138E",
     "fingerprint 938FCDF3952D7ADA059E7B85CBE514B4F08C138\uff25".encode()),
])
def test_hostile_certificate_fields_raise_only_their_error(old, new):
    original = read("testnet-0.4.9.11", "cached-certs")
    assert old in original
    with pytest.raises(CertificateParseError):
        parse_key_certificates(original.replace(old, new, 1))


def test_crlf_certificates_read_as_signed():
    raw = read("testnet-0.4.9.11", "cached-certs")
    assert parse_key_certificates(raw.replace(b"\n", b"\r\n")) == parse_key_certificates(raw)
