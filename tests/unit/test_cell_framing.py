"""Cell framing: encode_cell, encode_versions_cell and CellReader (tor-spec "Cell packet format")."""

import pytest

from oppy.cell.commands import CELL_PAYLOAD_LEN, CellCommand, is_variable_length_command
from oppy.cell.framing import (
    LINK_VERSION_UNNEGOTIATED,
    Cell,
    CellReader,
    circ_id_len,
    encode_cell,
    encode_versions_cell,
)
from oppy.cell.link import encode_versions_body

CLIENT_CIRC_ID = 0x80000001


def test_client_versions_cell_has_the_checklist_bytes():
    assert encode_versions_cell([3, 4, 5]) == bytes.fromhex("00 00 07 00 06 00 03 00 04 00 05")


def test_versions_cell_keeps_two_byte_circ_id_even_offering_only_wide_versions():
    assert encode_versions_cell([4, 5]) == bytes.fromhex("0000 07 0004 0004 0005")


@pytest.mark.parametrize(
    ("link_version", "width"), [(LINK_VERSION_UNNEGOTIATED, 2), (3, 2), (4, 4), (5, 4)]
)
def test_circ_id_width_follows_link_version(link_version, width):
    assert circ_id_len(link_version) == width


def test_fixed_cell_on_link_4_is_514_bytes_zero_padded():
    wire = encode_cell(CLIENT_CIRC_ID, CellCommand.DESTROY, b"\x00", 4)
    assert len(wire) == 514
    assert wire[:5] == bytes.fromhex("80000001 04")
    assert wire[5:] == bytes(CELL_PAYLOAD_LEN)


def test_fixed_cell_on_link_3_is_512_bytes():
    wire = encode_cell(0x8001, CellCommand.CREATE_FAST, b"\xaa" * 20, 3)
    assert len(wire) == 512
    assert wire[:3] == bytes.fromhex("8001 05")
    assert wire[3:23] == b"\xaa" * 20
    assert wire[23:] == bytes(CELL_PAYLOAD_LEN - 20)


def test_full_fixed_payload_is_sent_as_is():
    payload = bytes(range(256)) + bytes(range(253))
    wire = encode_cell(7, CellCommand.RELAY, payload, 4)
    assert wire == bytes.fromhex("00000007 03") + payload


def test_fixed_cell_accepts_a_bytearray_payload():
    payload = bytearray(b"\x01" * CELL_PAYLOAD_LEN)
    assert encode_cell(1, CellCommand.RELAY, payload, 5)[5:] == bytes(payload)


def test_variable_cell_on_link_4_has_length_and_no_padding():
    wire = encode_cell(0, CellCommand.VPADDING, b"abc", 4)
    assert wire == bytes.fromhex("00000000 80 0003") + b"abc"


def test_variable_cell_on_link_3_has_two_byte_circ_id():
    assert encode_cell(0, CellCommand.CERTS, b"", 3) == bytes.fromhex("0000 81 0000")


def test_versions_command_is_variable_and_widens_after_negotiation():
    wire = encode_cell(0, CellCommand.VERSIONS, encode_versions_body([4]), 4)
    assert wire == bytes.fromhex("00000000 07 0002 0004")


@pytest.mark.parametrize(
    ("command", "variable"),
    [(0, False), (3, False), (7, True), (12, False), (127, False), (128, True), (132, True), (255, True)],
)
def test_variable_length_commands_get_a_length_field(command, variable):
    assert is_variable_length_command(command) is variable
    assert len(encode_cell(0, command, b"", 4)) == (7 if variable else 514)


def test_fixed_payload_longer_than_509_is_refused():
    with pytest.raises(ValueError):
        encode_cell(1, CellCommand.RELAY, bytes(510), 4)


@pytest.mark.parametrize(
    ("circ_id", "link_version"), [(0x10000, 3), (0x100000000, 4), (-1, 4), (0x10000, LINK_VERSION_UNNEGOTIATED)]
)
def test_circ_id_out_of_range_is_refused(circ_id, link_version):
    with pytest.raises(ValueError):
        encode_cell(circ_id, CellCommand.PADDING, b"", link_version)
    with pytest.raises(ValueError):
        encode_cell(circ_id, CellCommand.VPADDING, b"", link_version)


def test_variable_payload_over_65535_is_refused():
    with pytest.raises(ValueError):
        encode_cell(0, CellCommand.VPADDING, bytes(0x10000), 4)


def test_versions_out_of_range_is_refused():
    with pytest.raises(ValueError):
        encode_versions_cell([0x10000])


# --- CellReader ---------------------------------------------------------------------------


def handshake_stream(link_version):
    """What a relay sends: VERSIONS in 2-byte framing, then cells framed for `link_version`."""
    circ_id = CLIENT_CIRC_ID if link_version >= 4 else 0x8001
    after = [
        Cell(0, CellCommand.CERTS, b"\x00"),
        Cell(0, CellCommand.VPADDING, b""),
        Cell(0, CellCommand.AUTH_CHALLENGE, bytes(32) + b"\x00\x01\x00\x03"),
        Cell(0, CellCommand.NETINFO, b"\x01\x02" + bytes(CELL_PAYLOAD_LEN - 2)),
        Cell(circ_id, CellCommand.CREATED_FAST, b"\x55" * CELL_PAYLOAD_LEN),
        Cell(circ_id, 50, b"\x66" * CELL_PAYLOAD_LEN),  # unknown fixed command: still framed
        Cell(circ_id, 200, b"unknown variable"),  # unknown variable command
        Cell(circ_id, CellCommand.VERSIONS, b"\x00\x05"),  # a late VERSIONS, in wide framing
        Cell(circ_id, CellCommand.RELAY, bytes(range(256)) + bytes(range(253))),
    ]
    versions = Cell(0, CellCommand.VERSIONS, encode_versions_body([3, 4, 5]))
    wire = encode_versions_cell([3, 4, 5]) + b"".join(
        encode_cell(c.circ_id, c.command, c.payload, link_version) for c in after
    )
    return wire, [versions, *after]


def read_like_a_link(chunks, link_version):
    """Feed chunks, switching framing right after the first VERSIONS, as the link layer does."""
    reader = CellReader()
    cells = []

    def take(new_cells):
        for cell in new_cells:
            cells.append(cell)
            if cell.command == CellCommand.VERSIONS and reader.link_version == LINK_VERSION_UNNEGOTIATED:
                take(reader.set_link_version(link_version))

    for chunk in chunks:
        take(reader.feed(chunk))
    return cells, reader


@pytest.mark.parametrize("link_version", [3, 4, 5])
def test_reader_handles_every_split_point(link_version):
    wire, expected = handshake_stream(link_version)
    for split in range(len(wire) + 1):
        cells, reader = read_like_a_link([wire[:split], wire[split:]], link_version)
        assert cells == expected, split
        assert reader.buffered == 0


@pytest.mark.parametrize("link_version", [3, 4])
def test_reader_handles_every_pair_of_split_points_around_the_versions_cell(link_version):
    wire, expected = handshake_stream(link_version)
    for first in range(0, 40):
        for second in range(first, 60):
            chunks = [wire[:first], wire[first:second], wire[second:]]
            assert read_like_a_link(chunks, link_version)[0] == expected


def test_reader_handles_one_byte_at_a_time():
    wire, expected = handshake_stream(4)
    cells, reader = read_like_a_link([wire[i : i + 1] for i in range(len(wire))], 4)
    assert cells == expected
    assert reader.buffered == 0


def test_reader_holds_cells_after_versions_until_the_link_version_is_set():
    wire, expected = handshake_stream(4)
    reader = CellReader()
    assert reader.feed(wire) == expected[:1]
    assert reader.buffered == len(wire) - 11
    assert reader.feed(b"") == []  # still held: the framing is not known yet
    assert reader.set_link_version(4) == expected[1:]
    assert reader.buffered == 0
    assert reader.link_version == 4


def test_reader_accepts_vpadding_before_versions_in_narrow_framing():
    reader = CellReader()
    wire = encode_cell(0, CellCommand.VPADDING, b"xy", LINK_VERSION_UNNEGOTIATED) + encode_versions_cell([4])
    assert reader.feed(wire) == [
        Cell(0, CellCommand.VPADDING, b"xy"),
        Cell(0, CellCommand.VERSIONS, b"\x00\x04"),
    ]


def test_reader_returns_payload_as_bytes_and_accepts_any_buffer_type():
    reader = CellReader()
    reader.feed(encode_versions_cell([4]))
    reader.set_link_version(4)
    wire = encode_cell(5, CellCommand.DESTROY, b"\x03", 4)
    cells = reader.feed(bytearray(wire[:100])) + reader.feed(memoryview(wire)[100:])
    assert cells == [Cell(5, CellCommand.DESTROY, b"\x03" + bytes(508))]
    assert type(cells[0].payload) is bytes


def test_reader_keeps_a_partial_cell_and_completes_it_later():
    reader = CellReader()
    reader.feed(encode_versions_cell([4]))
    reader.set_link_version(4)
    wire = encode_cell(9, CellCommand.PADDING, b"", 4) * 3
    assert len(reader.feed(wire[:1000])) == 1
    assert reader.buffered == 1000 - 514
    assert len(reader.feed(wire[1000:])) == 2
    assert reader.buffered == 0


def test_reader_reassembles_a_maximal_variable_cell_fed_in_small_pieces():
    reader = CellReader()
    reader.feed(encode_versions_cell([4]))
    reader.set_link_version(4)
    payload = bytes(range(256)) * 255 + bytes(range(255))  # 65535 bytes
    wire = encode_cell(0, CellCommand.VPADDING, payload, 4)
    cells = []
    for start in range(0, len(wire), 97):
        cells += reader.feed(wire[start : start + 97])
    assert cells == [Cell(0, CellCommand.VPADDING, payload)]


def test_reader_parses_many_cells_from_one_feed():
    reader = CellReader()
    reader.feed(encode_versions_cell([5]))
    reader.set_link_version(5)
    wire = b"".join(encode_cell(i + 1, CellCommand.RELAY, bytes([i]) * 509, 5) for i in range(200))
    cells = reader.feed(wire + wire[:10])
    assert [c.circ_id for c in cells] == list(range(1, 201))
    assert all(c.payload == bytes([i]) * 509 for i, c in enumerate(cells))
    assert reader.buffered == 10


@pytest.mark.parametrize("bad_version", [0, 1, 2])
def test_set_link_version_refuses_versions_before_3(bad_version):
    with pytest.raises(ValueError):
        CellReader().set_link_version(bad_version)


def test_set_link_version_refuses_a_second_call():
    reader = CellReader()
    reader.set_link_version(4)
    with pytest.raises(ValueError):
        reader.set_link_version(5)
