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

    def stream_ended(self, stream: Stream, end: StreamEnd) -> None:
        self.end = end
        if not self.connected.called:
            self.connected.errback(end)
        self.ended.callback(end)


def http_response_body(raw: bytes) -> tuple[bytes, bytes]:
    """(head, body) of a raw HTTP/1.x response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body
