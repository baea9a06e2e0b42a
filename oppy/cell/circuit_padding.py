"""Circuit-padding negotiation messages: the bodies of RELAY_COMMAND_PADDING_NEGOTIATE (41, client to a relay)
and PADDING_NEGOTIATED (42, the relay's answer).

padding-spec "Circuit Padding Negotiation"; tor src/trunnel/circpad_negotiation.trunnel:

    struct circpad_negotiate  { u8 version IN [0]; u8 command IN [STOP, START]; u8 machine_type;
                                u8 echo_request IN [0, 1]; u32 machine_ctr; }
    struct circpad_negotiated { u8 version IN [0]; u8 command IN [STOP, START]; u8 response IN [OK, ERR];
                                u8 machine_type; u32 machine_ctr; }

`machine_ctr` tells the machines negotiated on one circuit apart (a STOP for an old machine must not stop a
newer one); 0 means "any machine".
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from oppy.cell.errors import CellParseError

__all__ = ["PaddingCommand", "PaddingResponse", "PaddingNegotiate", "PaddingNegotiated",
           "encode_padding_negotiate", "decode_padding_negotiate", "encode_padding_negotiated",
           "decode_padding_negotiated"]

#: circpad_negotiation.trunnel: the only version.
CIRCPAD_VERSION = 0

# version, command, machine_type, echo_request, machine_ctr
_NEGOTIATE = struct.Struct(">BBBBI")
# version, command, response, machine_type, machine_ctr
_NEGOTIATED = struct.Struct(">BBBBI")


class PaddingCommand(enum.IntEnum):
    """circpad_negotiation.trunnel CIRCPAD_COMMAND_*."""

    STOP = 1
    START = 2


class PaddingResponse(enum.IntEnum):
    """circpad_negotiation.trunnel CIRCPAD_RESPONSE_*."""

    OK = 1
    ERR = 2


@dataclass(frozen=True, slots=True)
class PaddingNegotiate:
    command: PaddingCommand
    machine_type: int
    machine_ctr: int
    echo_request: bool = False


@dataclass(frozen=True, slots=True)
class PaddingNegotiated:
    command: PaddingCommand
    response: PaddingResponse
    machine_type: int
    machine_ctr: int


def _check_fields(machine_type: int, machine_ctr: int) -> None:
    if not 0 <= machine_type <= 0xFF or not 0 <= machine_ctr <= 0xFFFFFFFF:
        raise ValueError("machine_type is a u8 and machine_ctr a u32")


def encode_padding_negotiate(message: PaddingNegotiate) -> bytes:
    _check_fields(message.machine_type, message.machine_ctr)
    return _NEGOTIATE.pack(CIRCPAD_VERSION, PaddingCommand(message.command), message.machine_type,
                           int(message.echo_request), message.machine_ctr)


def encode_padding_negotiated(message: PaddingNegotiated) -> bytes:
    _check_fields(message.machine_type, message.machine_ctr)
    return _NEGOTIATED.pack(CIRCPAD_VERSION, PaddingCommand(message.command), PaddingResponse(message.response),
                            message.machine_type, message.machine_ctr)


def _unpack(layout: struct.Struct, data: bytes, what: str) -> tuple[int, ...]:
    # Trunnel parses a prefix: what follows the struct in the relay body is ignored.
    if len(data) < layout.size:
        raise CellParseError(f"{what} body is {len(data)} bytes, needs {layout.size}")
    fields = layout.unpack_from(data)
    if fields[0] != CIRCPAD_VERSION:
        raise CellParseError(f"{what} has unknown version {fields[0]}")
    if fields[1] not in PaddingCommand._value2member_map_:
        raise CellParseError(f"{what} has unknown command {fields[1]}")
    return fields


def decode_padding_negotiate(data: bytes) -> PaddingNegotiate:
    _, command, machine_type, echo, ctr = _unpack(_NEGOTIATE, data, "PADDING_NEGOTIATE")
    if echo not in (0, 1):
        raise CellParseError(f"PADDING_NEGOTIATE has echo_request {echo}, not 0 or 1")
    return PaddingNegotiate(PaddingCommand(command), machine_type, ctr, bool(echo))


def decode_padding_negotiated(data: bytes) -> PaddingNegotiated:
    _, command, response, machine_type, ctr = _unpack(_NEGOTIATED, data, "PADDING_NEGOTIATED")
    if response not in PaddingResponse._value2member_map_:
        raise CellParseError(f"PADDING_NEGOTIATED has unknown response {response}")
    return PaddingNegotiated(PaddingCommand(command), PaddingResponse(response), machine_type, ctr)
