"""Coverage-guided fuzzing (atheris, libFuzzer) of the parsers the hypothesis targets cover.

Run by ``scripts/fuzz`` as ``python -m tests.unit.fuzz.atheris_harness TARGET CORPUS [libFuzzer flags]``;
not a pytest module. Each target takes raw bytes and lets through only the parser's own error; anything
else is a crash, which libFuzzer reports with the input that caused it (saved under -artifact_prefix).
An empty CORPUS folder is first filled with the hypothesis targets' well-formed seeds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys

import atheris

with atheris.instrument_imports(include=["oppy"]):
    from oppy.cell.commands import CELL_PAYLOAD_LEN
    from oppy.cell.errors import CellParseError
    from oppy.cell.framing import LINK_VERSION_UNNEGOTIATED, CellReader
    from oppy.cell.relay import decode_relay_payload
    from oppy.config import ConfigError, config_from_torrc_text, parse_command_line
    from oppy.control.session import AuthSettings, ControlHub
    from oppy.crypto.certs import verify_relay_certs
    from oppy.crypto.errors import CertificateError
    from oppy.socks.messages import MAX_HANDSHAKE_MESSAGE_LEN
    from oppy.socks.protocol import SocksServerConnection

from tests.unit.fuzz.test_fuzz_cell import BODY_DECODERS, SEED_PAYLOADS, SEED_STREAMS
from tests.unit.fuzz.test_fuzz_config import SEED_VALUES
from tests.unit.fuzz.test_fuzz_control import SEED_COMMANDS
from tests.unit.fuzz.test_fuzz_socks import SEED_CONVERSATIONS
from tests.unit.test_control_commands import FakeBackend, built_circuit
from tests.unit.test_crypto_certs import REAL_CAPTURED_AT, REAL_CERTS_BODY, REAL_PEER_TLS_CERT, REAL_RSA_ID


def control_session(data: bytes) -> None:
    """Bytes from a controller, before and after authentication: replies only, never an exception."""
    backend = FakeBackend()
    built_circuit(backend, 5)
    for authenticated in (False, True):
        session = ControlHub(backend, AuthSettings()).open_session()
        if authenticated:
            session.feed(b"AUTHENTICATE\r\n")
        session.feed(data)
        output = session.data_to_send()
        assert not output or output.endswith((b"\r\n", b"</html>\n")), output[-80:]
        assert b"551 Internal error\r\n" not in output, output  # an exception caught by the session


def torrc(data: bytes) -> None:
    try:
        config_from_torrc_text(data.decode("utf-8", "surrogateescape"))
    except ConfigError as error:
        assert "\n" not in str(error)


def command_line(data: bytes) -> None:
    argv = [word.decode("utf-8", "surrogateescape") for word in data.split(b"\0")]
    if "-f" in argv or "--torrc-file" in argv:
        return  # no file reads from fuzzed names
    try:
        parse_command_line(argv)
    except ConfigError as error:
        assert "\n" not in str(error)


def socks(data: bytes) -> None:
    connection = SocksServerConnection()
    middle = len(data) // 2
    events = connection.feed(data[:middle]) + connection.feed(data[middle:])
    assert len(events) <= 1 and connection.buffered_handshake_bytes <= MAX_HANDSHAKE_MESSAGE_LEN


def cells(data: bytes) -> None:
    reader = CellReader()
    try:
        for cell in reader.feed(data):
            if reader.link_version == LINK_VERSION_UNNEGOTIATED:
                reader.set_link_version(4)
    except CellParseError:
        pass


def relay_messages(data: bytes) -> None:
    try:
        command, _, body = decode_relay_payload(data[:CELL_PAYLOAD_LEN].ljust(CELL_PAYLOAD_LEN, b"\0"))
        decoder = BODY_DECODERS.get(command)
        if decoder is not None:
            decoder(body)
    except CellParseError:
        pass


def certs(data: bytes) -> None:
    try:
        verify_relay_certs(data, REAL_PEER_TLS_CERT, REAL_RSA_ID, None, REAL_CAPTURED_AT)
    except CertificateError:
        pass


TARGETS = {function.__name__: function for function in
           (control_session, torrc, command_line, socks, cells, relay_messages, certs)}
SEEDS: dict[str, list[bytes]] = {
    "control_session": [b"".join(line + b"\r\n" for line in SEED_COMMANDS)],
    "torrc": ["\n".join(f"{name} {value}" for name, values in SEED_VALUES.items() for value in values).encode()],
    "command_line": [b"\0".join(f"--{name}\0{values[0]}".encode() for name, values in SEED_VALUES.items()),
                     b"--socks-port\x009050\x00--log-level\x00info\x00--dump-config\x00full"],
    "socks": list(SEED_CONVERSATIONS),
    "cells": list(SEED_STREAMS),
    "relay_messages": list(SEED_PAYLOADS),
    "certs": [REAL_CERTS_BODY],
}


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.unit.fuzz.atheris_harness {{{','.join(TARGETS)}}} CORPUS "
                 "[libFuzzer flags]")
    name, corpus = sys.argv[1], sys.argv[2]
    os.makedirs(corpus, exist_ok=True)
    if not os.listdir(corpus):
        for seed in SEEDS[name]:
            with open(os.path.join(corpus, hashlib.sha1(seed).hexdigest()), "wb") as handle:
                handle.write(seed)
    logging.disable(logging.CRITICAL)  # oppy's one-line warnings about bad input, millions of them
    atheris.Setup([sys.argv[0], *sys.argv[3:], corpus], TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
