"""Which authorities and fallback directories the daemon bootstraps from: tor's rule (config.c
consider_adding_dir_servers), read from torrc text as a user writes it."""

from __future__ import annotations

from oppy.config import config_from_torrc_text
from oppy.daemon import directory_servers
from oppy.netdoc.authorities import DEFAULT_AUTHORITIES, DEFAULT_FALLBACK_DIRS

TEST_AUTHORITY = ("DirAuthority auth0 orport=19000 no-v2 v3ident=0ABF9F1C8F04DD791A26BF2C3B0FDFC8DDBA08BF "
                  "127.0.0.1:19001 91C59830436F5E33799A047047C16860877DBEFF\n")
FALLBACK = "FallbackDir 127.0.0.1 orport=19030 id=1D2F3B7B4A234076A0B75FC16C2EC543B9E15917\n"


def servers(text: str):
    authorities, fallbacks = directory_servers(config_from_torrc_text(text))
    return [authority.nickname for authority in authorities], [fallback.fingerprint for fallback in fallbacks]


def test_the_default_authorities_come_with_the_default_fallbacks():
    authorities, fallbacks = servers("")
    assert authorities == [authority.nickname for authority in DEFAULT_AUTHORITIES]
    assert fallbacks == [fallback.fingerprint for fallback in DEFAULT_FALLBACK_DIRS] and len(fallbacks) > 100


def test_use_default_fallback_dirs_0_leaves_the_authorities_alone():
    assert servers("UseDefaultFallbackDirs 0\n")[1] == []


def test_a_fallback_dir_line_replaces_the_default_fallbacks():
    assert servers(FALLBACK)[1] == ["1D2F3B7B4A234076A0B75FC16C2EC543B9E15917"]


def test_custom_authorities_have_no_fallback_unless_one_is_configured():
    """A test network's client must never learn of the public network's fallbacks."""
    assert servers(TEST_AUTHORITY) == (["auth0"], [])
    assert servers(TEST_AUTHORITY + "UseDefaultFallbackDirs 1\n") == (["auth0"], [])
    assert servers(TEST_AUTHORITY + FALLBACK) == (["auth0"], ["1D2F3B7B4A234076A0B75FC16C2EC543B9E15917"])
