"""oppy in a Twisted program: ``oppy.launch(reactor, ...)`` runs the daemon in this process, on the caller's
reactor, with no SOCKS listener unless one is asked for.

    tor = oppy.launch(reactor, data_directory="/var/lib/myapp/oppy", DirAuthority=[...])
    yield tor.bootstrapped
    protocol = yield tor.endpoint("example.com", 80).connect(factory)
    response = yield treq.get("http://example.com/", agent=tor.agent())
    yield tor.stop()

Options are torrc options in tor's spelling (any case), as keyword arguments: a string, a number, a bool
(1/0) or a list of them for a repeated line (``DirAuthority=[...]``, ``SocksPort=["9150", "9151"]``). oppy's
log records go to Python's ``logging`` (the ``oppy`` logger) as the program configured it; ``Log`` lines are
not applied.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet import defer
from twisted.python.failure import Failure

from oppy.config import Config, ConfigError, ConfigLine, config_from_lines
from oppy.daemon import Daemon
from oppy.endpoints import TorClientEndpoint, isolation_credentials, register_in_process, unregister_in_process
from oppy.stream.stream import StreamKind
from oppy import web

__all__ = ["launch", "LaunchedOppy", "LaunchError"]

#: oppy's bootstrap is done at 100% (tor's "Bootstrapped 100% (done)").
BOOTSTRAP_DONE_PERCENT = 100


class LaunchError(Exception):
    """oppy could not be started with these options (a bad option, a port in use, no DirAuthority while
    OPPY_FORBID_PUBLIC_NETWORK is set); nothing is left running."""


def _option_lines(torrc_options: dict[str, object]) -> list[ConfigLine]:
    lines = []
    for name, value in torrc_options.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if isinstance(item, bool):
                item = "1" if item else "0"
            lines.append(ConfigLine(name, str(item)))
    return lines


def library_config(data_directory: str, torrc_options: dict[str, object]) -> Config:
    """The configuration of an in-process oppy: the options given, no SOCKS listener unless SocksPort is one
    of them, and the data directory."""
    defaults = [ConfigLine("SocksPort", "0")]
    try:
        return config_from_lines([defaults, _option_lines(torrc_options),
                                  [ConfigLine("DataDirectory", str(data_directory))]])
    except ConfigError as exc:
        raise LaunchError(str(exc)) from None


class LaunchedOppy:
    """One oppy running in this process. Make it with :func:`launch`."""

    def __init__(self, reactor, config: Config, temporary_directory: str | None = None) -> None:
        self.reactor = reactor
        self.config = config
        self._temporary_directory = temporary_directory
        #: Fires (with this object) when the bootstrap reaches 100%: a circuit for client streams is built.
        self.bootstrapped: defer.Deferred = defer.Deferred()
        self._stopped: defer.Deferred | None = None
        try:
            self.daemon = Daemon(config, reactor)
            self.daemon.directory.bootstrap.add_observer(self._bootstrap_progress)
            self.daemon.start()
        except SystemExit as exc:  # the daemon's refusal to start (it is the command line's exit message)
            self._remove_temporary_directory()
            raise LaunchError(str(exc)) from None
        register_in_process(reactor, self)

    def _bootstrap_progress(self, percent: int, tag: str, summary: str) -> None:
        if percent >= BOOTSTRAP_DONE_PERCENT and not self.bootstrapped.called:
            self.bootstrapped.callback(self)

    # -------------------------------------------------------------------- what it serves

    @property
    def socks_addresses(self) -> list[tuple[str, int]]:
        """The SOCKS listeners' (host, port), when SocksPort was given."""
        return [(host.host, host.port) for host in (listener.getHost() for listener in self.daemon.socks_listeners)]

    @property
    def control_addresses(self) -> list[tuple[str, int]]:
        """The control listeners' (host, port), when ControlPort was given."""
        control = self.daemon.control
        return control.bound_addresses() if control is not None else []

    def open_stream(self, sink, host: str, port: int, kind: StreamKind = StreamKind.CONNECT,
                    credentials: object = None, source: str | None = None):
        """A stream through this oppy's circuits (what TorClientEndpoint uses)."""
        if self._stopped is not None:
            raise RuntimeError("this oppy has been stopped")
        return self.daemon.manager.open_stream(sink, host, port, kind, credentials=credentials, source=source)

    def endpoint(self, host: str, port: int, *, username: str | bytes | None = None,
                 password: str | bytes | None = None) -> TorClientEndpoint:
        """An IStreamClientEndpoint to host:port through this oppy; ``username``/``password`` isolate."""
        return TorClientEndpoint(host, port, tor=self, username=username, password=password)

    def agent(self, *, username: str | bytes | None = None, password: str | bytes | None = None, **kwargs):
        """A twisted.web Agent (for treq) whose requests go through this oppy; see :func:`oppy.web.agent`."""
        isolation_credentials(username, password)  # a bad credential fails here, not at the first request
        return web.agent(self.reactor, tor=self, username=username, password=password, **kwargs)

    def newnym(self) -> None:
        """tor's SIGNAL NEWNYM: streams from now on get new circuits."""
        self.daemon.manager.newnym()

    # -------------------------------------------------------------------- stop

    def stop(self) -> defer.Deferred:
        """Close every stream, circuit, link and listener; fires once they are closed and the state is on
        disk, leaving nothing scheduled on the reactor."""
        if self._stopped is not None:
            return self._stopped
        unregister_in_process(self.reactor, self)
        self.daemon.directory.bootstrap.remove_observer(self._bootstrap_progress)
        if not self.bootstrapped.called:
            self.bootstrapped.errback(LaunchError("oppy was stopped before it bootstrapped"))
            self.bootstrapped.addErrback(lambda failure: None)
        done = self.daemon.stop()
        done.addCallback(lambda _: self.daemon.closed())
        done.addBoth(self._after_stop)
        self._stopped = done
        return done

    def _after_stop(self, result):
        self._remove_temporary_directory()
        return result if isinstance(result, Failure) else None

    def _remove_temporary_directory(self) -> None:
        if self._temporary_directory is not None:
            shutil.rmtree(self._temporary_directory, ignore_errors=True)
            self._temporary_directory = None


def launch(reactor, data_directory: str | os.PathLike | None = None, **torrc_options) -> LaunchedOppy:
    """Start an oppy in this process on ``reactor`` with ``torrc_options`` (tor's option names). Without
    ``data_directory`` a temporary one is used and removed by ``stop()``. Raises LaunchError at once when it
    cannot start; ``bootstrapped`` fires when it can carry streams."""
    temporary = None
    if data_directory is None:
        temporary = data_directory = tempfile.mkdtemp(prefix="oppy-")
    config = library_config(str(data_directory), torrc_options)
    return LaunchedOppy(reactor, config, temporary)
