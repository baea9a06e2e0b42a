"""A minimal blocking SOCKS5 client for tests that need the raw reply code."""

from __future__ import annotations

import socket
import struct

CONNECT, BIND, UDP_ASSOCIATE, RESOLVE = 0x01, 0x02, 0x03, 0xF0


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        piece = sock.recv(count - len(data))
        if not piece:
            raise ConnectionError(f"connection closed after {len(data)} of {count} bytes")
        data += piece
    return data


def socks5_request(proxy_port: int, host: str, port: int, command: int = CONNECT,
                   credentials: tuple[bytes, bytes] | None = None, timeout: float = 60.0,
                   receive_buffer: int | None = None) -> tuple[int, socket.socket]:
    """Do a SOCKS5 handshake and request; returns (REP, the open socket). `receive_buffer` sets the
    socket's SO_RCVBUF before it connects (a small one makes a client that stops reading stall at once)."""
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", proxy_port))
    if credentials:
        sock.sendall(b"\x05\x01\x02")
    else:
        sock.sendall(b"\x05\x01\x00")
    version, method = recv_exactly(sock, 2)
    assert version == 5, version
    if credentials:
        assert method == 2, method
        user, password = credentials
        sock.sendall(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
        assert recv_exactly(sock, 2) == b"\x01\x00"
    encoded = host.encode()
    sock.sendall(b"\x05" + bytes([command]) + b"\x00\x03" + bytes([len(encoded)]) + encoded
                 + struct.pack(">H", port))
    head = recv_exactly(sock, 4)
    address_type = head[3]
    length = {1: 4, 4: 16}.get(address_type)
    if length is None:
        length = recv_exactly(sock, 1)[0]
    recv_exactly(sock, length + 2)
    return head[1], sock


SOCKS5_NO_AUTH_GREETING = b"\x05\x01\x00"


def socks5_greeting(proxy_port: int, timeout: float = 10.0) -> socket.socket:
    """A connection whose SOCKS5 greeting (no authentication) was answered."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
    sock.sendall(SOCKS5_NO_AUTH_GREETING)
    assert recv_exactly(sock, 2) == b"\x05\x00"
    return sock
