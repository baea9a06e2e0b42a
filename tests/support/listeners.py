"""Helpers for tests against a listener over loopback TCP: waiting on the reactor, and new connections the
listener hangs up on."""

from __future__ import annotations

import socket

from twisted.internet import defer, reactor, task


@defer.inlineCallbacks
def until(condition, what: str, timeout: float = 10.0):
    """Let the reactor run until `condition()` holds; AssertionError naming `what` after `timeout` seconds."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        yield task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"timed out waiting until {what}")


def hung_up_on(port: int, first_bytes: bytes, timeout: float = 10.0) -> bool:
    """A new connection to 127.0.0.1:`port` that sends `first_bytes` is closed or reset without an answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(first_bytes)
            return sock.recv(4096) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
