"""Twisted's log events reach oppy's log and are not kept: until logging begins, a LogBeginner holds its last
events and every object they name (found by scripts/bench --torture: each link's factory events held the
closed connection, its TLS state and its read buffer)."""

from __future__ import annotations

import gc
import io
import logging
import types
import weakref

from twisted.logger import LogBeginner, LogPublisher, Logger
from twisted.python.failure import Failure

from oppy.daemon import begin_twisted_logging


class Connection:
    """Stands for what a link's factory events name (a RelayConnection)."""


def fresh_beginner() -> tuple[LogBeginner, Logger]:
    publisher = LogPublisher()
    stand_in_warnings = types.SimpleNamespace(showwarning=lambda *args, **kwargs: None)
    beginner = LogBeginner(publisher, io.StringIO(), types.SimpleNamespace(stdout=None, stderr=None),
                           stand_in_warnings)
    return beginner, Logger(observer=publisher)


def connections_kept(logger: Logger, cycles: int) -> int:
    """Log a factory's start and stop for `cycles` connections: how many of them stay alive afterwards."""
    alive = []
    for _ in range(cycles):
        connection = Connection()
        alive.append(weakref.ref(connection))
        logger.info("Starting factory {factory!r}", factory=connection)
        logger.info("Stopping factory {factory!r}", factory=connection)
        del connection
    gc.collect()
    return sum(1 for ref in alive if ref() is not None)


def test_before_logging_begins_twisted_keeps_what_its_events_name():
    beginner, logger = fresh_beginner()
    assert connections_kept(logger, 50) == 50


def test_once_oppy_begins_twisted_logging_nothing_is_kept():
    beginner, logger = fresh_beginner()
    begin_twisted_logging(beginner)
    assert connections_kept(logger, 50) == 0


def test_twisted_warnings_and_errors_reach_oppys_log(caplog):
    beginner, logger = fresh_beginner()
    logger.critical("before logging began")
    with caplog.at_level(logging.INFO, logger="oppy.twisted"):
        begin_twisted_logging(beginner)
        logger.info("Starting factory {factory!r}", factory="noise")
        logger.warn("a {what}", what="warning")
        try:
            raise ValueError("bad value")
        except ValueError:
            logger.failure("Unhandled error in Deferred:", Failure())
    assert [(record.levelno, record.getMessage()) for record in caplog.records] == [
        (logging.ERROR, "before logging began"),
        (logging.WARNING, "a warning"),
        (logging.ERROR, "Unhandled error in Deferred: ValueError: bad value"),
    ]
