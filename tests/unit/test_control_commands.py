"""Control-port commands and sessions (sans IO), checked against tor's replies and stem's parsers."""

from __future__ import annotations

import io

import pytest
import stem
import stem.descriptor.router_status_entry
import stem.response
import stem.socket
from twisted.internet import task

from oppy.cell.commands import DestroyReason, EndReason
from oppy.circuit.circuit import CircuitError, CircuitState
from oppy.circuit.manager import CircuitManager, CircuitPurpose, CircuitStatus, ManagedCircuit, ManagedStream
from oppy.config import OPTION_NAMES, Config, config_from_torrc_text
from oppy.control.auth import safecookie_client_hash
from oppy.control.backend import LinkTrafficMeter
from oppy.control.commands import (
    TOR_CLIENT_DEFAULTS,
    CircuitManagerView,
    ControlBackend,
    DirectoryView,
    SetconfError,
    apply_setconf,
)
from oppy.control.session import CONTROL_VERSION, AuthSettings, ControlHub
from oppy.control.status import (
    CircuitEventTracker,
    StreamEventTracker,
    circuit_getinfo_status,
    circuit_status_entry,
    ns_entry,
)
from oppy.link.connection import LinkFailed
from oppy.netdoc.documents import Consensus, RelayRecord
from oppy.doors.listeners import ListenError
from oppy.netdoc.netdir import NetDir
from oppy.path.chooser import PathChooser
from oppy.netdoc.relay import RelayTarget
from oppy.stream.stream import Stream, StreamEnd, StreamState

FP = ["%040X" % (0x1111 * (i + 1)) for i in range(4)]
NAMES = ["guard0", "middle1", "exit2", "exit3"]
TARGETS = [RelayTarget(NAMES[i], bytes.fromhex(FP[i]), "127.0.0.1", 9000 + i, b"k" * 32) for i in range(4)]


def relay_record(i: int) -> RelayRecord:
    return RelayRecord(NAMES[i], bytes.fromhex(FP[i]), "127.0.0.1", 9000 + i, 0, (),
                       frozenset({"Fast", "Running", "Valid", "Guard"} if i == 0 else {"Running", "Valid"}),
                       100 * (i + 1), False, {}, "A" * 43)


def consensus() -> Consensus:
    return Consensus("microdesc", 33, 1000, 2000, 3000, (), {}, {}, {}, {}, {}, (), {},
                     tuple(relay_record(i) for i in range(4)))


class Sink:
    def __init__(self):
        self.ended = []

    def stream_connected(self, stream): pass

    def stream_resolved(self, stream, answers): pass

    def stream_data(self, stream, data): pass

    def stream_writable(self, stream, writable): pass

    def stream_ended(self, stream, end):
        self.ended.append(end)


class FakeDirectory:
    def __init__(self):
        self.netdir = NetDir(consensus())
        self.bootstrap_phase = (100, "done", "Done")
        self.bootstrap_problem = None
        self.enough_dir_info = True


class FakeManager:
    def __init__(self):
        self.circuits = {}
        self.streams = {}
        self.circuit_established = False


class FakeBackend(ControlBackend):
    def __init__(self, config: Config | None = None):
        self.config = config or Config()
        self.manager = FakeManager()
        self.directory = FakeDirectory()
        self.paths = PathChooser()
        self.calls = []

    def launch_circuit(self, path, purpose):
        number = max(self.manager.circuits, default=0) + 1
        managed = ManagedCircuit(number, list(path or TARGETS[:3]), CircuitPurpose[purpose], 0.0, 1.0e9)
        self.manager.circuits[number] = managed
        self.calls.append(("launch", [t.nickname for t in (path or [])], purpose))
        return number

    def extend_circuit(self, managed_circuit, path):
        if not managed_circuit.path:
            raise RuntimeError("not open")
        self.calls.append(("extend", managed_circuit.number, [t.nickname for t in path]))

    def attach_stream(self, managed_stream, managed_circuit, hop=None):
        self.calls.append(("attach", managed_stream.number, managed_circuit and managed_circuit.number, hop))

    def close_stream(self, managed_stream, reason):
        self.calls.append(("close_stream", managed_stream.number, reason))

    def close_circuit(self, number):
        self.calls.append(("close_circuit", number))

    def find_relay(self, name):
        for target in TARGETS:
            if name.lstrip("$").split("~")[0].upper() == target.fingerprint or name == target.nickname:
                return target
        return None

    def signal(self, name):
        self.calls.append(("signal", name))

    def options_changed(self, names):
        self.calls.append(("options_changed", list(names)))

    def listeners(self, kind):
        return [("127.0.0.1", 9050)] if kind == "socks" else []

    def traffic(self):
        return (1234, 567)


class OpenCircuit:
    """Stands for an open sans-IO Circuit: ManagedCircuit.is_open only asks it whether it is open."""

    state = CircuitState.OPEN
    is_open = True


def built_circuit(backend: FakeBackend, number: int, hops: int = 3) -> ManagedCircuit:
    managed = ManagedCircuit(number, TARGETS[:hops], CircuitPurpose.GENERAL, 0.0, 1.0e9)
    managed.status = CircuitStatus.BUILT
    managed.hops_built = hops
    managed.circuit = OpenCircuit()
    backend.manager.circuits[number] = managed
    return managed


def add_stream(backend: FakeBackend, number: int, state=StreamState.NEW, awaiting=False) -> ManagedStream:
    stream = Stream(Sink(), "127.0.0.1", 8080)
    stream.state = state
    managed = ManagedStream(number, stream, None, "127.0.0.1:5555")
    managed.awaiting_controller = awaiting
    backend.manager.streams[number] = managed
    return managed


def session_for(backend=None, auth=AuthSettings(), authenticate=True,
                on_subscriptions_changed=lambda events: None):
    hub = ControlHub(backend or FakeBackend(), auth, on_subscriptions_changed=on_subscriptions_changed)
    session = hub.open_session()
    if authenticate:
        session.feed(b"AUTHENTICATE\r\n")
        assert session.data_to_send() == b"250 OK\r\n"
    return hub, session


def ask(session, line: str) -> bytes:
    session.feed(line.encode() + b"\r\n")
    return session.data_to_send()


def parse(raw: bytes, kind: str | None = None):
    message = stem.socket.recv_message(io.BytesIO(raw))
    if kind:
        stem.response.convert(kind, message)
    return message


# --------------------------------------------------------------------------- sessions


class TestViews:
    def test_the_doubles_and_the_manager_have_what_control_reads(self):
        backend = FakeBackend()
        assert isinstance(backend, ControlBackend)
        assert isinstance(backend.manager, CircuitManagerView)
        assert isinstance(backend.directory, DirectoryView)
        manager = CircuitManager(None, PathChooser(), reactor=task.Clock())
        assert isinstance(manager, CircuitManagerView)
        assert manager.circuit_established is False


class TestAuthentication:
    def test_commands_before_authentication_get_514_and_close(self):
        _, session = session_for(authenticate=False)
        assert ask(session, "GETINFO version") == b"514 Authentication required.\r\n"
        assert session.should_close
        assert ask(session, "GETINFO version") == b""

    def test_protocolinfo_and_safecookie(self, tmp_path):
        cookie = bytes(range(32))
        auth = AuthSettings(cookie=cookie, cookie_path=str(tmp_path / "control_auth_cookie"))
        _, session = session_for(auth=auth, authenticate=False)
        info = parse(ask(session, "PROTOCOLINFO 1"), "PROTOCOLINFO")
        assert info.auth_methods == (stem.connection.AuthMethod.COOKIE, stem.connection.AuthMethod.SAFECOOKIE)
        assert str(info.tor_version) == CONTROL_VERSION
        nonce = bytes(32)
        answer = ask(session, "AUTHCHALLENGE SAFECOOKIE " + nonce.hex()).decode()
        server_nonce = bytes.fromhex(answer.split("SERVERNONCE=")[1].strip())
        client_hash = safecookie_client_hash(cookie, nonce, server_nonce)
        assert ask(session, "AUTHENTICATE " + client_hash.hex()) == b"250 OK\r\n"
        assert ask(session, "GETINFO version").startswith(b"250-version=")

    def test_wrong_password_is_515_and_closes(self):
        from oppy.crypto.s2k import hash_password

        _, session = session_for(auth=AuthSettings(hashed_passwords=(hash_password("right"),)), authenticate=False)
        answer = ask(session, 'AUTHENTICATE "wrong"')
        assert answer.startswith(b"515 Authentication failed: Password did not match")
        assert session.should_close

    def test_quit(self):
        _, session = session_for()
        assert ask(session, "QUIT") == b"250 closing connection\r\n"
        assert session.should_close


class TestFraming:
    def test_unknown_command_is_510(self):
        _, session = session_for()
        assert ask(session, "FROB x") == b'510 Unrecognized command "FROB"\r\n'
        assert ask(session, "") == b'510 Unrecognized command ""\r\n'
        assert not session.should_close

    def test_multiline_form_of_a_one_line_command_is_510(self):
        _, session = session_for()
        session.feed(b"+GETINFO version\r\nsome data\r\n.\r\n")
        assert session.data_to_send() == b'510 Unrecognized command "+GETINFO"\r\n'

    def test_bad_arguments_are_512(self):
        _, session = session_for()
        assert ask(session, "SIGNAL") == b"512 Bad arguments to SIGNAL: Need at least 1 argument(s)\r\n"
        assert ask(session, "SIGNAL NEWNYM now") == \
            b"512 Bad arguments to SIGNAL: Cannot accept more than 1 argument(s)\r\n"
        assert ask(session, 'SETCONF Log="unterminated') == \
            b"512 Bad arguments to SETCONF: Cannot parse keyword argument(s)\r\n"
        assert ask(session, "ATTACHSTREAM 1 2 FOO=3") == \
            b'512 Bad arguments to ATTACHSTREAM: Unrecognized keyword argument "FOO"\r\n'

    def test_overlong_line_is_500_and_closes(self):
        _, session = session_for()
        session.feed(b"GETINFO " + b"x" * (1024 * 1024 + 10))
        assert session.data_to_send() == b"500 Line too long.\r\n"
        assert session.should_close

    def test_http_request_gets_the_501_page(self):
        _, session = session_for(authenticate=False)
        session.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = session.data_to_send()
        assert answer.startswith(b"HTTP/1.0 501 ")
        assert session.should_close

    def test_command_words_are_case_insensitive_and_trailing_space_is_fine(self):
        _, session = session_for()
        assert ask(session, "getinfo version ").startswith(b"250-version=")
        assert ask(session, "SETEVENTS ") == b"250 OK\r\n"


# --------------------------------------------------------------------------- GETINFO / GETCONF


class TestGetinfo:
    def test_version_parses_as_stem_version(self):
        _, session = session_for()
        message = parse(ask(session, "GETINFO version"), "GETINFO")
        version = stem.version.Version(message.entries["version"].decode())
        assert str(version) == "0.4.9.11 (oppy-0.1.0)" and version >= stem.version.Version("0.4.6.1-alpha")

    def test_unknown_key_fails_the_whole_command(self):
        _, session = session_for()
        assert ask(session, "GETINFO version nosuchkey") == b'552 Unrecognized key "nosuchkey"\r\n'
        assert ask(session, "GETINFO VERSION") == b'552 Unrecognized key "VERSION"\r\n'
        assert ask(session, "GETINFO a b") == b'552-Unrecognized key "a"\r\n552 Unrecognized key "b"\r\n'

    def test_relay_only_keys_give_tors_client_errors(self):
        _, session = session_for()
        assert ask(session, "GETINFO fingerprint") == b"551 Not running in server mode\r\n"
        assert ask(session, "GETINFO address") == b"551 Address unknown\r\n"
        assert ask(session, "GETINFO exit-policy/full") == b"552 Not running in server mode\r\n"
        assert ask(session, "GETINFO desc/id/" + FP[0]).startswith(b"552 We fetch microdescriptors, not router")
        assert ask(session, "GETINFO status/clients-seen") == b"551 No bridge-client stats available\r\n"

    def test_simple_keys(self):
        _, session = session_for()
        keys = ("traffic/read traffic/written status/bootstrap-phase status/circuit-established "
                "net/listeners/socks net/listeners/or process/pid accounting/enabled events/names signal/names "
                "status/version/current exit-policy/default features/names dormant")
        entries = parse(ask(session, "GETINFO " + keys), "GETINFO").entries
        assert set(entries) == set(keys.split())
        assert entries["traffic/read"] == b"1234" and entries["traffic/written"] == b"567"
        assert entries["status/bootstrap-phase"] == b'NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY="Done"'
        assert entries["net/listeners/socks"] == b'"127.0.0.1:9050"' and entries["net/listeners/or"] == b""
        assert entries["events/names"].split()[:3] == [b"CIRC", b"CIRC_MINOR", b"STREAM"]
        assert b"NEWNYM" in entries["signal/names"].split()

    def test_multiline_values_are_data_blocks(self):
        _, session = session_for()
        answer = ask(session, "GETINFO config/names info/names")
        assert answer.startswith(b"250+config/names=\r\n")
        entries = parse(answer, "GETINFO").entries
        assert b"SocksPort LineList" in entries["config/names"].split(b"\n")
        assert any(line.startswith(b"version -- ") for line in entries["info/names"].split(b"\n"))

    def test_circuit_and_stream_status_parse_as_stem_events(self):
        backend = FakeBackend()
        built_circuit(backend, 7)
        launched = ManagedCircuit(8, TARGETS[:3], CircuitPurpose.CONTROLLER, 0.0, 1.0e9)
        backend.manager.circuits[8] = launched
        add_stream(backend, 3, StreamState.NEW)
        connecting = add_stream(backend, 4, StreamState.SENTCONNECT)
        connecting.managed_circuit = backend.manager.circuits[7]
        add_stream(backend, 5, StreamState.CLOSED)
        _, session = session_for(backend)
        entries = parse(ask(session, "GETINFO circuit-status stream-status"), "GETINFO").entries
        circuits = [parse(b"650 CIRC " + line + b"\r\n", "EVENT") for line in entries["circuit-status"].splitlines()]
        assert [(c.id, c.status, c.purpose) for c in circuits] == [("7", "BUILT", "GENERAL"),
                                                                   ("8", "LAUNCHED", "CONTROLLER")]
        assert [hop[1] for hop in circuits[0].path] == ["guard0", "middle1", "exit2"]
        streams = [parse(b"650 STREAM " + line + b"\r\n", "EVENT") for line in entries["stream-status"].splitlines()]
        assert [(s.id, s.status, s.circ_id, s.target) for s in streams] == [
            ("3", "NEW", None, "127.0.0.1:8080"), ("4", "SENTCONNECT", "7", "127.0.0.1:8080")]

    def test_ns_and_md(self):
        backend = FakeBackend()
        backend.microdesc_body = lambda digest: "onion-key\nntor-onion-key AAAA\n"
        _, session = session_for(backend)
        entries = parse(ask(session, f"GETINFO ns/id/{FP[0]} ns/all md/id/${FP[0]} ns/name/exit2"), "GETINFO").entries
        entry = stem.descriptor.router_status_entry.RouterStatusEntryV3(entries[f"ns/id/{FP[0]}"].decode(),
                                                                         validate=True)
        assert (entry.nickname, entry.fingerprint, entry.or_port, entry.bandwidth) == ("guard0", FP[0], 9000, 100)
        assert "Guard" in entry.flags
        assert entries["ns/all"].count(b"\nr ") == 3
        assert entries[f"md/id/${FP[0]}"].startswith(b"onion-key")
        assert entries["ns/name/exit2"].startswith(b"r exit2 ")
        assert ask(session, "GETINFO ns/id/" + "9" * 40) == b'552 Unrecognized key "ns/id/' + b"9" * 40 + b'"\r\n'
        assert ask(session, "GETINFO ns/id/zz") == b"551 Data not decodeable as hex\r\n"


class TestGetconf:
    def test_values_unset_and_case(self):
        _, session = session_for()
        assert ask(session, "GETCONF __owningcontrollerprocess") == b"250 __OwningControllerProcess\r\n"
        assert ask(session, "GETCONF __leavestreamsunattached") == b"250 __LeaveStreamsUnattached=0\r\n"
        assert ask(session, "GETCONF socksport maxcircuitdirtiness") == \
            b"250-SocksPort=9050\r\n250 MaxCircuitDirtiness=600\r\n"
        assert ask(session, "GETCONF") == b"250 OK\r\n"

    def test_tor_options_oppy_lacks_answer_tors_client_defaults(self):
        _, session = session_for()
        assert ask(session, "GETCONF bandwidthrate") == b"250 BandwidthRate=1073741824\r\n"
        assert ask(session, "GETCONF nickname") == b"250 Nickname\r\n"
        assert ask(session, "GETCONF NoSuchOption") == b'552 Unrecognized configuration key "NoSuchOption"\r\n'


class TestSetconf:
    def test_set_reply_then_conf_changed_event(self):
        backend = FakeBackend()
        hub, session = session_for(backend)
        ask(session, "SETEVENTS CONF_CHANGED")
        answer = ask(session, 'SETCONF __LeaveStreamsUnattached="1"')
        assert answer == b"250 OK\r\n650-CONF_CHANGED\r\n650-__LeaveStreamsUnattached=1\r\n650 OK\r\n"
        assert backend.config.leave_streams_unattached
        assert ("options_changed", ["__LeaveStreamsUnattached"]) in backend.calls
        assert ask(session, "RESETCONF __LeaveStreamsUnattached").startswith(b"250 OK\r\n650-CONF_CHANGED")
        assert not backend.config.leave_streams_unattached
        assert ask(session, "SETCONF MaxCircuitDirtiness=600") == b"250 OK\r\n"  # unchanged: no event

    def test_errors_have_tors_codes(self):
        backend = FakeBackend()
        _, session = session_for(backend)
        assert ask(session, "SETCONF NoSuch=1") == \
            b"552 Unrecognized option: Unknown option 'NoSuch'.  Failing.\r\n"
        assert ask(session, "SETCONF MaxCircuitDirtiness=soon").startswith(b"513 Unacceptable option value: ")
        assert ask(session, "SETCONF DataDirectory=/elsewhere").startswith(b"553 Transition not allowed: ")
        assert ask(session, "SETCONF Nickname=me").startswith(b"553 Unable to set option: ")
        assert backend.config == Config()  # all or nothing

    def test_a_listener_that_cannot_be_bound_puts_the_options_back(self):
        """SETCONF SocksPort opens listeners at run time; when one cannot be bound the SETCONF fails with
        tor's answer, and every option it set is put back (and acted on again)."""
        class Unbindable(FakeBackend):
            def options_changed(self, names):
                super().options_changed(names)
                if "SocksPort" in names and self.config.socks_ports[0].port == 9999:
                    raise ListenError("Could not bind to 127.0.0.1:9999: [Errno 98] Address already in use")

        backend = Unbindable()
        _, session = session_for(backend)
        assert ask(session, "SETCONF SocksPort=9999 MaxCircuitDirtiness=1234") == \
            b"553 Unable to set option: Failed to bind one of the listener ports.\r\n"
        assert backend.config == Config()
        assert backend.calls[-2:] == [("options_changed", ["SocksPort", "MaxCircuitDirtiness"])] * 2
        assert ask(session, "SETCONF SocksPort=9150") == b"250 OK\r\n"
        assert backend.config.socks_ports[0].port == 9150

    @pytest.mark.parametrize("setting, option", [
        ("SocksPort=１２３", "SocksPort"),
        ("ControlPort=" + "1" * 5000, "ControlPort"),
        ("SocksPort=²", "SocksPort"),
        ('SocksPort="9050 SessionGroup=' + "1" * 5000 + '"', "SocksPort"),
        ('ControlPort="[::1]:' + "1" * 5000 + '"', "ControlPort"),
        ('MaxCircuitDirtiness="' + "9" * 5000 + ' minutes"', "MaxCircuitDirtiness"),
        ('MaxCircuitDirtiness="' + "9" * 400 + '.5 minutes"', "MaxCircuitDirtiness"),
        ('MaxCircuitDirtiness="１０ seconds"', "MaxCircuitDirtiness"),
        ("MaxClientCircuitsPending=" + "1" * 5000, "MaxClientCircuitsPending"),
        ("__OwningControllerProcess=１", "__OwningControllerProcess"),
    ])
    def test_hostile_numbers_are_513_naming_the_option(self, setting, option):
        # control_cmd.c control_setconf_helper: a value that does not parse is SETOPT_ERR_PARSE, 513.
        backend = FakeBackend()
        _, session = session_for(backend)
        answer = ask(session, "SETCONF " + setting)
        assert answer.startswith(f"513 Unacceptable option value: Could not parse {option} '".encode())
        assert answer.endswith(b"\r\n") and answer.count(b"\r\n") == 1 and len(answer) < 300
        assert backend.config == Config() and not session.should_close
        assert ask(session, "GETINFO version").startswith(b"250-version=")

    def test_apply_setconf_lists_every_value(self):
        config = config_from_torrc_text("Log notice stdout\n")
        lines = apply_setconf(config, [("Log", "info stdout"), ("Log", "warn stderr")])
        assert lines == [("Log", "info stdout"), ("Log", "warn stderr")]
        assert apply_setconf(config, [("HashedControlPassword", None)]) == []
        with pytest.raises(SetconfError) as caught:
            apply_setconf(config, [("Bogus", "1")])
        assert caught.value.code == 552

    def test_options_oppy_implements_are_set_not_refused_as_tor_only(self):
        """HTTPTunnelPort, DNSPort, UseBridges and Bridge are oppy options now: SETCONF sets them (a RELOAD
        passes every option, so one refused as "not implemented" failed every RELOAD), GETCONF reads them."""
        implemented = {name.lower() for name in OPTION_NAMES}
        assert [name for name in TOR_CLIENT_DEFAULTS if name.lower() in implemented] == []
        config = Config()
        lines = apply_setconf(config, [("HTTPTunnelPort", "127.0.0.1:9080"), ("DNSPort", "auto")])
        assert lines == [("HTTPTunnelPort", "127.0.0.1:9080"), ("DNSPort", "auto")]
        _, session = session_for(FakeBackend())
        assert ask(session, "GETCONF DNSPort UseBridges") == b"250-DNSPort\r\n250 UseBridges=0\r\n"


# --------------------------------------------------------------------------- events, signals


class TestHostileArguments:
    """Numbers and names from the controller are read as tor reads them: ASCII digits of any length
    (tor_parse_ulong), ASCII case-insensitive names (strcasecmp). Python's int() raised past 4300 digits
    (a 551 "Internal error") and str.upper() turned "ı" into "I". A CR not followed by LF stays inside
    the command line (found by atheris): repeated raw it broke the reply line, also a 551."""

    BIG = "1" * 5000

    @pytest.mark.parametrize("command, expected", [
        (f"CLOSECIRCUIT {BIG}", f'552 Unknown circuit "{BIG}"'),
        (f"EXTENDCIRCUIT {BIG}", f'552 Unknown circuit "{BIG}"'),
        (f"CLOSESTREAM {BIG} 1", f'552 Unknown stream "{BIG}"'),
        (f"CLOSESTREAM 1 {BIG}", f'552 Unrecognized reason "{BIG}"'),
        (f"ATTACHSTREAM {BIG} 5", f'552 Unknown stream "{BIG}"'),
        (f"ATTACHSTREAM 1 {BIG}", f'552 Unknown circuit "{BIG}"'),
        (f"ATTACHSTREAM 1 5 HOP={BIG}", f"552 Bad value hop={BIG}"),
        ("CLOSESTREAM 1 ２", '552 Unrecognized reason "２"'),
        ("SIGNAL act\u0131ve", '552 Unrecognized signal code "act\u0131ve"'),
        ("SETEVENTS c\u0131rc", '552 Unrecognized event "c\u0131rc"'),
        ("GETINFO a\rb", '552 Unrecognized key "a\\rb"'),
        ("GETCONF a\rb", '552 Unrecognized configuration key "a\\rb"'),
        ("CLOSESTREAM 1\rx 3", '552 Unknown stream "1\\rx"'),
        ("CLOSESTREAM 1 3\rx", '552 Unrecognized reason "3\\rx"'),
        ("CLOSECIRCUIT 5\rx", '552 Unknown circuit "5\\rx"'),
        ("SIGNAL NEW\rNYM", '552 Unrecognized signal code "NEW\\rNYM"'),
        ("SETEVENTS CIRC\rX", '552 Unrecognized event "CIRC\\rX"'),
        ("USEFEATURE a\rb", '552 Unrecognized feature "a\\rb"'),
    ])
    def test_replies(self, command, expected):
        backend = FakeBackend()
        built_circuit(backend, 5)
        add_stream(backend, 1, StreamState.NEW, awaiting=True)
        _, session = session_for(backend)
        assert ask(session, command) == expected.encode() + b"\r\n"
        assert backend.calls == [] and not session.should_close

    def test_leading_zeros_and_plus_find_the_circuit_as_strtoul_does(self):
        backend = FakeBackend()
        built_circuit(backend, 5)
        _, session = session_for(backend)
        assert ask(session, "CLOSECIRCUIT " + "0" * 5000 + "5") == b"250 OK\r\n"
        assert ask(session, "CLOSECIRCUIT +5") == b"250 OK\r\n"
        assert backend.calls == [("close_circuit", 5), ("close_circuit", 5)]

    def test_an_exception_in_authentication_is_551_and_the_session_goes_on(self, monkeypatch):
        from oppy.control.auth import Authenticator

        _, session = session_for()

        def broken(self, command):
            raise RuntimeError("a bug")

        monkeypatch.setattr(Authenticator, "_protocolinfo", broken)
        assert ask(session, "PROTOCOLINFO 1") == b"551 Internal error\r\n"
        assert not session.should_close
        assert ask(session, "GETINFO version").startswith(b"250-version=")
        _, fresh = session_for(authenticate=False)
        assert ask(fresh, "PROTOCOLINFO 1") == b"551 Internal error\r\n"
        assert fresh.should_close  # before authentication, nothing more


class TestEventsAndSignals:
    def test_setevents_is_all_or_nothing(self):
        hub, session = session_for()
        assert ask(session, "SETEVENTS CIRC BW") == b"250 OK\r\n"
        assert ask(session, "SETEVENTS CIRC FOO") == b'552 Unrecognized event "FOO"\r\n'
        assert session.events == {"CIRC", "BW"}
        hub.broadcast("BW", b"650 BW 1 2\r\n")
        hub.broadcast("STREAM", b"650 STREAM ...\r\n")
        assert session.data_to_send() == b"650 BW 1 2\r\n"

    def test_signal_answers_first_then_acts_and_reports(self):
        backend = FakeBackend()
        _, session = session_for(backend)
        ask(session, "SETEVENTS SIGNAL")
        assert ask(session, "SIGNAL newnym") == b"250 OK\r\n650 SIGNAL NEWNYM\r\n"
        assert ask(session, "SIGNAL HUP") == b"250 OK\r\n650 SIGNAL RELOAD\r\n"
        assert ask(session, "SIGNAL TERM") == b"250 OK\r\n"  # HALT is not reported
        assert ask(session, "SIGNAL FOO") == b'552 Unrecognized signal code "FOO"\r\n'
        assert [call for call in backend.calls if call[0] == "signal"] == [
            ("signal", "NEWNYM"), ("signal", "RELOAD"), ("signal", "HALT")]

    def test_log_events_follow_subscriptions(self):
        seen = []
        hub, session = session_for(on_subscriptions_changed=seen.append)
        ask(session, "SETEVENTS NOTICE WARN")
        assert seen[-1] == {"NOTICE", "WARN"}
        hub.log_message("notice", "Bootstrapped 100% (done): Done")
        hub.log_message("info", "not wanted")
        hub.log_message("warn", "careful\nnow")
        assert session.data_to_send() == b"650 NOTICE Bootstrapped 100% (done): Done\r\n650 WARN careful now\r\n"
        hub.close_session(session)
        assert seen[-1] == frozenset()


# --------------------------------------------------------------------------- circuits and streams


class TestCircuitCommands:
    def test_extendcircuit_with_and_without_path(self):
        backend = FakeBackend()
        _, session = session_for(backend)
        assert ask(session, f"EXTENDCIRCUIT 0 {FP[0]},${FP[1]}~middle1,exit2 purpose=general") == b"250 EXTENDED 1\r\n"
        assert backend.calls[-1] == ("launch", ["guard0", "middle1", "exit2"], "GENERAL")
        assert ask(session, "EXTENDCIRCUIT 0 purpose=controller") == b"250 EXTENDED 2\r\n"
        assert backend.calls[-1] == ("launch", [], "CONTROLLER")
        assert ask(session, "EXTENDCIRCUIT 0") == b"250 EXTENDED 3\r\n"

    def test_extendcircuit_errors(self):
        backend = FakeBackend()
        built_circuit(backend, 5)
        _, session = session_for(backend)
        assert ask(session, "EXTENDCIRCUIT 0 nobody") == b'552 No such router "nobody"\r\n'
        assert ask(session, "EXTENDCIRCUIT 9 guard0") == b'552 Unknown circuit "9"\r\n'
        assert ask(session, "EXTENDCIRCUIT 5") == b"512 syntax error: path required.\r\n"
        assert ask(session, "EXTENDCIRCUIT 0 guard0 purpose=bogus") == b'552 Unknown purpose "bogus"\r\n'
        built_circuit(backend, 6).path = []  # the double's way to refuse
        assert ask(session, "EXTENDCIRCUIT 6 exit3") == b"551 Couldn't send onion skin\r\n"

    def test_extendcircuit_extends_a_built_circuit(self):
        backend = FakeBackend()
        built_circuit(backend, 5)
        _, session = session_for(backend)
        assert ask(session, "EXTENDCIRCUIT 5 exit3") == b"250 EXTENDED 5\r\n"
        assert backend.calls[-1] == ("extend", 5, ["exit3"])

    def test_closecircuit(self):
        backend = FakeBackend()
        built = built_circuit(backend, 5)
        _, session = session_for(backend)
        assert ask(session, "CLOSECIRCUIT 9999 ") == b'552 Unknown circuit "9999"\r\n'
        assert ask(session, "CLOSECIRCUIT circ-5") == b'552 Unknown circuit "circ-5"\r\n'
        stream = add_stream(backend, 1, StreamState.SUCCEEDED)
        stream.managed_circuit = built
        assert ask(session, "CLOSECIRCUIT 5 IfUnused") == b"250 OK\r\n"
        assert ("close_circuit", 5) not in backend.calls
        assert ask(session, "CLOSECIRCUIT 5 ") == b"250 OK\r\n"
        assert ("close_circuit", 5) in backend.calls


class TestStreamCommands:
    def test_attachstream(self):
        backend = FakeBackend()
        built_circuit(backend, 5)
        backend.manager.circuits[6] = ManagedCircuit(6, TARGETS[:3], CircuitPurpose.GENERAL, 0.0, 1.0e9)
        built_circuit(backend, 7, hops=1)
        add_stream(backend, 1, StreamState.NEW, awaiting=True)
        add_stream(backend, 2, StreamState.NEW, awaiting=False)
        add_stream(backend, 3, StreamState.SUCCEEDED)
        _, session = session_for(backend)
        assert ask(session, "ATTACHSTREAM 9 5") == b'552 Unknown stream "9"\r\n'
        assert ask(session, "ATTACHSTREAM 1 9") == b'552 Unknown circuit "9"\r\n'
        assert ask(session, "ATTACHSTREAM 1 5 HOP=x") == b"552 Bad value hop=x\r\n"
        assert ask(session, "ATTACHSTREAM 2 5") == b"555 Connection is not managed by controller.\r\n"
        assert ask(session, "ATTACHSTREAM 3 5") == b"555 Connection is not managed by controller.\r\n"
        assert ask(session, "ATTACHSTREAM 1 6") == b"551 Can't attach stream to non-open origin circuit\r\n"
        assert ask(session, "ATTACHSTREAM 1 7") == b"551 Can't attach stream to this one-hop circuit.\r\n"
        assert ask(session, "ATTACHSTREAM 1 5 HOP=4") == b"551 Circuit doesn't have 4 hops.\r\n"
        assert ask(session, "ATTACHSTREAM 1 5 HOP=1") == b"551 Can't attach stream to this one-hop circuit.\r\n"
        assert ask(session, "ATTACHSTREAM 1 5") == b"250 OK\r\n"
        assert ask(session, "ATTACHSTREAM 1 0") == b"250 OK\r\n"
        # HOP=0 is tor's "no hop given"; HOP=2 of the three exits from the middle.
        assert ask(session, "ATTACHSTREAM 1 5 HOP=0") == b"250 OK\r\n"
        assert ask(session, "ATTACHSTREAM 1 5 HOP=2") == b"250 OK\r\n"
        assert ask(session, "ATTACHSTREAM 1 5 HOP=3") == b"250 OK\r\n"
        assert backend.calls[-5:] == [("attach", 1, 5, None), ("attach", 1, None, None), ("attach", 1, 5, None),
                                      ("attach", 1, 5, 2), ("attach", 1, 5, 3)]

    def test_closestream(self):
        backend = FakeBackend()
        add_stream(backend, 1, StreamState.SUCCEEDED)
        _, session = session_for(backend)
        assert ask(session, "CLOSESTREAM 9999 1 ") == b'552 Unknown stream "9999"\r\n'
        assert ask(session, "CLOSESTREAM 1 many") == b'552 Unrecognized reason "many"\r\n'
        assert ask(session, "CLOSESTREAM 1 6") == b"250 OK\r\n"
        assert backend.calls[-1] == ("close_stream", 1, 6)


class TestTrackers:
    def test_stream_events_in_tors_order(self):
        tracker = StreamEventTracker()
        stream = Stream(Sink(), "www.example.test", 80)
        managed = ManagedStream(4, stream, None, "127.0.0.1:4000")
        events = tracker.update(managed)
        managed.awaiting_controller = True
        events += tracker.update(managed)
        events += tracker.update(managed)  # repeated notification: nothing new
        circuit = ManagedCircuit(9, TARGETS[:3], CircuitPurpose.GENERAL, 0.0, 1.0e9)
        managed.managed_circuit, managed.awaiting_controller = circuit, False
        stream.state = StreamState.SENTCONNECT
        events += tracker.update(managed)
        stream.state = StreamState.SUCCEEDED
        events += tracker.update(managed)
        stream.state = StreamState.CLOSED
        stream.end = StreamEnd("done", EndReason.DONE, remote=True, before_connected=False)
        events += tracker.update(managed)
        events += tracker.update(managed)  # the SOCKS layer notifies the end twice
        parsed = [parse(event, "EVENT") for event in events]
        assert [(e.status, e.circ_id) for e in parsed] == [("NEW", None), ("CONTROLLER_WAIT", None),
                                                           ("SENTCONNECT", "9"), ("SUCCEEDED", "9"), ("CLOSED", "9")]
        assert (parsed[0].source_address, parsed[0].source_port) == ("127.0.0.1", 4000) and parsed[0].purpose == "USER"
        assert (parsed[-1].reason, parsed[-1].remote_reason) == ("END", "DONE")

    def test_failed_stream_is_failed_then_closed(self):
        tracker = StreamEventTracker()
        stream = Stream(Sink(), "127.0.0.1", 1)
        managed = ManagedStream(5, stream, None, None)
        tracker.update(managed)
        stream.state = StreamState.FAILED
        stream.end = StreamEnd("x", EndReason.TIMEOUT, remote=False, before_connected=True)
        events = [parse(event, "EVENT") for event in tracker.update(managed)]
        assert [(e.status, e.reason) for e in events] == [("FAILED", "TIMEOUT"), ("CLOSED", "TIMEOUT")]

    def test_circuit_events(self):
        tracker = CircuitEventTracker()
        managed = ManagedCircuit(3, TARGETS[:3], CircuitPurpose.GENERAL, 0.0, 1.0e9)
        events = tracker.update(managed)
        managed.status = CircuitStatus.EXTENDED
        for hops in (1, 2):
            managed.hops_built = hops
            events += tracker.update(managed)
            events += tracker.update(managed)
        managed.status, managed.hops_built = CircuitStatus.BUILT, 3
        events += tracker.update(managed)
        managed.status = CircuitStatus.CLOSED
        managed.error = CircuitError("closed on request", DestroyReason.REQUESTED)
        events += tracker.update(managed)
        parsed = [parse(event, "EVENT") for event in events]
        assert [(e.status, len(e.path)) for e in parsed] == [("LAUNCHED", 0), ("EXTENDED", 1), ("EXTENDED", 2),
                                                             ("BUILT", 3), ("CLOSED", 3)]
        assert parsed[-1].reason == "REQUESTED" and parsed[-1].created.year > 2000

    def test_directory_and_guard_wait_circuits_as_tor_reports_them(self):
        """A one-hop BEGIN_DIR circuit is tor's C_GENERAL with ONEHOP_TUNNEL and IS_INTERNAL; a circuit waiting
        for a better guard is GUARD_WAIT in events and circuit-status alike."""
        tracker = CircuitEventTracker()
        directory = ManagedCircuit(5, TARGETS[:1], CircuitPurpose.DIRECTORY, 0.0, 1.0e9)
        directory.status, directory.hops_built = CircuitStatus.BUILT, 1
        (launched, built) = [parse(event, "EVENT") for event in tracker.update(directory)]
        assert (launched.status, built.status, built.purpose) == ("LAUNCHED", "BUILT", "GENERAL")
        assert built.build_flags == ("ONEHOP_TUNNEL", "IS_INTERNAL", "NEED_CAPACITY")
        waiting = ManagedCircuit(6, TARGETS[:3], CircuitPurpose.GENERAL, 0.0, 1.0e9, need_uptime=True)
        waiting.status, waiting.hops_built = CircuitStatus.GUARD_WAIT, 3
        event = parse(tracker.update(waiting)[-1], "EVENT")
        assert (event.status, event.build_flags) == ("GUARD_WAIT", ("NEED_CAPACITY", "NEED_UPTIME"))
        line = circuit_status_entry(waiting, circuit_getinfo_status(waiting)).encode()
        assert parse(b"650 CIRC " + line + b"\r\n", "EVENT").status == "GUARD_WAIT"

    def test_remote_destroy_is_reported_as_destroyed(self):
        tracker = CircuitEventTracker()
        managed = ManagedCircuit(4, TARGETS[:3], CircuitPurpose.GENERAL, 0.0, 1.0e9)
        tracker.update(managed)
        managed.status, managed.hops_built = CircuitStatus.FAILED, 1
        managed.error = CircuitError("destroyed", DestroyReason.RESOURCELIMIT, remote=True, hop=1)
        event = parse(tracker.update(managed)[-1], "EVENT")
        assert (event.status, event.reason, event.remote_reason) == ("FAILED", "DESTROYED", "RESOURCELIMIT")

    def test_ns_entry_is_a_router_status_entry(self):
        entry = stem.descriptor.router_status_entry.RouterStatusEntryV3(ns_entry(relay_record(2)), validate=True)
        assert (entry.nickname, entry.address, entry.bandwidth) == ("exit2", "127.0.0.1", 300)


# --------------------------------------------------------------------------- traffic and links


class TestTraffic:
    def test_meter_counts_deltas_and_reports_orconn_events(self):
        class Channel:
            def __init__(self, rsa_id):
                self.expected_rsa_id = rsa_id
                self.identity = None        # (the real one's, once its handshake proved it)

        class Connection:
            def __init__(self, rsa_id):
                self.channel = Channel(rsa_id)
                self.bytes_read = self.bytes_written = 0

        class Links:
            def __init__(self):
                self.open = []
                self.pending = {}

            def connections(self):
                return list(self.open)

            def pending_identities(self):
                return list(self.pending)

        links = Links()
        meter = LinkTrafficMeter(links, lambda rsa_id: "relayname")
        rsa_id = bytes.fromhex(FP[0])
        links.pending[rsa_id] = []
        events = meter.connection_events()
        connection = Connection(rsa_id)
        links.pending.clear()
        links.open.append(connection)
        connection.bytes_read, connection.bytes_written = 1000, 200
        assert meter.sample() == (1000, 200)
        connection.bytes_read = 1500
        assert meter.sample() == (500, 0)
        events += meter.connection_events()
        assert meter.status_lines() == [f"${FP[0]}~relayname CONNECTED"]
        links.open.clear()
        events += meter.connection_events()
        parsed = [parse(event, "EVENT") for event in events]
        assert [(e.status, e.id) for e in parsed] == [("LAUNCHED", "1"), ("CONNECTED", "1"), ("CLOSED", "1")]
        assert (meter.total_read, meter.total_written) == (1500, 200)

    def test_a_failed_link_reports_its_reason(self):
        class Links:
            def __init__(self):
                self.pending = {}

            def connections(self):
                return []

            def pending_identities(self):
                return list(self.pending)

        links = Links()
        meter = LinkTrafficMeter(links, lambda rsa_id: None)
        for rsa_id, failure in ((bytes.fromhex(FP[0]), "IDENTITY"), (bytes.fromhex(FP[1]), None)):
            links.pending[rsa_id] = []
            meter.connection_events()
            del links.pending[rsa_id]
            if failure is not None:
                meter.link_event(LinkFailed(RelayTarget("bridge", rsa_id, "127.0.0.1", 1), "wrong", failure))
            (event,) = [parse(event, "EVENT") for event in meter.connection_events()]
            # Without the link pool's word (a double of the pool), CONNECTREFUSED as before.
            assert (event.status, event.reason) == ("FAILED", failure or "CONNECTREFUSED")
