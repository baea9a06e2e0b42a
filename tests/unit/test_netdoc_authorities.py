"""DirAuthority / FallbackDir parsing and tor 0.4.9's built-in lists."""

from __future__ import annotations

import pytest

from oppy.netdoc.authorities import (
    DEFAULT_AUTHORITIES,
    DEFAULT_FALLBACK_DIRS,
    DirAuthority,
    parse_dir_authority_line,
    parse_fallback_dir_line,
    v3_authorities,
)
from oppy.netdoc.errors import AuthorityLineError


def test_default_authorities_are_tor_049s():
    by_name = {authority.nickname: authority for authority in DEFAULT_AUTHORITIES}
    assert list(by_name) == ["moria1", "tor26", "dizum", "Serge", "gabelmoo", "dannenberg",
                             "maatuska", "longclaw", "bastet", "faravahar"]
    # The new moria1 and tor26 identities (stem 1.8's list still has the old ones).
    assert by_name["moria1"].v3ident == "F533C81CEF0BC0267857C99B2F471ADF249FA232"
    assert by_name["moria1"].dir_port == 9231 and by_name["moria1"].or_port == 9201
    assert by_name["tor26"].v3ident == "2F3DF9CA0E5D36F2685A2DA67184EB8DCB8CBA8C"
    assert by_name["tor26"].fingerprint == "FAA4BCA4A6AC0FB4CA2F8AD5A11D9E122BA894F6"
    assert by_name["tor26"].ipv6 == ("2a02:16a8:662:2203::1", 443)
    assert by_name["tor26"].address == "217.196.147.77"
    assert by_name["faravahar"].v3ident == "70849B868D606BAECFB6128C5E3D782029AA394F"
    serge = by_name["Serge"]
    assert serge.v3ident is None and serge.is_bridge_authority and not serge.is_v3_authority
    assert len(v3_authorities(DEFAULT_AUTHORITIES)) == 9


def test_default_fallbacks():
    assert len(DEFAULT_FALLBACK_DIRS) == 200
    assert all(len(f.fingerprint) == 40 and 1 <= f.or_port <= 65535 for f in DEFAULT_FALLBACK_DIRS)
    assert sum(1 for f in DEFAULT_FALLBACK_DIRS if f.ipv6 is not None) == 95
    first = DEFAULT_FALLBACK_DIRS[0]
    assert (first.nickname, first.address, first.or_port, first.dir_port, first.fingerprint) == (
        "Bens1stVPSRelayTr", "216.9.227.166", 445, 0, "EF8DF732D0F307F63011B81CA44257E30BEF2B5C")
    assert len({f.fingerprint for f in DEFAULT_FALLBACK_DIRS}) == 200


def test_parse_full_torrc_line_with_grouped_fingerprint():
    line = ("DirAuthority test000a orport=5000 no-v2 v3ident=9ba3ab7a0da4e9b4c0e57fe4e6fbc49b1e9a4f3c "
            "ipv6=[2001:db8::1]:5001 weight=2.5 127.0.0.1:7000 4EA1 1CDE 0A8C 91E1 94DE 5E31 "
            "2C06 DA7E 5F1D 0E02")
    authority = parse_dir_authority_line(line)
    assert authority == DirAuthority(
        nickname="test000a",
        v3ident="9BA3AB7A0DA4E9B4C0E57FE4E6FBC49B1E9A4F3C",
        fingerprint="4EA11CDE0A8C91E194DE5E312C06DA7E5F1D0E02",
        address="127.0.0.1",
        dir_port=7000,
        or_port=5000,
        ipv6=("2001:db8::1", 5001),
        flags=frozenset({"no-v2"}),
        weight=2.5,
    )


def test_nickname_is_optional():
    authority = parse_dir_authority_line("orport=1 v3ident=" + "A" * 40 + " 10.0.0.1:80 " + "B" * 40)
    assert authority.nickname is None and authority.v3ident == "A" * 40


@pytest.mark.parametrize("line, reason", [
    ("", "empty"),
    ("moria1 orport=9201 128.31.0.39:9231", "needs ADDRESS:DIRPORT FINGERPRINT"),
    ("moria1 orport=99999 128.31.0.39:9231 " + "A" * 40, "bad orport"),
    ("moria1 v3ident=XYZ 128.31.0.39:9231 " + "A" * 40, "bad v3ident"),
    ("moria1 frobnicate 128.31.0.39:9231 " + "A" * 40, "unrecognized flag"),
    ("moria1 128.31.0.39 " + "A" * 40, "missing DirPort"),
    ("moria1 300.31.0.39:80 " + "A" * 40, "invalid IPv4"),
    ("moria1 128.31.0.39:80 " + "A" * 39, "not 40 hex digits"),
    ("moria1 128.31.0.39:80 " + "G" * 40, "not 40 hex digits"),
    ("moria1 ipv6=2001:db8::1:80 128.31.0.39:80 " + "A" * 40, "bad ipv6"),
    # float() and str.isdigit() accept these; a DirAuthority line is ASCII.
    ("moria1 weight=\u0661 128.31.0.39:80 " + "A" * 40, "bad weight"),
    ("moria1 weight=1_0 128.31.0.39:80 " + "A" * 40, "bad weight"),
    ("moria1 weight=" + "1" * 5000 + " 128.31.0.39:80 " + "A" * 40, "bad weight"),
    ("moria1 orport=\uff19\uff10 128.31.0.39:80 " + "A" * 40, "bad orport"),
    ("moria1 \u00b2.31.0.39:80 " + "A" * 40, "unrecognized flag"),
])
def test_bad_authority_lines(line, reason):
    with pytest.raises(AuthorityLineError, match=reason):
        parse_dir_authority_line(line)


def test_fallback_line():
    fallback = parse_fallback_dir_line(
        "FallbackDir 5.45.104.176:9030 orport=9000 id=aa4644f0ec589eea2f501bb867e32e599f8169da "
        "ipv6=[2a03:4000:6:102b:c457:f3ff:feb0:a6d0]:9000 weight=0.5", nickname="Quetzalcoatl")
    assert fallback.address == "5.45.104.176" and fallback.dir_port == 9030 and fallback.or_port == 9000
    assert fallback.fingerprint == "AA4644F0EC589EEA2F501BB867E32E599F8169DA"
    assert fallback.ipv6 == ("2a03:4000:6:102b:c457:f3ff:feb0:a6d0", 9000)
    assert fallback.weight == 0.5 and fallback.nickname == "Quetzalcoatl"


@pytest.mark.parametrize("line, reason", [
    ("1.2.3.4 id=" + "A" * 40, "missing orport"),
    ("1.2.3.4 orport=9001", "missing id"),
    ("orport=9001 id=" + "A" * 40, "exactly one address"),
    ("1.2.3.4 5.6.7.8 orport=9001 id=" + "A" * 40, "exactly one address"),
    ("1.2.3.4 orport=9001 id=ABC", "bad id"),
    ("1.2.3.4 orport=0 id=" + "A" * 40, "bad orport"),
])
def test_bad_fallback_lines(line, reason):
    with pytest.raises(AuthorityLineError, match=reason):
        parse_fallback_dir_line(line)
