"""A stream sink for tests: collects what a stream delivers and fires Deferreds on its milestones."""

from __future__ import annotations

import hashlib

from twisted.internet import defer

from oppy.stream.stream import Stream, StreamEnd


class CollectingSink:
    """Keeps the bytes (or only their SHA-256 and count, for big transfers) a stream delivers."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.chunks: list[bytes] = []
        self.length = 0
        self.sha256 = hashlib.sha256()
        self.connected: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()
        self.end: StreamEnd | None = None
        self.resolved = None
        self.writable_changes: list[bool] = []
        self._writable_waiters: list[defer.Deferred] = []

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def stream_connected(self, stream: Stream) -> None:
        self.connected.callback(stream)

    def stream_resolved(self, stream: Stream, answers) -> None:
        self.resolved = answers

    def stream_data(self, stream: Stream, data: bytes) -> None:
        self.length += len(data)
        self.sha256.update(data)
        if self.keep:
            self.chunks.append(data)

    def stream_writable(self, stream: Stream, writable: bool) -> None:
        self.writable_changes.append(writable)
        if writable:
            waiters, self._writable_waiters = self._writable_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    @property
    def writable(self) -> bool:
        return not self.writable_changes or self.writable_changes[-1]

    def when_writable(self) -> defer.Deferred:
        """Fires once the stream takes more data (at once if it does now): the writer's backpressure."""
        if self.writable:
            return defer.succeed(None)
        waiter: defer.Deferred = defer.Deferred()
        self._writable_waiters.append(waiter)
        return waiter

    def stream_ended(self, stream: Stream, end: StreamEnd) -> None:
        self.end = end
        if not self.connected.called:
            self.connected.errback(end)
        self.ended.callback(end)


def http_response_body(raw: bytes) -> tuple[bytes, bytes]:
    """(head, body) of a raw HTTP/1.x response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body
