"""Fuzz targets for cell framing and relay message decoding: bytes from relays.

Every decoder answers a value or CellParseError; CellReader splits any byte stream the same way however
it is cut; a relay cell's payload, decoded and then decoded by its command, is a message or
CellParseError.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from oppy.cell import link, relay
from oppy.cell.commands import CELL_PAYLOAD_LEN, CellCommand, RelayCommand
from oppy.cell.errors import CellParseError
from oppy.cell.framing import LINK_VERSION_UNNEGOTIATED, CellReader, encode_cell, encode_versions_cell
from tests.unit.fuzz.budget import FUZZ
from tests.unit.fuzz.strategies import chunked, cuts, mutated, seeds_mutated_or_random
from tests.unit.test_cell_properties import DECODERS, decode_or_parse_error


@FUZZ
@given(name=st.sampled_from(sorted(DECODERS)), data=st.binary(max_size=CELL_PAYLOAD_LEN + 8))
def test_decoders_raise_only_cell_parse_error_on_random_bytes(name, data):
    decoder, _ = DECODERS[name]
    decode_or_parse_error(decoder, data)


@FUZZ
@given(name=st.sampled_from(sorted(DECODERS)), choice=st.data())
def test_decoders_raise_only_cell_parse_error_on_mutated_bytes(name, choice):
    decoder, examples = DECODERS[name]
    example = choice.draw(mutated(examples))
    decode_or_parse_error(decoder, example)
    decode_or_parse_error(decoder, memoryview(example))


# --------------------------------------------------------------------------- framing

_LINK_VERSION = 5
SEED_STREAMS: tuple[bytes, ...] = (
    encode_versions_cell([3, 4, 5])
    + encode_cell(0, CellCommand.CERTS, DECODERS["certs"][1][0], _LINK_VERSION)
    + encode_cell(0, CellCommand.AUTH_CHALLENGE, DECODERS["auth_challenge"][1][0], _LINK_VERSION)
    + encode_cell(0, CellCommand.NETINFO, DECODERS["netinfo"][1][0], _LINK_VERSION),
    encode_versions_cell([4])
    + encode_cell(0x80000001, CellCommand.CREATED2, DECODERS["created2"][1][0], 4)
    + encode_cell(0x80000001, CellCommand.RELAY, bytes(relay.encode_relay_payload(2, 1, b"data")), 4)
    + encode_cell(0x80000001, CellCommand.DESTROY, DECODERS["destroy"][1][0], 4),
    encode_versions_cell([3]) + encode_cell(7, CellCommand.PADDING, b"", 3)
    + encode_cell(7, CellCommand.VPADDING, b"x", 3),
)


def _read(pieces: list[bytes]):
    """What a channel gets from CellReader for ``pieces``: the cells, and how the stream ended ("ok",
    "refused" when the first cell is not a usable VERSIONS cell, "error" on CellParseError)."""
    reader = CellReader()
    cells = []
    try:
        for piece in pieces:
            for cell in reader.feed(piece):
                cells.append(cell)
                if reader.link_version != LINK_VERSION_UNNEGOTIATED:
                    continue
                if cell.command != CellCommand.VERSIONS:
                    return cells, "refused", reader  # the link handshake fails
                common = [version for version in link.decode_versions_body(cell.payload) if 3 <= version <= 5]
                if not common:
                    return cells, "refused", reader
                cells.extend(reader.set_link_version(max(common)))  # as the channel does
    except CellParseError:
        return cells, "error", reader
    return cells, "ok", reader


@FUZZ
@given(wire=seeds_mutated_or_random(SEED_STREAMS, max_random=1200), cut_points=cuts)
def test_reader_splits_any_stream_the_same_however_it_is_cut(wire, cut_points):
    whole, whole_end, _ = _read([wire])
    cut, cut_end, reader = _read(chunked(wire, cut_points))
    assert cut_end == whole_end
    if whole_end == "error":  # cells completed by earlier pieces came out before the bad one
        assert cut[:len(whole)] == whole
    else:
        assert cut == whole
    if cut_end == "ok":
        assert reader.buffered <= len(wire)


# --------------------------------------------------------------------------- relay messages

# The relay commands with a body decoder (named as in test_cell_properties.DECODERS).
_DECODER_NAMES = {RelayCommand.BEGIN: "begin", RelayCommand.CONNECTED: "connected", RelayCommand.END: "end",
                  RelayCommand.RESOLVE: "resolve", RelayCommand.RESOLVED: "resolved",
                  RelayCommand.SENDME: "sendme", RelayCommand.EXTEND2: "extend2",
                  RelayCommand.EXTENDED2: "extended2", RelayCommand.TRUNCATED: "truncated",
                  RelayCommand.XOFF: "xoff", RelayCommand.XON: "xon",
                  RelayCommand.PADDING_NEGOTIATE: "padding_negotiate",
                  RelayCommand.PADDING_NEGOTIATED: "padding_negotiated"}
BODY_DECODERS = {command: DECODERS[name][0] for command, name in _DECODER_NAMES.items()}
SEED_PAYLOADS: tuple[bytes, ...] = tuple(
    bytes(relay.encode_relay_payload(command, 1, body))
    for command, name in _DECODER_NAMES.items() for body in DECODERS[name][1]
)


@FUZZ
@given(payload=seeds_mutated_or_random(SEED_PAYLOADS, max_random=CELL_PAYLOAD_LEN + 8))
def test_relay_payloads_decode_to_a_message_or_cell_parse_error(payload):
    try:
        command, _stream_id, body = relay.decode_relay_payload(payload)
    except CellParseError:
        return
    decoder = BODY_DECODERS.get(command)
    if decoder is not None:
        decode_or_parse_error(decoder, body)
