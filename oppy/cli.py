"""The ``oppy`` command: tor's command line, for the options oppy has.

``oppy -f torrc --SocksPort 9150`` works as it does for tor: the command line overrides the file,
and a list option given on the command line replaces the file's list (``--+SocksPort`` appends).
Without ``-f`` no torrc is read at all (not /etc/tor/torrc): only the defaults and the command line.
Errors are one line on stderr and exit status 1.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Sequence

from oppy import __version__
from oppy.config import (
    OPTION_NAMES,
    CommandLine,
    Config,
    ConfigError,
    config_from_command_line,
    option_type_name,
    parse_command_line,
)
from oppy.crypto.s2k import hash_password
from oppy.logs import configure_logging

__all__ = ["main", "USAGE"]

EXIT_OK = 0
EXIT_FAILURE = 1

USAGE = f"""\
usage: oppy [-f FILE] [--socks-port N] [--control-port N] [--data-directory DIR]
            [--log-level LEVEL] [--testing-tor-network] [--OptionName value ...]
       oppy --hash-password PASSWORD | --verify-config | --dump-config short|full
       oppy --list-torrc-options | --version | --help

oppy {__version__}: an onion-routing client proxy daemon (a Tor client).

  -f, --torrc-file FILE   read options from FILE, tor's torrc syntax ("-" reads standard input);
                          without it no torrc is read
  --socks-port N          same as --SocksPort N ([ADDR:]PORT, auto, or 0 for none; default 9050)
  --control-port N        same as --ControlPort N (default: none)
  --data-directory DIR    same as --DataDirectory DIR (default ~/.oppy)
  --log-level LEVEL       log LEVEL and above (debug, info, notice, warn, err) to every Log destination
  --testing-tor-network   same as --TestingTorNetwork 1 (needs DirAuthority lines)
  --OptionName value      any option oppy supports, as in a torrc (--+Option appends, --/Option clears)
  --hash-password PW      print the HashedControlPassword line for PW and exit
  --verify-config         check the configuration and exit
  --dump-config short|full  print the options that differ from their defaults (or all) and exit
  --list-torrc-options    list the options oppy supports and exit
  --version               print the version and exit
"""


def _fail(message: str) -> int:
    print(f"oppy: {message}", file=sys.stderr)
    return EXIT_FAILURE


def _run_daemon(config: Config) -> int:
    try:
        daemon = importlib.import_module("oppy.daemon")  # late: --help and friends work without it
    except ModuleNotFoundError as exc:
        if exc.name != "oppy.daemon":
            raise
        return _fail("this build of oppy has no daemon (oppy.daemon is missing)")
    return daemon.run(config)


def _configure_logs(config: Config) -> bool:
    try:
        configure_logging(config.logs, safe_logging=config.safe_logging)
    except OSError as exc:
        _fail(str(exc.strerror or exc))
        return False
    log = logging.getLogger("oppy.config")
    for warning in config.warnings:
        log.warning("%s", warning)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``oppy`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(args)
    except BrokenPipeError:  # `oppy --list-torrc-options | head`: the reader left, nothing is wrong
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


def _main(args: list[str]) -> int:
    try:
        command_line: CommandLine = parse_command_line(args)
    except ConfigError as exc:
        return _fail(str(exc))
    if command_line.help:
        print(USAGE, end="")
        return EXIT_OK
    if command_line.version:
        print(f"oppy version {__version__}.")
        return EXIT_OK
    if command_line.hash_password is not None:
        print(hash_password(command_line.hash_password))
        return EXIT_OK
    if command_line.list_torrc_options:
        for name in OPTION_NAMES:
            print(f"{name} {option_type_name(name)}")
        return EXIT_OK
    try:
        config = config_from_command_line(command_line)
    except ConfigError as exc:
        return _fail(str(exc))
    if command_line.verify_config:
        for warning in config.warnings:
            print(f"oppy: warning: {warning}", file=sys.stderr)
        print("Configuration was valid")
        return EXIT_OK
    if command_line.dump_config is not None:
        full = command_line.dump_config.lower() == "full"
        for line in config.to_torrc_lines(include_defaults=full):
            print(line)
        return EXIT_OK
    if not _configure_logs(config):
        return EXIT_FAILURE
    return _run_daemon(config)
