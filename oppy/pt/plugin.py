"""``ClientTransportPlugin`` lines: which program (or which running proxy) provides which transports.

tor(1): ``ClientTransportPlugin transport socks4|socks5 IP:PORT`` names a transport proxy that runs on
its own (external); ``ClientTransportPlugin transport[,transport...] exec path-to-binary [options]``
a managed proxy that oppy launches itself (pt-spec). The checks are tor's (config.c
pt_parse_transport_line): at least three words, C-identifier transport names, one transport for an
external proxy, an IP address and a non-zero port.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from oppy.pt.protocol import TransportProtocolError, is_transport_name, split_address

__all__ = ["PluginKind", "TransportPlugin", "parse_transport_plugin_line"]


class PluginKind(enum.Enum):
    """The second word of the line."""

    EXEC = "exec"
    SOCKS4 = "socks4"
    SOCKS5 = "socks5"


@dataclass(frozen=True, slots=True)
class TransportPlugin:
    """One parsed line; ``line`` is the text as written (what GETCONF gives back)."""

    transports: tuple[str, ...]
    kind: PluginKind
    #: EXEC: the program and its arguments.
    argv: tuple[str, ...] = ()
    #: SOCKS4/SOCKS5: where the external proxy listens.
    host: str = ""
    port: int = 0
    line: str = ""

    @property
    def managed(self) -> bool:
        return self.kind is PluginKind.EXEC


def parse_transport_plugin_line(line: str) -> TransportPlugin:
    """Parse a ``ClientTransportPlugin`` value; :class:`TransportProtocolError` names what is wrong."""
    words = line.split()
    if len(words) < 3:
        raise TransportProtocolError("too few arguments (expected 'TRANSPORT[,...] exec PATH [ARGS]' or "
                                     "'TRANSPORT socks5 IP:PORT')")
    transports = tuple(name.strip() for name in words[0].split(",") if name.strip())
    if not transports:
        raise TransportProtocolError("no transport name")
    for name in transports:
        if not is_transport_name(name):
            raise TransportProtocolError(f"transport name '{name}' is not a C identifier")
    try:
        kind = PluginKind(words[1])
    except ValueError:
        raise TransportProtocolError(f"unknown type '{words[1]}' (expected exec, socks4 or socks5)") from None
    if kind is PluginKind.EXEC:
        return TransportPlugin(transports, kind, argv=tuple(words[2:]), line=line)
    if len(transports) != 1:
        raise TransportProtocolError("an external proxy provides exactly one transport")
    if len(words) != 3:
        raise TransportProtocolError(f"unexpected '{words[3]}' after the proxy's address")
    host, port = split_address(words[2])
    return TransportPlugin(transports, kind, host=host, port=port, line=line)

