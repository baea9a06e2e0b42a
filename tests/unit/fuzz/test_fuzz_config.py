"""Fuzz targets for the configuration: the torrc parser, every option's value parser, SETCONF, and the
command line (``oppy ARGS --verify-config``).

Whatever the text, the answer is a Config or a ConfigError (SetconfError for SETCONF) whose message is
one line; a value that is accepted survives being written out with ``--dump-config`` and read back.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import types

from hypothesis import given
from hypothesis import strategies as st

from oppy import cli
from oppy.config import (
    OPTION_NAMES,
    Config,
    ConfigError,
    ConfigLine,
    config_from_lines,
    config_from_torrc_text,
    parse_command_line,
    parse_torrc_text,
)
from oppy.crypto.s2k import hash_password
from oppy.control.commands import SetconfError, apply_setconf
from tests.unit.fuzz.budget import FUZZ
from tests.unit.fuzz.strategies import HOSTILE_TOKENS, mutated

AUTHORITY = "auth0 orport=5000 no-v2 v3ident=" + "A" * 40 + " 127.0.0.1:7000 " + "B" * 40

# A well-formed value of every option, from which mutated ones are made.
SEED_VALUES: dict[str, tuple[str, ...]] = {
    "SocksPort": ("9050", "127.0.0.1:9150 IsolateDestAddr SessionGroup=3", "[::1]:auto NoIsolateSOCKSAuth", "0"),
    "ControlPort": ("9051", "127.0.0.1:auto", "0"),
    "HTTPTunnelPort": ("8118", "127.0.0.1:auto IsolateDestPort SessionGroup=2", "0"),
    "DNSPort": ("5353", "127.0.0.1:auto IsolateDestAddr", "0"),
    "AutomapHostsOnResolve": ("0", "1"),
    "AutomapHostsSuffixes": (".onion,.exit", ".", ".test"),
    "VirtualAddrNetworkIPv4": ("127.192.0.0/10", "10.192.0.0/16"),
    "VirtualAddrNetworkIPv6": ("[FE80::]/10", "fc00::/7"),
    "DataDirectory": ("/var/lib/oppy", "~/.oppy"),
    "DirAuthority": (AUTHORITY,),
    "ClientTransportPlugin": ("obfs4 exec /usr/bin/obfs4proxy", "obfs4,meek_lite exec /usr/bin/lyrebird -enableLogging",
                              "obfs4 socks5 127.0.0.1:9999", "snowflake socks4 [::1]:8"),
    "FallbackDir": ("127.0.0.1:7000 orport=5000 id=" + "C" * 40,),
    "UseDefaultFallbackDirs": ("0", "1"),
    "TestingTorNetwork": ("0",),
    "Log": ("notice stdout", "info-warn file /tmp/oppy.log", "err stderr"),
    "LongLivedPorts": ("21,22,706,1863,5050,5190,5222,5223,6523,6667,6697,8300", "6667", "22, 443 ,", "0"),
    "MaxCircuitDirtiness": ("10 minutes", "600", "1.5 hours"),
    "CircuitBuildTimeout": ("60 seconds", "0"),
    "LearnCircuitBuildTimeout": ("1", "0"),
    "SocksTimeout": ("2 minutes",),
    "CookieAuthentication": ("1",),
    "CookieAuthFile": ("/tmp/cookie",),
    "HashedControlPassword": (hash_password("x", salt=bytes(8)),),
    "ClientRejectInternalAddresses": ("0",),
    "EnforceDistinctSubnets": ("1",),
    "SafeLogging": ("relay",),
    "MaxClientCircuitsPending": ("32",),
    "MaxSocksConnections": ("4096",),
    "SafeSocks": ("0", "1"),
    "TestSocks": ("0", "1"),
    "MaxMemInQueues": ("0", "8 GB", "512 MBytes", "1.5 gigabytes", "100 kbits"),
    "ConnectionPadding": ("auto", "0", "1"),
    "ReducedConnectionPadding": ("0", "1"),
    "CircuitPadding": ("0", "1"),
    "ReducedCircuitPadding": ("0", "1"),
    "VanguardsLiteEnabled": ("auto", "0", "1"),
    "ClientOnionAuthDir": ("/var/lib/oppy/onion-auth", "~/.oppy/onion_auth"),
    "UseBridges": ("0", "1"),
    "Bridge": ("127.0.0.1:5000", "127.0.0.1:5000 " + "D" * 40, "[::1]:443 $" + "e" * 40, "10.0.0.1",
               "obfs4 127.0.0.1:5001 " + "F" * 40 + " cert=AbC+/x iat-mode=0", "meek_lite 127.0.0.1:5002 url=x;y"),
    "ConfluxEnabled": ("auto", "0", "1"),
    "ConfluxClientUX": ("throughput", "latency", "throughput_lowmem", "latency_lowmem"),
    "__LeaveStreamsUnattached": ("1",),
    "__OwningControllerProcess": ("4242",),
}
assert set(SEED_VALUES) == set(OPTION_NAMES), "every option needs seed values"

ALL_SEEDS = tuple(value.encode() for values in SEED_VALUES.values() for value in values)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


option_values = st.tuples(
    st.sampled_from(sorted(SEED_VALUES)),
    st.one_of(mutated(ALL_SEEDS).map(_text), st.text(max_size=40), st.sampled_from(HOSTILE_TOKENS).map(_text)),
)


def _assert_one_line(error: ConfigError) -> None:
    message = str(error)
    assert message and "\n" not in message and "\r" not in message and len(message) < 1000, message


@FUZZ
@given(st.lists(option_values, min_size=1, max_size=4))
def test_every_option_value_parser_raises_only_config_errors(pairs):
    try:
        config = config_from_lines([[ConfigLine(name, value) for name, value in pairs]])
    except ConfigError as error:
        _assert_one_line(error)
        return
    # --dump-config full writes what was accepted so that it reads back the same (tor never writes the
    # __ options).
    text = "\n".join(config.to_torrc_lines(include_defaults=True))
    again = config_from_torrc_text(text)
    for name in OPTION_NAMES:
        if not name.startswith("__"):
            assert again.get_option(name) == config.get_option(name), text


@FUZZ
@given(st.lists(option_values, min_size=1, max_size=4))
def test_setconf_raises_only_setconf_errors_and_changes_nothing_on_failure(pairs):
    config = Config()
    try:
        apply_setconf(config, pairs)
    except SetconfError as error:
        assert error.code in (513, 552, 553) and "\n" not in error.message
        assert config == Config()


torrc_words = st.sampled_from(
    [*OPTION_NAMES, *SEED_VALUES["SocksPort"], "%include", "+SocksPort", "/Log", "#", '"', "\\", "\n", "\r\n",
     "\\\n", " ", "\t", "\u00e9", "0", "x", ":", "\ufeff", '"\\x41\\101\\n"']
)
torrc_texts = st.one_of(
    st.lists(torrc_words, max_size=30).map("".join),
    st.text(alphabet=st.sampled_from(list('ab #"\\\n\r\t x0:') + ["\u00e9"]), max_size=60),
    mutated(tuple("\n".join(f"{name} {value}" for name, values in SEED_VALUES.items() for value in values[:1])
                  .encode().split(b"\n"))).map(_text),
)


@FUZZ
@given(torrc_texts)
def test_torrc_text_parses_or_raises_config_error(text):
    try:
        parse_torrc_text(text)
        config_from_torrc_text(text)
    except ConfigError as error:
        _assert_one_line(error)


# --------------------------------------------------------------------------- the command line

argument_words = st.one_of(
    st.sampled_from(["--SocksPort", "--socks-port", "--control-port", "--data-directory", "--log-level",
                     "--dump-config", "--list-torrc-options", "--hash-password", "--testing-tor-network", "-f",
                     "--torrc-file", "--+Log", "--/SocksPort", "--MaxCircuitDirtiness", "--Nickname", "-h",
                     "--version", "SocksPort", "--", "-", "short", "full", "info"]),
    st.sampled_from([f"--{name}" for name in OPTION_NAMES]),
    option_values.map(lambda pair: pair[1]),
    st.text(max_size=12),
)


@contextlib.contextmanager
def _no_daemon():
    def run(config):
        raise AssertionError("the fuzzed command line started the daemon")

    stand_in = types.ModuleType("oppy.daemon")
    stand_in.run = run
    saved = sys.modules.get("oppy.daemon")
    sys.modules["oppy.daemon"] = stand_in
    try:
        yield
    finally:
        if saved is None:
            del sys.modules["oppy.daemon"]
        else:
            sys.modules["oppy.daemon"] = saved


@FUZZ
@given(argv=st.lists(argument_words, max_size=8), torrc=torrc_texts)
def test_command_line_runs_to_a_status_and_at_most_one_error_line(argv, torrc):
    argv = [word.replace("\0", "") for word in argv]  # an argv cannot hold NUL
    try:
        parse_command_line(argv)
    except ConfigError as error:
        _assert_one_line(error)
    # The whole command, with any torrc it names replaced by fuzzed text, and never "-" (standard input).
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "torrc")
        with open(path, "w", encoding="utf-8", errors="surrogateescape") as handle:
            handle.write(torrc)
        args = [path if index and argv[index - 1] in ("-f", "--torrc-file") else word
                for index, word in enumerate(argv)]
        out, err = io.StringIO(), io.StringIO()
        # --verify-config first, where no option can take it as its value: the daemon must never start
        # here (its default authorities are the public network), and the stand-in fails the test if it does.
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _no_daemon():
            status = cli.main(["--verify-config", *args])
    assert status in (cli.EXIT_OK, cli.EXIT_FAILURE)
    if status == cli.EXIT_FAILURE:
        assert err.getvalue().startswith("oppy: ") and err.getvalue().count("\n") == 1, err.getvalue()
