"""Cell framing: cells to bytes and bytes (in any fragmentation) to cells.

tor-spec "Cell packet format" (tor-spec.txt §3):

    fixed cell:    CircID(2 or 4) Command(1) Payload(509, zero-padded)
    variable cell: CircID(2 or 4) Command(1) Length(2) Payload(Length)

CircID is 2 bytes on link versions below 4 and 4 bytes from version 4 on. The first VERSIONS
cell, and anything sent before it, always uses the 2-byte form ("VERSIONS framing"). VERSIONS
(7) and every command >= 128 are variable-length on link version 3 and later; oppy speaks no
older link version.

Sans-IO: no sockets here. :class:`CellReader` is fed whatever TLS delivered and returns the
cells completed so far.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from oppy.cell.commands import CELL_PAYLOAD_LEN, CellCommand
from oppy.cell.link import encode_versions_body

# tor-spec §3: CIRCID_LEN is 2 for link versions 1-3 and 4 from version 4 on.
NARROW_CIRC_ID_LEN = 2
WIDE_CIRC_ID_LEN = 4
FIRST_WIDE_CIRC_ID_LINK_VERSION = 4
# tor-spec §4.1: the oldest link version with the in-protocol handshake (the only one oppy speaks).
MIN_LINK_VERSION = 3
# Pass as link_version before VERSIONS has been negotiated: narrow (2-byte) circ IDs.
LINK_VERSION_UNNEGOTIATED = 0
# tor-spec §3: a variable-length cell carries a 2-byte big-endian Length.
VAR_CELL_LENGTH_LEN = 2
VAR_CELL_MAX_PAYLOAD_LEN = 0xFFFF

_VERSIONS = int(CellCommand.VERSIONS)
# tor-spec §3: on link >= 3, commands 128 and up are variable-length (as is VERSIONS); this is
# commands.is_variable_length_command, inlined on the per-cell path.
_FIRST_VAR_COMMAND = 128
# `run_command` for a parse that gathers no runs (no command byte is negative).
_NO_RUNS = -1

_NARROW_HEADER = struct.Struct(">HB")
_WIDE_HEADER = struct.Struct(">IB")
_NARROW_VAR_HEADER = struct.Struct(">HBH")
_WIDE_VAR_HEADER = struct.Struct(">IBH")
_LENGTH = struct.Struct(">H")
_ZERO_PADDING = bytes(CELL_PAYLOAD_LEN)
# NamedTuple's generated __new__ is a Python function; the reader builds cells through
# tuple.__new__ instead (about 100 ns less per cell).
_new_tuple = tuple.__new__


class Cell(NamedTuple):
    """One cell off the wire. `command` is a plain int: unknown commands are framed too."""

    circ_id: int
    command: int
    payload: bytes


def circ_id_len(link_version: int) -> int:
    """CIRCID_LEN for a negotiated link version (2 before negotiation and below version 4)."""
    if link_version >= FIRST_WIDE_CIRC_ID_LINK_VERSION:
        return WIDE_CIRC_ID_LEN
    return NARROW_CIRC_ID_LEN


def encode_cell(circ_id: int, command: int, payload: bytes, link_version: int) -> bytes:
    """The wire bytes of one cell.

    Fixed-length payloads shorter than 509 bytes are zero-padded (RELAY payloads come
    already padded to 509 by :func:`oppy.cell.relay.encode_relay_payload`). Pass
    LINK_VERSION_UNNEGOTIATED (or 3) to get 2-byte circ IDs.
    """
    wide = link_version >= FIRST_WIDE_CIRC_ID_LINK_VERSION
    try:
        if command == _VERSIONS or command >= _FIRST_VAR_COMMAND:
            header = (_WIDE_VAR_HEADER if wide else _NARROW_VAR_HEADER).pack(
                circ_id, command, len(payload)
            )
            return header + payload
        header = (_WIDE_HEADER if wide else _NARROW_HEADER).pack(circ_id, command)
    except struct.error:
        raise ValueError(
            f"cannot frame cell: circ_id={circ_id!r} command={command!r} "
            f"payload length={len(payload)} link version={link_version}"
        ) from None
    short = CELL_PAYLOAD_LEN - len(payload)
    if short == 0:
        return header + payload
    if short < 0:
        raise ValueError(f"fixed-length cell payload is {len(payload)} bytes, more than 509")
    return b"".join((header, payload, _ZERO_PADDING[:short]))


def encode_fixed_cells(circ_id: int, command: int, payloads: bytes | bytearray, link_version: int) -> bytearray:
    """The wire bytes of several fixed-length cells with one circ ID and command.

    `payloads` holds the 509-byte payloads back to back (as the relay crypto encrypts them in one go);
    the header is packed once.
    """
    if command == _VERSIONS or command >= _FIRST_VAR_COMMAND:
        raise ValueError(f"command {command} is variable-length")
    if len(payloads) % CELL_PAYLOAD_LEN:
        raise ValueError(f"{len(payloads)} bytes are not a whole number of 509-byte payloads")
    try:
        header = (_WIDE_HEADER if link_version >= FIRST_WIDE_CIRC_ID_LINK_VERSION else _NARROW_HEADER).pack(
            circ_id, command)
    except struct.error:
        raise ValueError(f"cannot frame cells: circ_id={circ_id!r} command={command!r}") from None
    framed = bytearray()
    with memoryview(payloads) as view:
        for offset in range(0, len(payloads), CELL_PAYLOAD_LEN):
            framed += header
            framed += view[offset:offset + CELL_PAYLOAD_LEN]
    return framed


def encode_versions_cell(versions: list[int] | tuple[int, ...]) -> bytes:
    """The first VERSIONS cell: circ ID 0 in the 2-byte form, whatever versions are offered.

    The client's usual cell, offering 3, 4 and 5, is `00 00 07 00 06 00 03 00 04 00 05`.
    """
    return encode_cell(0, _VERSIONS, encode_versions_body(versions), LINK_VERSION_UNNEGOTIATED)


class CellReader:
    """Splits a byte stream into cells, whatever the fragmentation.

    It starts in VERSIONS framing (2-byte circ IDs). In that state it stops after the first
    VERSIONS cell it returns and holds everything after it, because the peer frames those
    cells with the negotiated width; :meth:`set_link_version` then releases them.

    Each :meth:`feed` parses every complete cell at once and keeps only the unfinished tail,
    so the work per byte stays constant however the data is split.
    """

    __slots__ = ("_buffer", "_header_len", "_header", "_link_version", "_held")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._link_version = LINK_VERSION_UNNEGOTIATED
        self._held = False  # VERSIONS seen, waiting for set_link_version
        self._use_width(NARROW_CIRC_ID_LEN)

    def _use_width(self, width: int) -> None:
        self._header_len = width + 1  # circ id + command
        self._header = _WIDE_HEADER if width == WIDE_CIRC_ID_LEN else _NARROW_HEADER

    @property
    def link_version(self) -> int:
        """The link version the reader frames with (LINK_VERSION_UNNEGOTIATED before it is set)."""
        return self._link_version

    @property
    def buffered(self) -> int:
        """How many bytes are waiting for the rest of their cell (or for the link version)."""
        return len(self._buffer)

    def set_link_version(self, link_version: int) -> list[Cell]:
        """Switch to the negotiated framing and return the cells held back since VERSIONS.

        The caller must act on the returned cells: they arrived right after VERSIONS (CERTS,
        AUTH_CHALLENGE, NETINFO usually come in the same TLS record).
        """
        if link_version < MIN_LINK_VERSION:
            raise ValueError(f"link version {link_version} is not supported (need >= 3)")
        if self._link_version != LINK_VERSION_UNNEGOTIATED:
            raise ValueError("the link version is already set")
        self._link_version = link_version
        self._held = False
        self._use_width(circ_id_len(link_version))
        return self.feed(b"")

    def feed(self, data: bytes | bytearray | memoryview) -> list[Cell]:
        """Add bytes from the peer; return every cell they complete, in order (maybe none).

        Cell by cell, for the link handshake; once the link is open the channel reads with `feed_runs`.
        """
        if self._held:
            self._buffer += data
            return []
        return [_new_tuple(Cell, entry[:3]) for entry in self._feed(data, _NO_RUNS)]

    def feed_runs(self, data: bytes | bytearray | memoryview, run_command: int) -> list[tuple[int, int, bytes, int]]:
        """`feed`, with consecutive `run_command` cells for one circuit gathered into one entry.

        Entries are (circ_id, command, payload, count): count is 1 for a single cell, and for a run of
        `count` fixed-length `run_command` cells on one circ ID the payload is their 509-byte payloads back
        to back (what the relay crypto decrypts in one pass per layer). A lone `run_command` cell is a run
        of one. Only after the link version is set.
        """
        if self._link_version == LINK_VERSION_UNNEGOTIATED:
            raise ValueError("runs need the negotiated link version")
        if run_command == _VERSIONS or run_command >= _FIRST_VAR_COMMAND or run_command < 0:
            raise ValueError(f"command {run_command} is variable-length")
        return self._feed(data, run_command)

    def _feed(self, data: bytes | bytearray | memoryview, run_command: int) -> list[tuple[int, int, bytes, int]]:
        buffer = self._buffer
        if buffer:
            buffer += data
            entries, consumed = self._parse(buffer, run_command)
            del buffer[:consumed]
        else:
            # Fast path: parse straight out of the caller's bytes, keep only the tail.
            entries, consumed = self._parse(data, run_command)
            if consumed < len(data):
                buffer += memoryview(data)[consumed:]
        return entries

    def _parse(self, source: bytes | bytearray | memoryview, run_command: int) -> tuple[list, int]:
        """The one cell parser: (entries, bytes consumed). `run_command` cells of one circuit in a row are
        gathered into runs (_NO_RUNS: none are). Before the link version is set it stops after VERSIONS."""
        entries: list[tuple[int, int, bytes, int]] = []
        append = entries.append
        header_unpack = self._header.unpack_from
        header_len = self._header_len
        unpack_length = _LENGTH.unpack_from
        fixed_len = header_len + CELL_PAYLOAD_LEN
        var_header_len = header_len + VAR_CELL_LENGTH_LEN
        stop_after_versions = self._link_version == LINK_VERSION_UNNEGOTIATED
        join = b"".join
        end = len(source)
        offset = 0
        run: list = []  # payload views of the current run
        run_circ_id = -1
        with memoryview(source) as view:
            while end - offset >= header_len:
                circ_id, command = header_unpack(view, offset)
                if command == run_command:
                    payload_end = offset + fixed_len
                    if payload_end > end:
                        break
                    if circ_id != run_circ_id:
                        if run:
                            append((run_circ_id, run_command, join(run), len(run)))
                            run = []
                        run_circ_id = circ_id
                    run.append(view[offset + header_len:payload_end])
                    offset = payload_end
                    continue
                if command == _VERSIONS or command >= _FIRST_VAR_COMMAND:
                    if end - offset < var_header_len:
                        break
                    (length,) = unpack_length(view, offset + header_len)
                    payload_start = offset + var_header_len
                    payload_end = payload_start + length
                else:
                    payload_start = offset + header_len
                    payload_end = offset + fixed_len
                if payload_end > end:
                    break
                if run:
                    append((run_circ_id, run_command, join(run), len(run)))
                    run = []
                    run_circ_id = -1
                append((circ_id, command, bytes(view[payload_start:payload_end]), 1))
                offset = payload_end
                if stop_after_versions and command == _VERSIONS:
                    self._held = True
                    break
            if run:
                append((run_circ_id, run_command, join(run), len(run)))
                run = []
        return entries, offset
