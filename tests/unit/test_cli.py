"""The ``oppy`` command: tor's command line, one-line errors, --hash-password as tor prints it."""

import re
import subprocess
import sys
import types

import pytest

from oppy import __version__, cli
from oppy.config import Config
from oppy.crypto.s2k import check_hashed_password
from oppy.logs import LogSpec, reset_logging
from tests.support.tools import make_present

HASHED_PASSWORD_RE = re.compile(r"16:[0-9A-F]{58}")


@pytest.fixture(autouse=True)
def clean_logging():
    reset_logging()
    yield
    reset_logging()


@pytest.fixture
def fake_daemon(monkeypatch):
    """An oppy.daemon that records the Config it is run with."""
    module = types.ModuleType("oppy.daemon")
    module.configs = []

    def run(config):
        module.configs.append(config)
        return 7

    module.run = run
    monkeypatch.setitem(sys.modules, "oppy.daemon", module)
    return module


def run_main(capsys, *argv):
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status, out, err, text):
    assert status == 1
    assert out == ""
    assert err == f"oppy: {text}\n"
    assert "Traceback" not in err


def test_version_and_help(capsys):
    assert run_main(capsys, "--version") == (0, f"oppy version {__version__}.\n", "")
    status, out, err = run_main(capsys, "--help")
    assert status == 0 and out.startswith("usage: oppy") and "--hash-password" in out and err == ""
    assert run_main(capsys, "-h")[1] == out


def test_hash_password_verifies(capsys):
    status, out, err = run_main(capsys, "--hash-password", "s3cret pass")
    assert status == 0 and err == ""
    assert out.endswith("\n") and out.count("\n") == 1
    hashed = out.strip()
    assert HASHED_PASSWORD_RE.fullmatch(hashed)
    assert check_hashed_password(hashed, "s3cret pass")
    assert not check_hashed_password(hashed, "s3cret pas")
    # A fresh salt every time, as tor does.
    assert run_main(capsys, "--hash-password", "s3cret pass")[1] != out


def test_hash_password_looks_like_tors(capsys, tmp_path):
    make_present("tor")
    tor = subprocess.run(["tor", "--hash-password", "probe-pw", "--DataDirectory", str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    tor_hash = tor.stdout.strip().splitlines()[-1]
    ours = run_main(capsys, "--hash-password", "probe-pw")[1].strip()
    assert HASHED_PASSWORD_RE.fullmatch(tor_hash) and HASHED_PASSWORD_RE.fullmatch(ours)
    assert tor_hash[:3] == ours[:3] and len(tor_hash) == len(ours)
    assert tor_hash[2 + 17:2 + 19] == ours[2 + 17:2 + 19] == "60"  # the S2K count byte tor uses (96)
    assert check_hashed_password(tor_hash, "probe-pw")


def test_hash_password_without_value(capsys):
    assert_one_line_error(*run_main(capsys, "--hash-password"),
                          "Command-line option '--hash-password' with no value. Failing.")


def test_hash_password_needs_no_daemon(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "oppy.daemon", None)
    assert run_main(capsys, "--hash-password", "x")[0] == 0
    assert run_main(capsys, "--version")[0] == 0


def test_unknown_option(capsys):
    assert_one_line_error(*run_main(capsys, "--Foo", "1"), "Unknown option 'Foo'.  Failing.")


def test_bad_value(capsys):
    status, out, err = run_main(capsys, "--MaxCircuitDirtiness", "10 fortnights", "--verify-config")
    assert_one_line_error(status, out, err,
                          "Could not parse MaxCircuitDirtiness '10 fortnights': unknown unit 'fortnights' "
                          "(use seconds, minutes, hours, days, weeks or months)")


def test_missing_torrc(capsys, tmp_path):
    missing = tmp_path / "missing"
    assert_one_line_error(*run_main(capsys, "-f", str(missing)),
                          f'Unable to open configuration file "{missing}": No such file or directory')


def test_bad_torrc(capsys, tmp_path):
    torrc = tmp_path / "torrc"
    torrc.write_text('SocksPort 9050\nContactInfo "unterminated\n')
    status, out, err = run_main(capsys, "-f", str(torrc), "--verify-config")
    assert status == 1 and err.count("\n") == 1 and "Traceback" not in err


def test_verify_config(capsys, tmp_path, fake_daemon):
    torrc = tmp_path / "torrc"
    torrc.write_text("SocksPort 9150\nControlPort 9051\n")
    status, out, err = run_main(capsys, "-f", str(torrc), "--verify-config")
    assert (status, out) == (0, "Configuration was valid\n")
    assert "no authentication method" in err  # warnings are shown, but the configuration is valid
    assert fake_daemon.configs == []


def test_dump_config(capsys, tmp_path):
    torrc = tmp_path / "torrc"
    torrc.write_text("SocksPort 9050\nSocksPort 9051\nMaxCircuitDirtiness 5 minutes\n")
    status, out, err = run_main(capsys, "-f", str(torrc), "--SocksPort", "9999", "--dump-config", "short")
    assert (status, out, err) == (0, "SocksPort 9999\nMaxCircuitDirtiness 300\n", "")
    status, out, err = run_main(capsys, "-f", str(torrc), "--+SocksPort", "9999", "--dump-config", "full")
    assert "SocksPort 9050\nSocksPort 9051\nSocksPort 9999\n" in out and "SocksTimeout 120\n" in out


def test_dump_config_argument_is_optional(capsys):
    assert run_main(capsys, "--SocksPort", "9999", "--dump-config") == (0, "SocksPort 9999\n", "")
    assert run_main(capsys, "--dump-config", "--SocksPort", "9998") == (0, "SocksPort 9998\n", "")


def test_list_torrc_options(capsys):
    status, out, err = run_main(capsys, "--list-torrc-options")
    assert status == 0 and "SocksPort LineList\n" in out and "MaxCircuitDirtiness TimeInterval\n" in out


def test_runs_the_daemon_with_the_command_line_over_the_file(capsys, tmp_path, fake_daemon):
    torrc = tmp_path / "torrc"
    torrc.write_text("SocksPort 9050\nSocksPort 9051\nMaxCircuitDirtiness 60\nSafeLogging 0\n"
                     f"Log notice file {tmp_path / 'oppy.log'}\n")
    status = cli.main(["-f", str(torrc), "--socks-port", "9150", "--control-port", "auto", "--data-directory",
                       str(tmp_path / "data"), "--log-level", "info", "--CookieAuthentication", "1"])
    assert status == 7
    (config,) = fake_daemon.configs
    assert isinstance(config, Config)
    assert [(p.address, p.port) for p in config.socks_ports] == [("127.0.0.1", 9150)]
    assert [(p.address, p.port) for p in config.control_ports] == [("127.0.0.1", 0)]
    assert config.data_directory == str(tmp_path / "data") and config.max_circuit_dirtiness == 60
    assert config.logs == (LogSpec("info", "err", "file", str(tmp_path / "oppy.log"),
                                   f"info file {tmp_path / 'oppy.log'}"),)
    assert config.cookie_authentication is True and config.safe_logging == "0"
    assert (tmp_path / "oppy.log").read_text().endswith("opening new log file.\n")  # logging is set up


def test_testing_tor_network_flag(capsys, fake_daemon):
    status, out, err = run_main(capsys, "--testing-tor-network")
    assert status == 1 and "TestingTorNetwork may only be configured" in err
    authority = "auth0 orport=5000 v3ident=" + "A" * 40 + " 127.0.0.1:7000 " + "B" * 40
    assert cli.main(["--testing-tor-network", "--DirAuthority", authority, "--Log", "err stderr"]) == 7
    config = fake_daemon.configs[-1]
    assert config.testing_tor_network and not config.client_reject_internal_addresses
    assert not config.enforce_distinct_subnets


def test_config_warnings_are_logged_when_the_daemon_starts(capsys, fake_daemon):
    assert cli.main(["--ControlPort", "9051", "--Log", "warn stderr"]) == 7
    err = capsys.readouterr().err
    assert re.search(r"\[warn\] ControlPort is open, but no authentication method", err)


def test_unopenable_log_file_is_one_line(capsys, tmp_path, fake_daemon):
    status, out, err = run_main(capsys, "--Log", f"notice file {tmp_path}/no/such/dir/x.log")
    assert status == 1 and err.startswith("oppy: Couldn't open file for 'Log") and err.count("\n") == 1
    assert fake_daemon.configs == []


def test_missing_daemon_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "oppy.daemon", None)
    assert_one_line_error(*run_main(capsys, "--Log", "err stderr"),
                          "this build of oppy has no daemon (oppy.daemon is missing)")


@pytest.mark.parametrize("option, value", [
    ("--ControlPort", "１２３"),
    ("--SocksPort", "1" * 5000),
    ("--MaxCircuitDirtiness", "9" * 5000 + " minutes"),
    ("--MaxCircuitDirtiness", "9" * 400 + ".5 minutes"),
    ("--MaxClientCircuitsPending", "1" * 5000),
])
def test_hostile_numbers_are_one_line_errors_naming_the_option(capsys, option, value):
    status, out, err = run_main(capsys, option, value, "--verify-config")
    assert status == 1 and out == "" and "Traceback" not in err
    assert err.startswith(f"oppy: Could not parse {option[2:]} '") and err.count("\n") == 1 and len(err) < 300


def test_hostile_numbers_in_a_torrc_are_one_line_errors(capsys, tmp_path):
    torrc = tmp_path / "torrc"
    torrc.write_text("SocksPort 9050\nMaxCircuitDirtiness " + "9" * 5000 + " minutes\n")
    status, out, err = run_main(capsys, "-f", str(torrc), "--verify-config")
    assert status == 1 and "Traceback" not in err
    assert err.startswith("oppy: Could not parse MaxCircuitDirtiness '999") and "(5008 characters)" in err


def test_nul_in_a_log_file_name_is_refused_before_logging_starts(capsys, tmp_path, fake_daemon):
    torrc = tmp_path / "torrc"
    torrc.write_text('Log "notice file /tmp/oppy\\000.log"\n')
    status, out, err = run_main(capsys, "-f", str(torrc))
    assert_one_line_error(status, out, err, "Could not parse Log 'notice file /tmp/oppy\\x00.log': a file name "
                                            "cannot contain NUL")
    assert fake_daemon.configs == []


def test_nul_in_an_include_path_is_a_one_line_error(capsys, tmp_path):
    torrc = tmp_path / "torrc"
    torrc.write_text('%include "/tmp/x\\000y"\n')
    assert_one_line_error(*run_main(capsys, "-f", str(torrc), "--verify-config"),
                          'Unable to open configuration file "/tmp/x\\x00y": embedded null byte')
