"""oppy.logs: tor-looking log lines, severity ranges, destinations, observers, SafeLogging."""

import logging
import os
import re
import stat
import time

import pytest

from oppy import logs
from oppy.config import config_from_torrc_text
from oppy.logs import (
    NOTICE,
    SCRUBBED,
    SEVERITY_LEVELS,
    LogSpec,
    SeverityRangeFilter,
    TorLogFormatter,
    add_log_observer,
    configure_logging,
    notice,
    remove_log_observer,
    reset_logging,
    safe_address,
    set_safe_logging,
    severity_of,
)

LINE_RE = re.compile(r"[A-Z][a-z]{2} \d\d \d\d:\d\d:\d\d\.\d{3} \[(debug|info|notice|warn|err)\] .*")
log = logging.getLogger("oppy.test")


def configure_from_torrc(text):
    """Logging as ``oppy`` sets it up from a torrc's Log and SafeLogging lines."""
    config = config_from_torrc_text(text)
    configure_logging(config.logs, safe_logging=config.safe_logging)


@pytest.fixture(autouse=True)
def clean_logging():
    reset_logging()
    yield
    reset_logging()


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def make_record(level, message, *args, created=None):
    record = logging.LogRecord("oppy.test", level, __file__, 1, message, args, None)
    if created is not None:
        record.created = created
    return record


def test_notice_sits_between_info_and_warning():
    assert logging.INFO < NOTICE < logging.WARNING
    assert logging.getLevelName(NOTICE) == "NOTICE"
    assert SEVERITY_LEVELS == {"debug": logging.DEBUG, "info": logging.INFO, "notice": NOTICE,
                               "warn": logging.WARNING, "err": logging.ERROR}


@pytest.mark.parametrize("level, severity", [
    (logging.DEBUG, "debug"), (5, "debug"), (logging.INFO, "info"), (NOTICE, "notice"), (logging.WARNING, "warn"),
    (35, "warn"), (logging.ERROR, "err"), (logging.CRITICAL, "err"),
])
def test_severity_names(level, severity):
    assert severity_of(level) == severity


def test_line_format_is_tors(utc):
    # 2026-11-21 16:32:09.123 UTC
    created = 1795278729.123
    line = TorLogFormatter().format(make_record(NOTICE, "Bootstrapped %d%% (%s)", 100, "done", created=created))
    assert line == "Nov 21 16:32:09.123 [notice] Bootstrapped 100% (done)"
    line = TorLogFormatter().format(make_record(logging.WARNING, "x", created=1767225600.0))  # 2026-01-01
    assert line == "Jan 01 00:00:00.000 [warn] x"


def test_one_line_per_event():
    line = TorLogFormatter().format(make_record(NOTICE, "first\nSep 01 00:00:00.000 [err] forged\r"))
    assert "\n" not in line and line.endswith("first\\nSep 01 00:00:00.000 [err] forged\\r")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("oppy.test", logging.ERROR, __file__, 1, "failed", (), __import__("sys").exc_info())
    line = TorLogFormatter().format(record)
    assert "\n" not in line and line.startswith(line[:19]) and "[err] failed: Traceback" in line
    assert "ValueError: boom" in line


def test_severity_range_filter():
    only_middle = SeverityRangeFilter("info", "notice")
    assert [only_middle.filter(make_record(level, "m")) for level in
            (logging.DEBUG, logging.INFO, NOTICE, logging.WARNING, logging.ERROR)] == [False, True, True, False, False]


def test_default_destination_is_notice_and_above_on_stdout(capsys):
    configure_from_torrc("")
    log.debug("debug message")
    log.info("info message")
    notice(log, "notice %s", "message")
    log.warning("warn message")
    log.error("err message")
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert all(LINE_RE.fullmatch(line) for line in lines)
    assert [line[20:] for line in lines] == ["[notice] notice message", "[warn] warn message", "[err] err message"]
    assert err == ""


def test_ranges_and_stderr(capsys):
    configure_logging([LogSpec("info", "notice", "stdout"), LogSpec("warn", "err", "stderr")])
    log.debug("d")
    log.info("i")
    notice(log, "n")
    log.warning("w")
    out, err = capsys.readouterr()
    assert [line[20:] for line in out.splitlines()] == ["[info] i", "[notice] n"]
    assert [line[20:] for line in err.splitlines()] == ["[warn] w"]


def test_records_nobody_wants_are_not_formatted():
    configure_logging([LogSpec("notice", "err", "stdout")])
    assert not log.isEnabledFor(logging.INFO)
    assert log.isEnabledFor(NOTICE)


def test_file_destination(tmp_path, capsys):
    path = tmp_path / "notices.log"
    configure_from_torrc(f"Log info file {path}\n")
    log.info("to the file")
    log.debug("not to the file")
    configure_logging([LogSpec("notice", "err", "file", str(path))])  # reopen: appends
    notice(log, "again")
    reset_logging()
    lines = path.read_text().splitlines()
    assert all(LINE_RE.fullmatch(line) for line in lines)
    assert [line[20:] for line in lines] == [
        "[notice] oppy 0.1.0 opening new log file.", "[info] to the file",
        "[notice] oppy 0.1.0 opening log file.", "[notice] again"]
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o037 == 0  # 0640 less the umask: nobody else writes or reads
    assert capsys.readouterr().out == ""


def test_unopenable_file_keeps_the_old_configuration(tmp_path, capsys):
    configure_logging([LogSpec("notice", "err", "stdout")])
    with pytest.raises(OSError, match="Couldn't open file for 'Log"):
        configure_logging([LogSpec("notice", "err", "file", str(tmp_path / "no" / "such" / "dir.log"))])
    notice(log, "still here")
    assert capsys.readouterr().out.endswith("[notice] still here\n")


def test_observers_get_every_record_at_their_level(capsys):
    configure_logging([LogSpec("notice", "err", "stdout")])
    seen = []
    add_log_observer(lambda severity, message: seen.append((severity, message)), "info")
    log.debug("d")
    log.info("i %d", 1)
    log.warning("two\nlines")
    assert seen == [("info", "i 1"), ("warn", "two\\nlines")]
    assert "[info]" not in capsys.readouterr().out  # the stdout destination still starts at notice


def test_observer_removal_errors_and_reentrancy():
    seen = []

    def broken(severity, message):
        raise RuntimeError("observer bug")

    def chatty(severity, message):
        seen.append(message)
        log.warning("an observer logging must not loop")

    add_log_observer(broken, "debug")
    add_log_observer(chatty)  # notice and above by default
    notice(log, "hello")
    assert seen == ["hello"]
    remove_log_observer(chatty)
    remove_log_observer(chatty)  # unknown: ignored
    notice(log, "again")
    assert seen == ["hello"]
    assert log.isEnabledFor(logging.DEBUG)
    remove_log_observer(broken)
    assert not log.isEnabledFor(logging.DEBUG)


def test_debug_observer_lowers_the_logger_level():
    configure_logging([LogSpec("notice", "err", "stdout")])
    observer = lambda severity, message: None  # noqa: E731
    add_log_observer(observer, "debug")
    assert log.isEnabledFor(logging.DEBUG)
    remove_log_observer(observer)
    assert not log.isEnabledFor(logging.INFO)


def test_safe_logging():
    assert safe_address("example.com:443") == SCRUBBED == "[scrubbed]"  # SafeLogging 1 is the default
    set_safe_logging("0")
    assert safe_address("example.com:443") == "example.com:443"
    set_safe_logging("relay")  # scrubs only what a relay logs; oppy is a client
    assert safe_address("10.0.0.1") == "10.0.0.1"
    set_safe_logging(True)
    assert safe_address("10.0.0.1") == SCRUBBED
    configure_from_torrc("SafeLogging 0\n")
    assert safe_address("10.0.0.1") == "10.0.0.1"
    configure_from_torrc("")
    assert safe_address("10.0.0.1") == SCRUBBED


def test_oppy_records_do_not_reach_the_root_logger_twice(capsys, caplog):
    configure_logging([LogSpec("notice", "err", "stdout")])
    with caplog.at_level(logging.DEBUG):
        notice(log, "once")
    assert capsys.readouterr().out.count("once") == 1
    assert caplog.records == []
    reset_logging()
    assert logging.getLogger(logs.ROOT_LOGGER_NAME).propagate is True
