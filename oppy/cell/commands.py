"""The names the Tor specification gives to cell commands, relay commands and reasons.

Every number here is a protocol constant; each block names the spec section it comes from
(torspec `spec/tor-spec/*.md`).
"""

from enum import IntEnum

# tor-spec "Cell packet format": a fixed-length cell carries this many payload bytes.
CELL_PAYLOAD_LEN = 509
# tor-spec "Relay cells": command(1) recognized(2) stream_id(2) digest(4) length(2).
RELAY_HEADER_LEN = 11
# tor-spec "Relay cells": the most data one RELAY cell carries (509 - 11).
RELAY_PAYLOAD_LEN = CELL_PAYLOAD_LEN - RELAY_HEADER_LEN


class CellCommand(IntEnum):
    """tor-spec "Cell packet format": the command byte of a cell."""

    PADDING = 0
    CREATE = 1
    CREATED = 2
    RELAY = 3
    DESTROY = 4
    CREATE_FAST = 5
    CREATED_FAST = 6
    VERSIONS = 7
    NETINFO = 8
    RELAY_EARLY = 9
    CREATE2 = 10
    CREATED2 = 11
    PADDING_NEGOTIATE = 12
    VPADDING = 128
    CERTS = 129
    AUTH_CHALLENGE = 130
    AUTHENTICATE = 131
    AUTHORIZE = 132

    @property
    def is_variable_length(self) -> bool:
        """tor-spec "Cell packet format": VERSIONS and every command >= 128 are variable-length."""
        return is_variable_length_command(self)


def is_variable_length_command(command: int) -> bool:
    """True for the commands framed with a 2-byte length (VERSIONS, and 128 and up)."""
    return command == CellCommand.VERSIONS or command >= 128


class RelayCommand(IntEnum):
    """tor-spec "Relay cells": the command byte inside a relay cell."""

    BEGIN = 1
    DATA = 2
    END = 3
    CONNECTED = 4
    SENDME = 5
    EXTEND = 6
    EXTENDED = 7
    TRUNCATE = 8
    TRUNCATED = 9
    DROP = 10
    RESOLVE = 11
    RESOLVED = 12
    BEGIN_DIR = 13
    EXTEND2 = 14
    EXTENDED2 = 15
    CONFLUX_LINK = 19
    CONFLUX_LINKED = 20
    CONFLUX_LINKED_ACK = 21
    CONFLUX_SWITCH = 22
    ESTABLISH_INTRO = 32
    ESTABLISH_RENDEZVOUS = 33
    INTRODUCE1 = 34
    INTRODUCE2 = 35
    RENDEZVOUS1 = 36
    RENDEZVOUS2 = 37
    INTRO_ESTABLISHED = 38
    RENDEZVOUS_ESTABLISHED = 39
    INTRODUCE_ACK = 40
    PADDING_NEGOTIATE = 41
    PADDING_NEGOTIATED = 42
    XOFF = 43
    XON = 44


class EndReason(IntEnum):
    """tor-spec "Closing streams": the reason byte of a RELAY_END."""

    MISC = 1
    RESOLVEFAILED = 2
    CONNECTREFUSED = 3
    EXITPOLICY = 4
    DESTROY = 5
    DONE = 6
    TIMEOUT = 7
    NOROUTE = 8
    HIBERNATING = 9
    INTERNAL = 10
    RESOURCELIMIT = 11
    CONNRESET = 12
    TORPROTOCOL = 13
    NOTDIRECTORY = 14


class DestroyReason(IntEnum):
    """tor-spec "Tearing down circuits": the reason byte of a DESTROY or RELAY_TRUNCATED."""

    NONE = 0
    PROTOCOL = 1
    INTERNAL = 2
    REQUESTED = 3
    HIBERNATING = 4
    RESOURCELIMIT = 5
    CONNECTFAILED = 6
    OR_IDENTITY = 7
    CHANNEL_CLOSED = 8
    FINISHED = 9
    TIMEOUT = 10
    DESTROYED = 11
    NOSUCHSERVICE = 12


def reason_name(enum_type: type[IntEnum], value: int) -> str:
    """The spec name of a reason code, or `UNKNOWN(n)` for a code the spec does not list."""
    try:
        return enum_type(value).name
    except ValueError:
        return f"UNKNOWN({value})"
