"""Logging that looks like tor's: ``Nov 21 16:32:09.123 [notice] message``, one line per event.

tor's five severities map onto Python's levels, with a NOTICE level added between INFO and WARNING
(``debug`` DEBUG, ``info`` INFO, ``notice`` NOTICE, ``warn`` WARNING, ``err`` ERROR and CRITICAL).
:func:`configure_logging` turns ``Log`` lines (:class:`LogSpec`) into handlers on the ``oppy`` logger;
:func:`add_log_observer` lets the control port receive every record at or above a severity (for its
DEBUG/INFO/NOTICE/WARN/ERR events); :func:`safe_address` implements SafeLogging.

References: C tor ``lib/log/log.c`` (log_prefix_, sev_to_string, log_tor_version) and
``app/config/config.c`` (options_init_logs, safe_str_client).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TextIO

from oppy import __version__

__all__ = [
    "NOTICE",
    "SEVERITIES",
    "SEVERITY_LEVELS",
    "LogSpec",
    "SCRUBBED",
    "severity_of",
    "notice",
    "TorLogFormatter",
    "SeverityRangeFilter",
    "configure_logging",
    "reset_logging",
    "add_log_observer",
    "remove_log_observer",
    "set_safe_logging",
    "safe_address",
    "LogObserver",
]

#: Python level for tor's "notice": above INFO, below WARNING.
NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")

#: tor severity name -> the lowest Python level that counts as it.
SEVERITY_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": NOTICE,
    "warn": logging.WARNING,
    "err": logging.ERROR,
}
#: tor's severities, least to most severe (log.c parse_log_level).
SEVERITIES = ("debug", "info", "notice", "warn", "err")

#: What a scrubbed address reads as (config.c safe_str_client).
SCRUBBED = "[scrubbed]"
# English month abbreviations, whatever the locale (tor's strftime("%b") in the C locale).
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# tor creates log files readable by owner and group (config.c open_and_add_file_log).
LOG_FILE_MODE = 0o640
# The logger every oppy module's logger (``oppy.*``) sits under.
ROOT_LOGGER_NAME = "oppy"

LogObserver = Callable[[str, str], None]


@dataclass(frozen=True)
class LogSpec:
    """One ``Log`` line: messages from ``min_severity`` to ``max_severity`` go to stdout, stderr or a file.
    ``value`` is the line's torrc text, given back by GETCONF."""

    min_severity: str = "notice"
    max_severity: str = "err"
    destination: str = "stdout"
    path: str | None = None
    value: str = ""

    def accepts(self, severity: str) -> bool:
        """True if a message of ``severity`` belongs in this destination."""
        return SEVERITIES.index(self.min_severity) <= SEVERITIES.index(severity) <= SEVERITIES.index(
            self.max_severity)


def severity_of(levelno: int) -> str:
    """tor's severity name for a Python level (a level between two counts as the lower one)."""
    if levelno >= logging.ERROR:
        return "err"
    if levelno >= logging.WARNING:
        return "warn"
    if levelno >= NOTICE:
        return "notice"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


def notice(logger: logging.Logger, message: str, *args: object) -> None:
    """Log at tor's notice severity (``logger.log(NOTICE, ...)``)."""
    logger.log(NOTICE, message, *args, stacklevel=2)


def _one_line(text: str) -> str:
    """Keep one event on one line: a newline in a message (or a traceback, or a hostile destination
    name) must not start what looks like a second log line."""
    if "\n" in text or "\r" in text:
        return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")
    return text


def _message_of(record: logging.LogRecord) -> str:
    message = record.getMessage()
    if record.exc_info and record.exc_info[0] is not None:
        formatter = logging.Formatter()
        message = f"{message}: {formatter.formatException(record.exc_info)}"
    elif record.exc_text:
        message = f"{message}: {record.exc_text}"
    return _one_line(message)


class TorLogFormatter(logging.Formatter):
    """``Mon DD HH:MM:SS.mmm [severity] message`` in local time, as tor writes it (log.c log_prefix_)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{format_timestamp(record.created)} [{severity_of(record.levelno)}] {_message_of(record)}"


def format_timestamp(when: float) -> str:
    seconds, milliseconds = divmod(round(when * 1000), 1000)
    local = time.localtime(seconds)
    return (f"{_MONTHS[local.tm_mon - 1]} {local.tm_mday:02d} "
            f"{local.tm_hour:02d}:{local.tm_min:02d}:{local.tm_sec:02d}.{milliseconds:03d}")


class SeverityRangeFilter(logging.Filter):
    """Pass records from ``min_severity`` to ``max_severity`` inclusive (``Log notice-warn ...``)."""

    def __init__(self, min_severity: str, max_severity: str = "err") -> None:
        super().__init__()
        self.low = SEVERITIES.index(min_severity)
        self.high = SEVERITIES.index(max_severity)

    def filter(self, record: logging.LogRecord) -> bool:
        return self.low <= SEVERITIES.index(severity_of(record.levelno)) <= self.high


class _StandardStreamHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` / ``sys.stderr`` is at the time of each record, so that a
    replaced stream (a test's capture, a daemon's redirection) is honoured."""

    def __init__(self, stream_name: str) -> None:
        super().__init__(getattr(sys, stream_name))
        self.stream_name = stream_name

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return getattr(sys, self.stream_name)

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ assigns it; ignore that
        pass


class _FileLogHandler(logging.StreamHandler):
    """A StreamHandler that owns its file and closes it."""

    def close(self) -> None:
        self.acquire()
        try:
            if self.stream and not self.stream.closed:
                self.stream.close()
        finally:
            self.release()
        super().close()


def _open_log_file(path: str) -> logging.Handler:
    """A handler appending to ``path`` (created 0640), which starts with tor's "opening log file" line."""
    expanded = os.path.expanduser(path)
    try:
        descriptor = os.open(expanded, os.O_WRONLY | os.O_CREAT | os.O_APPEND, LOG_FILE_MODE)
    except OSError as exc:
        raise OSError(exc.errno, f"Couldn't open file for 'Log ... file {path}': {exc.strerror}") from None
    is_new = os.fstat(descriptor).st_size == 0
    stream = open(descriptor, "a", encoding="utf-8", errors="backslashreplace", buffering=1)  # noqa: SIM115
    stream.write(f"{format_timestamp(time.time())} [notice] oppy {__version__} opening "
                 f"{'new ' if is_new else ''}log file.\n")
    return _FileLogHandler(stream)


class _ObserverHandler(logging.Handler):
    """Hands every record to the observers whose severity it reaches."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.observers: list[tuple[LogObserver, int]] = []
        self._busy = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._busy, "active", False):
            return  # an observer that logs must not loop back into itself
        self._busy.active = True
        try:
            severity = severity_of(record.levelno)
            message = _message_of(record)
            for observer, level in list(self.observers):
                if record.levelno >= level:
                    try:
                        observer(severity, message)
                    except Exception:  # noqa: BLE001 - a broken observer must not break logging
                        pass
        finally:
            self._busy.active = False


class _LoggingState:
    """What configure_logging installed, so that it can be replaced or removed."""

    def __init__(self) -> None:
        self.handlers: list[logging.Handler] = []
        self.destination_level = logging.CRITICAL + 1
        self.observer_handler = _ObserverHandler()
        self.attached = False
        self.scrub_addresses = True
        self.lock = threading.Lock()


_state = _LoggingState()


def _root_logger() -> logging.Logger:
    return logging.getLogger(ROOT_LOGGER_NAME)


def _update_level() -> None:
    """The oppy logger's level is the lowest any destination or observer wants, so that records
    nobody would see are dropped before they are formatted."""
    logger = _root_logger()
    observer_levels = [level for _, level in _state.observer_handler.observers]
    logger.setLevel(min([_state.destination_level, *observer_levels]))
    if not _state.attached:
        logger.addHandler(_state.observer_handler)
        _state.attached = True


def _handler_for(spec: LogSpec) -> logging.Handler:
    if spec.destination == "file":
        assert spec.path is not None
        handler = _open_log_file(spec.path)
    else:
        handler = _StandardStreamHandler(spec.destination)
    handler.setFormatter(TorLogFormatter())
    handler.addFilter(SeverityRangeFilter(spec.min_severity, spec.max_severity))
    return handler


def configure_logging(specs: Iterable[LogSpec], *, safe_logging: str | bool | None = None) -> None:
    """Send oppy's log records where the ``Log`` lines say, replacing any earlier configuration, and
    set SafeLogging unless ``safe_logging`` is None. A file that cannot be opened raises OSError and
    leaves the earlier configuration in place.
    """
    specs = list(specs)
    new_handlers: list[logging.Handler] = []
    try:
        for spec in specs:
            new_handlers.append(_handler_for(spec))
    except OSError:
        for handler in new_handlers:
            handler.close()
        raise
    with _state.lock:
        logger = _root_logger()
        for handler in _state.handlers:
            logger.removeHandler(handler)
            handler.close()
        _state.handlers = new_handlers
        for handler in new_handlers:
            logger.addHandler(handler)
        _state.destination_level = min((SEVERITY_LEVELS[spec.min_severity] for spec in specs),
                                       default=logging.CRITICAL + 1)
        # oppy's records are shown by oppy's handlers only, not again by whatever the root logger has.
        logger.propagate = not specs
        if safe_logging is not None:
            set_safe_logging(safe_logging)
        _update_level()


def reset_logging() -> None:
    """Remove the handlers configure_logging installed and every observer (for tests and shutdown)."""
    with _state.lock:
        logger = _root_logger()
        for handler in _state.handlers:
            logger.removeHandler(handler)
            handler.close()
        _state.handlers = []
        _state.destination_level = logging.CRITICAL + 1
        _state.observer_handler.observers.clear()
        if _state.attached:
            logger.removeHandler(_state.observer_handler)
            _state.attached = False
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
        _state.scrub_addresses = True


def add_log_observer(observer: LogObserver, min_severity: str = "notice") -> None:
    """Call ``observer(severity, message)`` for every oppy record at ``min_severity`` or above, whatever
    the Log lines say (the control port's log events). ``message`` is one line without the prefix.
    An observer at debug or info makes every such record get formatted: register the level needed."""
    with _state.lock:
        _state.observer_handler.observers.append((observer, SEVERITY_LEVELS[min_severity]))
        _update_level()


def remove_log_observer(observer: LogObserver) -> None:
    """Stop calling ``observer`` (every registration of it); unknown observers are ignored."""
    with _state.lock:
        _state.observer_handler.observers[:] = [
            (known, level) for known, level in _state.observer_handler.observers if known != observer
        ]
        _update_level()


def set_safe_logging(value: str | bool) -> None:
    """SafeLogging: ``"1"``/True scrubs client destinations; ``"0"``/False and ``"relay"`` do not
    (``relay`` scrubs only what a relay logs, and oppy is a client)."""
    if isinstance(value, bool):
        _state.scrub_addresses = value
    else:
        _state.scrub_addresses = str(value).lower() == "1"


def safe_address(text: object) -> str:
    """``text`` (a destination address, hostname or address:port) fit for the log: ``[scrubbed]``
    while SafeLogging is 1, the default. Use it for every destination logged at notice or above."""
    if _state.scrub_addresses:
        return SCRUBBED
    return str(text)
