"""Stream isolation: which streams may share a circuit, by tor's rules.

A client port's isolation flags (tor(1) SocksPort "isolation flags") say which properties of its streams
must match those of every stream a circuit has carried before: destination address and port, SOCKS
credentials, client protocol, client address, session group, NEWNYM epoch. A circuit remembers the values
of the first stream it took and, for every later stream, which properties were mixed; a stream fits a
circuit when none of its isolating properties is mixed there and each equals the circuit's value (tor
connection_edge.c connection_edge_compatible_with_circuit and connection_edge_update_circuit_isolation).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class IsolationFlag(enum.IntFlag):
    """or.h ISO_*: the properties a port's streams are isolated by."""

    DESTPORT = 1 << 0
    DESTADDR = 1 << 1
    SOCKSAUTH = 1 << 2
    CLIENTPROTO = 1 << 3
    CLIENTADDR = 1 << 4
    SESSIONGRP = 1 << 5
    NYM_EPOCH = 1 << 6


#: or.h ISO_DEFAULT: every port isolates by client address, SOCKS credentials, session group and NEWNYM epoch
#: unless its line says otherwise (session group and epoch cannot be turned off).
ISO_DEFAULT = IsolationFlag.CLIENTADDR | IsolationFlag.SOCKSAUTH | IsolationFlag.SESSIONGRP | IsolationFlag.NYM_EPOCH

#: tor(1) SocksPort: the isolation flag words and the properties they name.
FLAG_NAMES: dict[str, IsolationFlag] = {
    "IsolateDestPort": IsolationFlag.DESTPORT,
    "IsolateDestAddr": IsolationFlag.DESTADDR,
    "IsolateSOCKSAuth": IsolationFlag.SOCKSAUTH,
    "IsolateClientProtocol": IsolationFlag.CLIENTPROTO,
    "IsolateClientAddr": IsolationFlag.CLIENTADDR,
}

#: or.h SESSION_GROUP_UNSET: a stream from no port's session group (one oppy opens for itself).
SESSION_GROUP_UNSET = -1
#: or.h SESSION_GROUP_FIRST_AUTO: a port without SessionGroup=N gets a group of its own, counting down from here
#: (connection.c global_next_session_group), so that streams of different ports never share circuits.
SESSION_GROUP_FIRST_AUTO = -4


class ClientProtocol(enum.Enum):
    """control-spec STREAM CLIENT_PROTOCOL: how a stream's application reached oppy (tor compares the listener
    type and SOCKS version for IsolateClientProtocol)."""

    SOCKS4 = "SOCKS4"
    SOCKS5 = "SOCKS5"
    HTTPCONNECT = "HTTPCONNECT"
    DNS = "DNS"
    UNKNOWN = "UNKNOWN"


def isolation_flags(flag_names: frozenset[str] | set[str]) -> IsolationFlag:
    """The IsolationFlag of a port whose Isolate* flags are `flag_names`, with the two no port can turn off."""
    flags = IsolationFlag.SESSIONGRP | IsolationFlag.NYM_EPOCH
    for name in flag_names:
        flags |= FLAG_NAMES.get(name, IsolationFlag(0))
    return flags


@dataclass(frozen=True, slots=True)
class StreamIsolation:
    """What a stream's front door knows of it for isolation: its port's flags and session group, and the
    application's protocol, address and credentials. (The destination and NEWNYM epoch are added by the
    circuit manager.) Empty credentials and absent ones are alike, as in tor."""

    flags: IsolationFlag = ISO_DEFAULT
    session_group: int = SESSION_GROUP_UNSET
    protocol: ClientProtocol = ClientProtocol.UNKNOWN
    client_address: str = ""
    username: bytes = b""
    password: bytes = b""

    def with_credentials(self, username: bytes, password: bytes) -> "StreamIsolation":
        return replace(self, username=username, password=password)


@dataclass(frozen=True, slots=True)
class IsolationValues:
    """One stream's values of every isolated property, and the flags of its port."""

    flags: IsolationFlag
    dest_address: str
    dest_port: int
    credentials: tuple[bytes, bytes]
    protocol: ClientProtocol
    client_address: str
    session_group: int
    nym_epoch: int

    @classmethod
    def of(cls, isolation: StreamIsolation, dest_address: str, dest_port: int, nym_epoch: int) -> "IsolationValues":
        return cls(isolation.flags, dest_address, dest_port, (isolation.username, isolation.password),
                   isolation.protocol, isolation.client_address, isolation.session_group, nym_epoch)

    def differences(self, other: "IsolationValues") -> IsolationFlag:
        """The properties whose values differ (destination addresses compared without case, as tor does)."""
        mixed = IsolationFlag(0)
        if self.dest_port != other.dest_port:
            mixed |= IsolationFlag.DESTPORT
        if self.dest_address.lower() != other.dest_address.lower():
            mixed |= IsolationFlag.DESTADDR
        if self.credentials != other.credentials:
            mixed |= IsolationFlag.SOCKSAUTH
        if self.protocol is not other.protocol:
            mixed |= IsolationFlag.CLIENTPROTO
        if self.client_address != other.client_address:
            mixed |= IsolationFlag.CLIENTADDR
        if self.session_group != other.session_group:
            mixed |= IsolationFlag.SESSIONGRP
        if self.nym_epoch != other.nym_epoch:
            mixed |= IsolationFlag.NYM_EPOCH
        return mixed


class CircuitIsolation:
    """What one circuit's streams were: the first one's values, and the properties later ones mixed.

    Values given while a circuit is still being built for a stream are hypothetical (tor marks a launched
    circuit so that it knows whether more circuits are needed): :meth:`clear_if_unused` forgets them once it
    opens, before the waiting streams are attached for real."""

    __slots__ = ("values", "mixed", "streams_attached")

    def __init__(self) -> None:
        self.values: IsolationValues | None = None
        self.mixed = IsolationFlag(0)
        self.streams_attached = False

    @property
    def is_set(self) -> bool:
        return self.values is not None

    def compatible(self, stream: IsolationValues) -> bool:
        """connection_edge_compatible_with_circuit: may `stream` go on this circuit?"""
        if self.values is None:
            return True
        if stream.flags & self.mixed:
            return False
        return not (stream.flags & self.values.differences(stream))

    def add(self, stream: IsolationValues, *, attached: bool) -> None:
        """connection_edge_update_circuit_isolation: `stream` goes (or, not `attached`, is meant to go) here."""
        if self.values is None:
            self.values = stream
        else:
            self.mixed |= self.values.differences(stream)
        self.streams_attached = self.streams_attached or attached

    def clear_if_unused(self) -> None:
        """circuit_try_clearing_isolation_state: a circuit that never carried a stream forgets its marks."""
        if not self.streams_attached:
            self.values = None
            self.mixed = IsolationFlag(0)
