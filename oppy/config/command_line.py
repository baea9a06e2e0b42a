"""tor's command line: command-line-only options (``-f``, ``--hash-password``, ``--verify-config``...),
and ``--Option value`` for any torrc option.

Reference: tor(1) "COMMAND-LINE OPTIONS".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from oppy.config.options import Config, ConfigSource, canonical_option_name, load_config_from_source
from oppy.config.torrc import ConfigLine, LineCommand
from oppy.config.values import ConfigError, ascii_lower, shortened
from oppy.logs import SEVERITIES

__all__ = [
    "CommandLine",
    "parse_command_line",
    "config_from_command_line",
    "load_config",
]

# Command-line-only options (tor(1) COMMAND-LINE OPTIONS, plus oppy's friendlier spellings): name ->
# takes a value.
_ACTIONS_WITH_VALUE = {"-f": "torrc_file", "--torrc-file": "torrc_file", "--hash-password": "hash_password",
                       "--dump-config": "dump_config", "--log-level": "log_level"}
_ACTIONS_WITHOUT_VALUE = {"-h": "help", "--help": "help", "--version": "version",
                          "--verify-config": "verify_config", "--list-torrc-options": "list_torrc_options"}
# oppy's spellings of common options: --socks-port N is --SocksPort N.
_OPTION_ALIASES = {"--socks-port": "SocksPort", "--control-port": "ControlPort",
                   "--data-directory": "DataDirectory"}
_FLAG_ALIASES = {"--testing-tor-network": ("TestingTorNetwork", "1")}


@dataclass
class CommandLine:
    """The command line, split into what oppy should do and the option lines it sets."""

    torrc_file: str | None = None
    option_lines: list[ConfigLine] = field(default_factory=list)
    log_level: str | None = None
    help: bool = False
    version: bool = False
    verify_config: bool = False
    list_torrc_options: bool = False
    hash_password: str | None = None
    dump_config: str | None = None


def parse_command_line(argv: Sequence[str]) -> CommandLine:
    """Read ``argv`` (without the program name) the way tor reads its own: command-line-only options,
    then ``--Option value`` (or ``Option value``, ``--+Option value``, ``--/Option``) for any option."""
    result = CommandLine()
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in _ACTIONS_WITHOUT_VALUE:
            setattr(result, _ACTIONS_WITHOUT_VALUE[arg], True)
            continue
        if arg == "--dump-config" and (i >= len(args) or args[i].startswith("-")):
            result.dump_config = "short"  # tor: the argument is optional
            continue
        if arg in _FLAG_ALIASES:
            key, value = _FLAG_ALIASES[arg]
            result.option_lines.append(ConfigLine(key, value))
            continue
        key = arg[2:] if arg.startswith("--") else arg
        if key.startswith("/"):
            result.option_lines.append(ConfigLine(canonical_option_name(key[1:]), "", LineCommand.CLEAR))
            continue
        command = LineCommand.NORMAL
        if key.startswith("+"):
            key, command = key[1:], LineCommand.APPEND
        if arg not in _ACTIONS_WITH_VALUE and arg not in _OPTION_ALIASES:
            key = canonical_option_name(key)  # an unknown name fails before a missing value does
        if i >= len(args):
            raise ConfigError(f"Command-line option '{arg}' with no value. Failing.", option=arg)
        value = args[i]
        i += 1
        if arg in _ACTIONS_WITH_VALUE:
            setattr(result, _ACTIONS_WITH_VALUE[arg], value)
        elif arg in _OPTION_ALIASES:
            result.option_lines.append(ConfigLine(_OPTION_ALIASES[arg], value))
        else:
            result.option_lines.append(ConfigLine(key, value, command))
    if result.log_level is not None and ascii_lower(result.log_level) not in SEVERITIES:
        raise ConfigError(f"Unknown log level '{shortened(result.log_level)}' for --log-level (expected one of "
                          f"{', '.join(SEVERITIES)})", option="--log-level", value=result.log_level)
    if result.dump_config is not None and ascii_lower(result.dump_config) not in ("short", "full"):
        raise ConfigError(f"Unrecognized value '{shortened(result.dump_config)}' for --dump-config (expected short "
                          "or full)",
                          option="--dump-config", value=result.dump_config)
    return result


def config_from_command_line(command_line: CommandLine) -> Config:
    return load_config_from_source(ConfigSource(command_line.torrc_file, tuple(command_line.option_lines),
                                                command_line.log_level))


def load_config(argv: Sequence[str]) -> Config:
    """The Config that ``oppy ARGV`` runs with (command-line-only options such as --version are ignored)."""
    return config_from_command_line(parse_command_line(argv))
