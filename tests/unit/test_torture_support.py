"""The endurance bench's own verdicts (tests/support/torture.py): its fault schedule is the seed's alone, and
a download is called ok, corrupt, failed or hang exactly as documented, over real local sockets (a small
SOCKS5 server in front of canned HTTP answers)."""

from __future__ import annotations

import asyncio
import struct

import pytest

from tests.support import torture
from tests.support.torture import BLOCK, content_matches, fetch_checked, make_schedule

RELAYS = ["relay0", "relay1", "exit0", "exit1"]


def test_schedule_depends_on_the_seed_only():
    first = make_schedule(7, 300, 10, RELAYS)
    assert first == make_schedule(7, 300, 10, list(reversed(RELAYS)))
    assert first != make_schedule(8, 300, 10, RELAYS)
    assert [fault.at for fault in first] == [10.0 * i for i in range(1, 30)]
    assert {fault.kind for fault in first} == {"kill", "stop"}
    assert {fault.relay for fault in first} <= set(RELAYS)
    # Restored before the next fault: at most one relay is down at a time.
    assert all(0 < fault.restore_after < 10 for fault in first)


def test_content_matches_across_the_block_boundary():
    length = len(BLOCK)
    assert content_matches(0, BLOCK[:1000])
    assert content_matches(length - 10, BLOCK[-10:] + BLOCK[:20])
    assert content_matches(3 * length + 5, BLOCK[5:105])
    assert not content_matches(length - 10, BLOCK[-10:] + bytes(20))
    assert not content_matches(1, BLOCK[:100])


async def _serve(answer):
    """A SOCKS5 server that accepts any CONNECT and answers the HTTP request with `answer(writer)`."""

    async def handle(reader, writer):
        try:
            await reader.readexactly(3)
            writer.write(b"\x05\x00")
            head = await reader.readexactly(4)
            await reader.readexactly({1: 4, 4: 16}[head[3]] + 2)
            writer.write(b"\x05\x00\x00\x01" + bytes(4) + struct.pack(">H", 0))
            await reader.readuntil(b"\r\n\r\n")
            await answer(writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _header(length: int, status: str = "200 OK") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n".encode()


def _outcome(answer, size: int, hang_timeout: float = 5.0) -> str:
    async def run():
        server, port = await _serve(answer)
        async with server:
            return await fetch_checked(port, 80, size, hang_timeout)

    return asyncio.run(run())


SIZE = len(BLOCK) + 5000  # the body crosses the end of the repeated block


async def _exact(writer):
    writer.write(_header(SIZE) + BLOCK + BLOCK[:5000])


async def _one_byte_flipped(writer):
    body = bytearray(BLOCK + BLOCK[:5000])
    body[len(BLOCK) + 17] ^= 1
    writer.write(_header(SIZE) + bytes(body))


async def _too_long(writer):
    writer.write(_header(SIZE) + BLOCK + BLOCK[:5001])


async def _truncated(writer):
    writer.write(_header(SIZE) + BLOCK[:1000])


async def _wrong_status(writer):
    writer.write(_header(SIZE, "404 Not Found") + BLOCK + BLOCK[:5000])


async def _silent(writer):
    await asyncio.sleep(30)


async def _closed_at_once(writer):
    pass


@pytest.mark.parametrize("answer, outcome", [
    (_exact, "ok"),
    (_one_byte_flipped, "corrupt"),
    (_too_long, "corrupt"),
    (_wrong_status, "corrupt"),
    (_truncated, f"failed: closed after 1000 of {SIZE} bytes"),
    (_closed_at_once, "failed: closed during the HTTP header"),
])
def test_download_verdicts(answer, outcome):
    assert _outcome(answer, SIZE) == outcome


def test_a_silent_stream_is_a_hang():
    assert _outcome(_silent, SIZE, hang_timeout=0.5) == "hang during the HTTP header"


def test_a_refused_socks_connection_fails():
    async def run():
        server, port = await _serve(_exact)
        server.close()
        await server.wait_closed()
        return await fetch_checked(port, 80, 10)

    assert asyncio.run(run()) == "failed: ConnectionRefusedError during the SOCKS handshake"


def test_load_result_counts_each_verdict_once():
    result = torture.LoadResult()
    for outcome in ["ok", "ok", "corrupt", "hang during the SOCKS reply", "failed: SOCKS reply 1",
                    "failed: SOCKS reply 1"]:
        result.add(outcome, 100, 45.0, bucket=30.0)
    summary = result.summary()
    counts = tuple(summary[key] for key in ("requests", "ok", "corrupt", "hangs", "failed"))
    assert counts == (6, 2, 1, 1, 2)
    assert summary["byte_exact_percent"] == pytest.approx(100 * 2 / 6)
    assert summary["failures"] == {"failed: SOCKS reply 1": 2, "hang during the SOCKS reply": 1}
    assert summary["timeline_requests_ok"] == [[0, 0], [6, 2]]
