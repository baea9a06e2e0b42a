"""oppy's configuration: tor's torrc syntax, tor's option names, tor's defaults.

Modules, bottom to top: :mod:`~oppy.config.values` (the error types, strict numbers, ASCII helpers),
:mod:`~oppy.config.torrc` (the torrc lexer, ``%include``, quoting), :mod:`~oppy.config.bridges` (Bridge
lines), :mod:`~oppy.config.options` (the value types, the option table, Config, loading and reloading)
and :mod:`~oppy.config.command_line` (tor's command line). The public names are re-exported here:
``from oppy.config import Config`` is all most callers need.
"""

from oppy.config.bridges import BridgeLine, is_transport_name, parse_bridge_line
from oppy.config.command_line import CommandLine, config_from_command_line, load_config, parse_command_line
from oppy.config.options import (
    AUTO_PORT,
    DEFAULT_LONG_LIVED_PORTS,
    DEFAULT_SOCKS_FLAGS,
    ISOLATION_FLAGS,
    OPTION_NAMES,
    Config,
    ConfigSource,
    PortConfig,
    canonical_option_name,
    config_from_lines,
    config_from_torrc_text,
    load_config_from_source,
    option_type_name,
    parse_interval,
    parse_memunit,
    reload_config,
)
from oppy.config.torrc import ConfigLine, LineCommand, parse_torrc_text, quote_value, read_torrc_file
from oppy.config.values import ConfigError, UnknownOptionError, ascii_lower, parse_decimal
from oppy.logs import SEVERITIES, LogSpec

__all__ = [
    # oppy.config.bridges
    "BridgeLine",
    "is_transport_name",
    "parse_bridge_line",
    # oppy.config.command_line
    "CommandLine",
    "config_from_command_line",
    "load_config",
    "parse_command_line",
    # oppy.config.options
    "AUTO_PORT",
    "DEFAULT_LONG_LIVED_PORTS",
    "DEFAULT_SOCKS_FLAGS",
    "ISOLATION_FLAGS",
    "OPTION_NAMES",
    "Config",
    "ConfigSource",
    "PortConfig",
    "canonical_option_name",
    "config_from_lines",
    "config_from_torrc_text",
    "load_config_from_source",
    "option_type_name",
    "parse_interval",
    "parse_memunit",
    "reload_config",
    # oppy.config.torrc
    "ConfigLine",
    "LineCommand",
    "parse_torrc_text",
    "quote_value",
    "read_torrc_file",
    # oppy.config.values
    "ConfigError",
    "UnknownOptionError",
    "ascii_lower",
    "parse_decimal",
    # oppy.logs
    "SEVERITIES",
    "LogSpec",
]
