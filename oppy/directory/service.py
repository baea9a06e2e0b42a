"""The directory service: bootstrap, keep a verified consensus and its microdescriptors, publish them as
NetDirs.

What it does, in tor's order (dir-spec client-operation; C tor ``networkstatus.c``,
``microdesc.c``, ``nodelist.c``, ``control_bootstrap.c``):

1. Load the DataDirectory cache and check it again (signatures, times). A live cached
   consensus with its microdescriptors means no fetch at all before circuits can be built.
2. Otherwise fetch the microdesc consensus from the fallback directories, then the
   authorities as the last resort (each in random order, the next on any failure), fetch
   the key certificates its signatures need, verify it, and fetch the missing
   microdescriptors (92 per request, each checked against the digest it was asked for).
3. Once there is enough directory information (tor's rule: microdescriptors for at least
   ``min_paths_for_circs_pct`` (60%) of the weighted guard x middle x exit bandwidth, and
   for the first primary guards), later fetches go to directory guards first, then the
   fallbacks and the authorities.
4. Refresh the consensus at a random time in tor's window before it expires, fetch only the
   microdescriptors that are new.

Every request, the very first included, is a BEGIN_DIR stream on a one-hop circuit the
circuit manager builds to the relay's ORPort, as C tor clients do: no DirPort is ever
contacted, so nobody on the path sees a cleartext directory request. The relay's RSA
identity (from its FallbackDir or DirAuthority line, or the consensus) is proved by the
link handshake; the circuit is created with CREATE_FAST while its onion key is unknown,
and with ntor once its microdescriptor is held.

Each new consensus and each batch of microdescriptors makes a new :class:`~oppy.netdoc.netdir.NetDir`,
swapped in whole (:attr:`DirectoryService.netdir`), handed to the path layer's
:class:`~oppy.path.chooser.PathChooser` (which keeps the guard sample; this service keeps its state
file) and announced to observers with :class:`~oppy.netdoc.netdir.NetDirChanged`.

A document that fails a check is rejected with a WARN line that says why, and the last good
consensus stays in use. Whatever goes wrong at one source (a bad answer, a malformed document,
a bug met on the way), the next source is tried; and every round has an outer deadline, so that
nothing a source does can keep later refreshes waiting. When no source answers, one WARN line
says so and fetches are retried with capped exponential backoff. Parsing and verification run in worker threads
(``deferToThreadPool``); the reactor thread only moves results around.

With bridges (the path chooser holds a :class:`~oppy.path.bridges.BridgeSet`: UseBridges), no authority,
fallback or relay is asked for anything: each bridge's own descriptor is fetched from it first
(``/tor/server/authority``, on a CREATE_FAST circuit), checked against the bridge's identity and handed to
the path layer, and the consensus, certificates and microdescriptors come from the bridges alone (the
authorities' lines only check the signatures). A bridge that cannot be reached, or proves another identity,
is marked down and retried on the guard schedule while the others are used.

Progress is logged as tor logs it, ``Bootstrapped N% (tag): summary`` at notice level, and is
readable as :attr:`DirectoryService.bootstrap_phase`; the daemon reports the phases after 75%
(``ap_conn`` ... ``done``) through :meth:`DirectoryService.report_bootstrap`.
"""

from __future__ import annotations

import enum
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from twisted.internet import defer, threads
from twisted.python.failure import Failure

from oppy.directory.cache import (
    CacheError,
    DirectoryCache,
    split_key_certificates,
    split_microdescriptors,
    split_router_descriptors,
)
from oppy.directory.client import (
    MAX_CERTIFICATES_SIZE,
    MAX_CONSENSUS_SIZE,
    MAX_MICRODESCS_PER_REQUEST,
    MAX_MICRODESCS_RESPONSE_SIZE,
    DirectoryClient,
    DirectoryConnectionError,
    DirectoryRequestError,
    DirectoryStatusError,
    DirectoryTimeoutError,
    bridge_descriptor_url,
    consensus_url,
    key_certificates_url,
    microdescriptors_url,
)
from oppy.link.connection import LinkConnected, LinkEvent, LinkFailed, LinkLaunched, LinkOpened
from oppy.logs import NOTICE
from oppy.netdoc.authorities import DirAuthority, FallbackDir, v3_authorities
from oppy.netdoc.documents import (
    CONSENSUS_FLAVOR_MICRODESC,
    Consensus,
    KeyCertificate,
    MicrodescRecord,
    consensus_refresh_time,
    microdesc_digest,
    parse_consensus,
    parse_key_certificates,
    parse_microdescriptors,
)
from oppy.netdoc.errors import (
    CertificateError,
    ConsensusParseError,
    DirectoryError,
    DocumentParseError,
)
from oppy.netdoc.fields import format_time
from oppy.netdoc.netdir import NetDir, NetDirChanged
from oppy.netdoc.relay import RelayTarget
from oppy.netdoc.router import MAX_ROUTER_DESCRIPTOR_SIZE, RouterDescriptor, parse_router_descriptor
from oppy.netdoc.verify import REASONABLY_LIVE_TIME, ConsensusVerification, verify_consensus, \
    verify_key_certificate
from oppy.path.chooser import GuardsChanged, PathChooser
from oppy.path.guards import GuardStateError

__all__ = [
    "BootstrapPhase",
    "BootstrapProblem",
    "BootstrapStatus",
    "DirectorySource",
    "SourceKind",
    "DirectoryService",
    "ConsensusNotNewerError",
    "signature_key_ids",
]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ constants

#: tor's If-Modified-Since for a consensus fetch: valid-after plus this, or plus half the
#: voting interval when that is shorter (directory.c, DEFAULT_IF_MODIFIED_SINCE_DELAY).
IF_MODIFIED_SINCE_DELAY = 180
#: How far in the future a fetched consensus's valid-after may be (our clock may lag a little).
CONSENSUS_CLOCK_SKEW_TOLERANCE = 60
#: Microdescriptors no consensus has listed for this long are dropped (tor microdesc.c,
#: TOLERATE_MICRODESC_AGE: 7 days).
MICRODESC_UNLISTED_LIFETIME = 7 * 24 * 3600
#: Microdescriptor requests in flight at once (tor launches a few in parallel:
#: ``initiate_descriptor_downloads`` splits the wanted set over several connections).
MAX_PARALLEL_MICRODESC_REQUESTS = 4
#: How many directory guards to try before the fallbacks and the authorities.
DIRECTORY_GUARDS_TO_TRY = 3
#: tor's nickname for a relay that has none (a FallbackDir line names none).
UNNAMED = "Unnamed"
#: Outer deadline of one consensus round (every source in turn, with certificates and checks) and of
#: the fetches of one microdescriptor round. Each request has its own timeout; this bounds the round
#: whatever happens inside it, so that a later refresh never joins a round that cannot end. tor gives a
#: stalled directory connection as long (connection_dir_is_stalled, DIR_CONN_MAX_STALL: 5 minutes).
DIRECTORY_ROUND_DEADLINE = 300.0
#: Capped exponential backoff between failed rounds: (initial delay, cap) in seconds. A
#: TestingTorNetwork replaces its consensus every few seconds to minutes, so it backs off less.
CONSENSUS_RETRY = (2.0, 300.0)
CONSENSUS_RETRY_TESTING = (1.0, 20.0)
MICRODESC_RETRY = (5.0, 600.0)
MICRODESC_RETRY_TESTING = (1.0, 20.0)
#: A bridge's descriptor is fetched again this long after it was learned, so that a rotated onion key is
#: seen (tor config.c TestingBridgeDownloadInitialDelay, 3 hours, used by bridges.c learned_bridge_descriptor).
BRIDGE_DESCRIPTOR_REFETCH = 3 * 3600.0

_SIGNATURE_LINE_RE = re.compile(
    rb"^directory-signature (?:[A-Za-z0-9-]+ )?([0-9A-Fa-f]{40}) ([0-9A-Fa-f]{40})\s*$", re.M)


class ConsensusNotNewerError(DirectoryError):
    """A fetched consensus is valid but not newer than the one in use."""


# ------------------------------------------------------------------------------------------ bootstrap


class BootstrapPhase(enum.IntEnum):
    """tor's bootstrap phases (control-spec "Bootstrap phases"; tor control_events.h): value = percent."""

    STARTING = 0
    CONN_PT = 1
    CONN_DONE_PT = 2
    CONN = 5
    CONN_DONE = 10
    HANDSHAKE = 14
    HANDSHAKE_DONE = 15
    ONEHOP_CREATE = 20
    REQUESTING_STATUS = 25
    LOADING_STATUS = 30
    LOADING_KEYS = 40
    REQUESTING_DESCRIPTORS = 45
    LOADING_DESCRIPTORS = 50
    ENOUGH_DIRINFO = 75
    AP_CONN = 80
    AP_CONN_DONE = 85
    AP_HANDSHAKE = 89
    AP_HANDSHAKE_DONE = 90
    CIRCUIT_CREATE = 95
    DONE = 100

    @property
    def tag(self) -> str:
        return self.name.lower()

    @property
    def summary(self) -> str:
        return _BOOTSTRAP_SUMMARIES[self]


#: tor control_bootstrap.c ``boot_to_str_tab``.
_BOOTSTRAP_SUMMARIES = {
    BootstrapPhase.STARTING: "Starting",
    BootstrapPhase.CONN_PT: "Connecting to pluggable transport",
    BootstrapPhase.CONN_DONE_PT: "Connected to pluggable transport",
    BootstrapPhase.CONN: "Connecting to a relay",
    BootstrapPhase.CONN_DONE: "Connected to a relay",
    BootstrapPhase.HANDSHAKE: "Handshaking with a relay",
    BootstrapPhase.HANDSHAKE_DONE: "Handshake with a relay done",
    BootstrapPhase.ONEHOP_CREATE: "Establishing an encrypted directory connection",
    BootstrapPhase.REQUESTING_STATUS: "Asking for networkstatus consensus",
    BootstrapPhase.LOADING_STATUS: "Loading networkstatus consensus",
    BootstrapPhase.LOADING_KEYS: "Loading authority key certs",
    BootstrapPhase.REQUESTING_DESCRIPTORS: "Asking for relay descriptors",
    BootstrapPhase.LOADING_DESCRIPTORS: "Loading relay descriptors",
    BootstrapPhase.ENOUGH_DIRINFO: "Loaded enough directory info to build circuits",
    BootstrapPhase.AP_CONN: "Connecting to a relay to build circuits",
    BootstrapPhase.AP_CONN_DONE: "Connected to a relay to build circuits",
    BootstrapPhase.AP_HANDSHAKE: "Finishing handshake with a relay to build circuits",
    BootstrapPhase.AP_HANDSHAKE_DONE: "Handshake finished with a relay to build circuits",
    BootstrapPhase.CIRCUIT_CREATE: "Establishing a Tor circuit",
    BootstrapPhase.DONE: "Done",
}

#: Progress inside a phase is logged at notice only after this many more percent
#: (tor control_bootstrap.c BOOTSTRAP_PCT_INCREMENT).
BOOTSTRAP_PCT_INCREMENT = 5
#: After this many problems a bootstrap problem is recommended as a warning (tor control_bootstrap.c
#: BOOTSTRAP_PROBLEM_THRESHOLD); with bridges every one is.
BOOTSTRAP_PROBLEM_THRESHOLD = 10


@dataclass(frozen=True, slots=True)
class BootstrapProblem:
    """A connection failure while bootstrapping, as tor reports it (control_bootstrap.c
    control_event_bootstrap_problem; control-spec "Status events", BOOTSTRAP with WARNING)."""

    #: What went wrong, in words.
    warning: str
    #: control-spec's ORCONN reason (CONNECTREFUSED, IDENTITY, TIMEOUT, ...).
    reason: str
    #: How many problems so far.
    count: int
    #: "warn" when a user should hear of it, else "ignore".
    recommendation: str
    #: ``$FP~nickname`` of the relay or bridge, and its address and port.
    host: str
    hostaddr: str


class BootstrapStatus:
    """Bootstrap progress as tor tracks it (``control_event_bootstrap``): it only moves forward.

    ``report(phase)`` enters a phase; ``report(phase, progress)`` reports a percentage inside
    it (loading descriptors). Each step forward is logged ``Bootstrapped N% (tag): summary``
    at notice (small steps inside a phase at info) and passed to the observers as
    ``(percent, tag, summary)``.
    """

    def __init__(self, logger: logging.Logger = log) -> None:
        self.logger = logger
        #: -1 until the first report (tor BOOTSTRAP_STATUS_UNDEF).
        self.percent = -1
        self.phase: BootstrapPhase | None = None
        self._notice_percent = 0
        self._observers: list[Callable[[int, str, str], None]] = []
        #: The last problem since the last step forward (GETINFO status/bootstrap-phase says WARN then).
        self.problem: BootstrapProblem | None = None
        self.problem_count = 0
        self._problem_observers: list[Callable[[BootstrapProblem], None]] = []

    @property
    def tag(self) -> str:
        return self.phase.tag if self.phase is not None else "undef"

    @property
    def summary(self) -> str:
        return self.phase.summary if self.phase is not None else "Undefined"

    def as_tuple(self) -> tuple[int, str, str]:
        return (max(self.percent, 0), self.tag, self.summary)

    def add_observer(self, observer: Callable[[int, str, str], None]) -> None:
        self._observers.append(observer)

    def remove_observer(self, observer: Callable[[int, str, str], None]) -> None:
        self._observers = [known for known in self._observers if known is not observer]

    def add_problem_observer(self, observer: Callable[[BootstrapProblem], None]) -> None:
        self._problem_observers.append(observer)

    def remove_problem_observer(self, observer: Callable[[BootstrapProblem], None]) -> None:
        self._problem_observers = [known for known in self._problem_observers if known is not observer]

    def report_problem(self, warning: str, reason: str, host: str, hostaddr: str, *, warn: bool = False) -> None:
        """A connection failed before the bootstrap was done: ``Problem bootstrapping. Stuck at N% (tag):
        summary. (warning; reason; count N; recommendation R; host H at A)``, recommended "warn" when
        ``warn`` or once the problems reach BOOTSTRAP_PROBLEM_THRESHOLD. It is for controllers (observers:
        STATUS_CLIENT; GETINFO status/bootstrap-phase) and logged at info: the directory's own warning
        (no source could be reached, a bridge is not used) is the one line a user reads."""
        if self.percent >= BootstrapPhase.DONE:
            return
        self.problem_count += 1
        warn = warn or self.problem_count >= BOOTSTRAP_PROBLEM_THRESHOLD
        problem = BootstrapProblem(warning, reason, self.problem_count, "warn" if warn else "ignore", host,
                                   hostaddr)
        self.problem = problem
        percent, tag, summary = self.as_tuple()
        self.logger.log(logging.INFO,
                        "Problem bootstrapping. Stuck at %d%% (%s): %s. (%s; %s; count %d; recommendation %s; "
                        "host %s at %s)", percent, tag, summary, warning, reason, problem.count,
                        problem.recommendation, host, hostaddr)
        for observer in list(self._problem_observers):
            try:
                observer(problem)
            except Exception:  # noqa: BLE001 - an observer's bug must not stop the bootstrap
                self.logger.exception("bootstrap problem observer %r failed", observer)

    def report(self, phase: BootstrapPhase, progress: int = 0) -> bool:
        """Record a step; return True if it moved the bootstrap forward (and was logged)."""
        if self.percent >= BootstrapPhase.DONE:
            return False
        level = NOTICE
        if phase <= self.percent:
            if not progress or progress <= self.percent:
                return False
            if progress < self._notice_percent + BOOTSTRAP_PCT_INCREMENT:
                level = logging.INFO
        shown = progress or int(phase)
        self.problem = None
        self.logger.log(level, "Bootstrapped %d%% (%s): %s", shown, phase.tag, phase.summary)
        if phase > self.percent:
            self.phase = phase
            self.percent = int(phase)
        if progress > self.percent:
            self.percent = progress
        if level == NOTICE and self.percent > self._notice_percent:
            self._notice_percent = self.percent
        for observer in list(self._observers):
            try:
                observer(shown, phase.tag, phase.summary)
            except Exception:  # noqa: BLE001 - an observer's bug must not stop the bootstrap
                self.logger.exception("bootstrap observer %r failed", observer)
        return True


# ------------------------------------------------------------------------------------------ pure helpers


class SourceKind(enum.Enum):
    """Why a relay is asked for directory documents (tor: directory guards once bootstrapped, else the
    fallback directories, the authorities last)."""

    DIRECTORY_GUARD = "directory_guard"
    #: A V2Dir relay drawn by its directory weight, after the directory guards.
    CACHE = "cache"
    FALLBACK = "fallback"
    AUTHORITY = "authority"
    #: UseBridges: a bridge, the only kind of source there is.
    BRIDGE = "bridge"


@dataclass(frozen=True, slots=True)
class DirectorySource:
    """Where a directory request goes: a BEGIN_DIR stream on a one-hop circuit to ``target``'s ORPort."""

    target: RelayTarget
    kind: SourceKind

    @property
    def nickname(self) -> str:
        return self.target.nickname

    def describe(self) -> str:
        return f"{self.target.describe()} at {self.target.address}:{self.target.or_port} (BEGIN_DIR)"


def signature_key_ids(consensus: bytes) -> set[tuple[str, str]]:
    """(v3ident, signing key digest) of every ``directory-signature`` line, upper-case hex."""
    tail_start = consensus.rfind(b"\ndirectory-footer")
    tail = consensus[tail_start:] if tail_start >= 0 else consensus
    return {(ident.decode().upper(), key.decode().upper())
            for ident, key in _SIGNATURE_LINE_RE.findall(tail)}


@dataclass(slots=True)
class _CheckedConsensus:
    #: The consensus with the microdescriptors held when the check started.
    netdir: NetDir
    verification: ConsensusVerification


def _check_consensus(raw: bytes, certificates: list[KeyCertificate], authorities: Sequence[DirAuthority],
                     now: float, newer_than: int | None, stale_tolerance: float,
                     microdescs: Mapping[str, MicrodescRecord] | None = None,
                     prepare: Callable[[NetDir], Any] | None = None) -> _CheckedConsensus:
    """Verify, then parse, then make the NetDir and ``prepare`` it (worker thread).

    Raises a DirectoryError subclass saying why the document is not acceptable.
    """
    verification = verify_consensus(raw, certificates, authorities, now, stale_tolerance=stale_tolerance,
                                    skew_tolerance=CONSENSUS_CLOCK_SKEW_TOLERANCE)
    header = verification.header
    if header.flavor != CONSENSUS_FLAVOR_MICRODESC:
        raise ConsensusParseError(f"expected a microdesc consensus, got flavour {header.flavor!r}")
    if newer_than is not None and header.valid_after <= newer_than:
        raise ConsensusNotNewerError(
            f"consensus valid-after {format_time(header.valid_after)} is not newer than the one in use "
            f"(valid-after {format_time(newer_than)})")
    netdir = NetDir(parse_consensus(raw), microdescs or {})
    if prepare is not None:
        prepare(netdir)
    return _CheckedConsensus(netdir, verification)


@dataclass(slots=True)
class _MicrodescBatch:
    records: dict[str, MicrodescRecord]
    bodies: dict[str, bytes]
    last_listed: dict[str, float]
    invalid: dict[str, str]
    unrequested: int


def _parse_microdescs(data: bytes, wanted: Iterable[str] | None) -> _MicrodescBatch:
    """Parse microdescriptors and keep the exact text of each wanted one (worker thread)."""
    batch = parse_microdescriptors(data, wanted)
    bodies: dict[str, bytes] = {}
    last_listed: dict[str, float] = {}
    for body, listed in split_microdescriptors(data):
        record = batch.microdescs.get(microdesc_digest(body))
        if record is not None:
            # Keyed by the record's digest string (the consensus entry's), not by one more copy of it.
            bodies[record.digest] = body
            if listed is not None:
                last_listed[record.digest] = listed
    return _MicrodescBatch(batch.microdescs, bodies, last_listed, batch.invalid, batch.unrequested)


def _parse_certificates(data: bytes, authorities: Sequence[DirAuthority], now: float
                        ) -> tuple[list[tuple[KeyCertificate, bytes]], list[str]]:
    """Parse and verify each certificate on its own (worker thread): (good ones, problems)."""
    good: list[tuple[KeyCertificate, bytes]] = []
    problems: list[str] = []
    for text in split_key_certificates(data):
        try:
            (certificate,) = parse_key_certificates(text)
            verify_key_certificate(certificate, authorities, now)
        except (DocumentParseError, CertificateError) as exc:
            problems.append(f"{type(exc).__name__}: {exc}")
            continue
        good.append((certificate, text))
    return good, problems


@dataclass(slots=True)
class _CacheContents:
    certificates: list[tuple[KeyCertificate, bytes]] = field(default_factory=list)
    certificate_problems: list[str] = field(default_factory=list)
    consensus_raw: bytes | None = None
    checked: _CheckedConsensus | None = None
    consensus_problem: str | None = None
    microdescs: _MicrodescBatch | None = None
    microdescs_problem: str | None = None
    state: dict[str, Any] | None = None
    state_problem: str | None = None
    #: UseBridges: the cached bridge descriptors that verify, with their text.
    bridge_descriptors: list[tuple[RouterDescriptor, bytes]] = field(default_factory=list)
    bridge_descriptor_problems: list[str] = field(default_factory=list)


def _bridge_key(target: RelayTarget) -> str:
    """A bridge descriptor fetch's bookkeeping key: the identity asked for, or ``IP:PORT`` for a bridge
    asked without one (its Bridge line gives no fingerprint)."""
    return target.fingerprint or f"{target.address}:{target.or_port}"


def _load_bridge_descriptors(cache: DirectoryCache, contents: _CacheContents) -> None:
    """Each cached bridge descriptor on its own: one that does not verify is reported, the others kept."""
    try:
        data = cache.read_bridge_descriptors()
    except CacheError as exc:
        contents.bridge_descriptor_problems.append(str(exc))
        return
    for text in split_router_descriptors(data or b""):
        try:
            contents.bridge_descriptors.append((parse_router_descriptor(text), text))
        except DirectoryError as exc:
            contents.bridge_descriptor_problems.append(f"{type(exc).__name__}: {exc}")


def _load_cache(cache: DirectoryCache, authorities: Sequence[DirAuthority], now: float,
                prepare: Callable[[NetDir], Any] | None = None, bridges: bool = False) -> _CacheContents:
    """Read and check everything the DataDirectory holds (worker thread).

    Each file stands on its own: one that cannot be read or is malformed is reported and
    the others are still used (a damaged microdescriptor cache must not cost the guards).
    """
    contents = _CacheContents()
    try:
        raw_certificates = cache.read_certificates()
        if raw_certificates:
            contents.certificates, contents.certificate_problems = _parse_certificates(
                raw_certificates, authorities, now)
    except CacheError as exc:
        contents.certificate_problems.append(str(exc))
    try:
        contents.consensus_raw = cache.read_consensus()
        if contents.consensus_raw:
            contents.checked = _check_consensus(
                contents.consensus_raw, [c for c, _ in contents.certificates], authorities, now,
                None, REASONABLY_LIVE_TIME)
    except (CacheError, DirectoryError) as exc:
        contents.consensus_problem = f"{type(exc).__name__}: {exc}"
    # Microdescriptors are named by their digest, so they stay good without a consensus;
    # with one, only those it lists are kept.
    checked = contents.checked
    try:
        raw_microdescs = cache.read_microdescriptors()
        if raw_microdescs:
            contents.microdescs = _parse_microdescs(
                raw_microdescs, checked.netdir.consensus.microdesc_digests() if checked is not None else None)
    except (CacheError, DirectoryError) as exc:
        contents.microdescs_problem = f"{type(exc).__name__}: {exc}"
    if checked is not None and contents.microdescs is not None:
        checked.netdir = checked.netdir.with_microdescs(contents.microdescs.records)
    if checked is not None and prepare is not None:
        prepare(checked.netdir)
    try:
        contents.state = cache.read_state()
    except CacheError as exc:
        contents.state_problem = str(exc)
    if bridges:
        _load_bridge_descriptors(cache, contents)
    return contents


def _backoff(attempt: int, schedule: tuple[float, float]) -> float:
    initial, cap = schedule
    return min(cap, initial * (2 ** min(attempt, 30)))


# ------------------------------------------------------------------------------------------ the service


class DirectoryCircuits(Protocol):
    """Who builds the one-hop circuits BEGIN_DIR requests ride (:class:`oppy.circuit.manager.CircuitManager`)."""

    def directory_circuit(self, target: RelayTarget) -> defer.Deferred:
        """A Deferred firing with an open one-hop :class:`~oppy.circuit.circuit.Circuit` to ``target``, or
        failing."""


class DirectoryService:
    """Keeps the client's view of the network current: fetches, caches and schedules, and publishes NetDirs.

    ``authorities`` are :class:`DirAuthority` records (defaults or torrc ``DirAuthority``
    lines), ``fallback_dirs`` :class:`FallbackDir` records (the relays asked first at
    bootstrap); ``circuits`` builds the one-hop circuits of BEGIN_DIR requests (the circuit
    manager); ``links``, if given, is the :class:`~oppy.link.connection.LinkPool` whose
    progress is reported as the bootstrap's connection phases; ``clock`` returns POSIX
    seconds (wall time, used for document validity); timers run on ``reactor``. ``paths``
    is the client's :class:`PathChooser`: it is handed each NetDir, chooses the directory
    guards and caches, and holds the guard sample this service loads and saves (a chooser
    of its own if none is given). ``client`` and ``run_in_thread`` can be replaced in tests.
    """

    def __init__(self, authorities: Iterable[DirAuthority], data_directory: Path | str,
                 circuits: DirectoryCircuits, testing_tor_network: bool = False, reactor=None,
                 clock: Callable[[], float] = time.time, *, fallback_dirs: Iterable[FallbackDir] = (),
                 links=None, rng: random.Random | None = None,
                 client: DirectoryClient | None = None,
                 run_in_thread: Callable[..., defer.Deferred] | None = None,
                 paths: PathChooser | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.authorities = tuple(authorities)
        self.v3_authorities = v3_authorities(self.authorities)
        if not self.v3_authorities:
            raise ValueError("no v3 directory authorities are configured")
        self.fallback_dirs = tuple(fallback_dirs)
        self.data_directory = Path(data_directory)
        self.cache = DirectoryCache(self.data_directory)
        self.circuits = circuits
        self.links = links
        self.testing_tor_network = testing_tor_network
        self.reactor = reactor
        self.clock = clock
        self.rng = rng if rng is not None else random.SystemRandom()
        self.paths = paths if paths is not None else PathChooser(
            rng=self.rng, clock=clock, enforce_distinct_subnets=not testing_tor_network)
        self.paths.add_observer(self._guards_changed)
        self.client = client if client is not None else DirectoryClient(reactor)
        self._run_in_thread = run_in_thread or self._default_run_in_thread
        self._consensus_retry = CONSENSUS_RETRY_TESTING if testing_tor_network else CONSENSUS_RETRY
        self._microdesc_retry = MICRODESC_RETRY_TESTING if testing_tor_network else MICRODESC_RETRY

        self.bootstrap = BootstrapStatus()
        #: The network as verified so far: the consensus in use and the microdescriptors held for it
        #: (None before the first consensus). Swapped whole; observers hear of each swap.
        self.netdir: NetDir | None = None
        self._consensus_raw: bytes | None = None
        #: digest -> microdescriptor, for the current and recent consensuses (NetDirs are its snapshots).
        self._microdescs: dict[str, MicrodescRecord] = {}
        self._microdesc_bodies: dict[str, bytes] = {}
        self._microdesc_last_listed: dict[str, float] = {}
        #: Counts the merges into ``_microdescs``: a NetDir made from an older count lacks some.
        self._microdesc_version = 0
        self._microdescs_unsaved = False
        self._microdesc_failures: dict[str, int] = {}
        self._microdesc_retry_at: dict[str, float] = {}
        #: (v3ident, signing key digest) -> (verified certificate, its text).
        self._certificates: dict[tuple[str, str], tuple[KeyCertificate, bytes]] = {}
        #: True while there is enough directory information to build circuits.
        self.enough_dir_info = False
        #: tor's explanation of the directory information status (GETINFO status/...).
        self.dir_info_status = "We have no usable consensus."
        #: Requests started, by document kind and by "kind:transport".
        self.fetch_counts: Counter[str] = Counter()

        self._enough_waiters: list[defer.Deferred] = []
        self._netdir_observers: list[Callable[[NetDirChanged], None]] = []
        self._consensus_timer = None
        self._consensus_round: defer.Deferred | None = None
        self._consensus_failures = 0
        self._outage_warned = False
        self._microdesc_timer = None
        self._microdesc_round: defer.Deferred | None = None
        self._microdesc_again = False
        self._in_flight: set[defer.Deferred] = set()
        self._writes: defer.Deferred = defer.succeed(None)
        self._started = False
        self._stopped = False
        # The state file is written only once it has been read (or found missing or broken); what it held
        # is written back with the guard sample in use (the relays' and the bridges' samples are kept apart).
        self._state_loaded = False
        self._state: dict[str, Any] = {}
        #: UseBridges: the bridge descriptor fetches under way, by fingerprint, and the bridges whose failure
        #: was logged at warning level (once until they work).
        self._bridge_fetches: dict[str, defer.Deferred] = {}
        self._bridges_warned: set[str] = set()
        #: When each bridge's descriptor is due to be fetched again (3 hours after it came, or after a backoff
        #: when it could not be had), the failures in a row, and the timer for the first of them.
        self._bridge_refetch_at: dict[str, float] = {}
        self._bridge_failures: dict[str, int] = {}
        self._bridge_timer = None
        #: The text of each bridge descriptor held, for cached-descriptors.
        self._bridge_descriptor_texts: dict[str, bytes] = {}

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> defer.Deferred:
        """Load the cache, then fetch what is missing; fires with ``self`` once there is
        enough directory information to build circuits (it may take many retries)."""
        if self._started:
            return self.when_enough_dir_info()
        self._started = True
        if self.links is not None:
            self.links.add_observer(self._link_event)
        self.bootstrap.report(BootstrapPhase.STARTING)
        waiter = self.when_enough_dir_info()
        loading = self._thread(_load_cache, self.cache, self.authorities, self.clock(), self.paths.prepare,
                               self.paths.bridges is not None)
        loading.addCallbacks(self._cache_loaded, self._cache_load_failed)
        loading.addErrback(self._cache_install_failed)
        return waiter

    def stop(self) -> defer.Deferred:
        """Cancel timers and requests; fires once cache writes are done."""
        self._stopped = True
        if self.links is not None and self._started:
            self.links.remove_observer(self._link_event)
        for timer in (self._consensus_timer, self._microdesc_timer, self._bridge_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._consensus_timer = self._microdesc_timer = self._bridge_timer = None
        for round_ in (self._consensus_round, self._microdesc_round, *self._bridge_fetches.values()):
            if round_ is not None:
                round_.cancel()
        for request in list(self._in_flight):
            request.cancel()
        if self._state_loaded:
            self._save_state()
        if self._microdescs_unsaved:
            self._save_microdescs()
        return self.cache_writes_done()

    def cache_writes_done(self) -> defer.Deferred:
        """A Deferred firing once every cache and state write started so far is on disk."""
        done: defer.Deferred = defer.Deferred()
        self._writes.addBoth(lambda _: done.callback(None))
        return done

    def when_enough_dir_info(self) -> defer.Deferred:
        """A Deferred firing with ``self`` when there is enough directory information (now, if so)."""
        if self.enough_dir_info:
            return defer.succeed(self)
        waiter: defer.Deferred = defer.Deferred()
        self._enough_waiters.append(waiter)
        return waiter

    def add_netdir_observer(self, observer: Callable[[NetDirChanged], None]) -> None:
        """Call ``observer(NetDirChanged(...))`` each time a new NetDir is taken into use (a new verified
        consensus, or more microdescriptors)."""
        self._netdir_observers.append(observer)

    def remove_netdir_observer(self, observer: Callable[[NetDirChanged], None]) -> None:
        self._netdir_observers = [known for known in self._netdir_observers if known is not observer]

    def microdesc_body(self, digest: str) -> bytes | None:
        """The text of a microdescriptor we hold, as its relay published it (GETINFO md/id/FP)."""
        return self._microdesc_bodies.get(digest)

    @property
    def consensus_document(self) -> bytes | None:
        """The consensus in use, byte for byte as signed (for GETINFO dir/status-vote/...)."""
        return self._consensus_raw

    @property
    def bootstrap_phase(self) -> tuple[int, str, str]:
        """(percent, tag, summary) of the bootstrap, as GETINFO status/bootstrap-phase reports it."""
        return self.bootstrap.as_tuple()

    @property
    def bootstrap_problem(self) -> BootstrapProblem | None:
        """The last connection problem since the bootstrap last moved forward (GETINFO
        status/bootstrap-phase says WARN with it)."""
        return self.bootstrap.problem

    def report_bootstrap(self, phase: BootstrapPhase, progress: int = 0) -> bool:
        """Report a later phase (the daemon: ap_conn ... done)."""
        return self.bootstrap.report(phase, progress)

    # ---- cache --------------------------------------------------------------------------

    def _cache_loaded(self, contents: _CacheContents) -> None:
        if self._stopped:
            return
        self._state_loaded = True
        for problem in contents.certificate_problems:
            log.info("Ignoring a cached authority key certificate: %s", problem)
        for certificate, text in contents.certificates:
            self._certificates[(certificate.fingerprint, certificate.signing_key_digest)] = (certificate, text)
        if contents.state_problem:
            log.warning("Ignoring the state file: %s. Starting a new guard sample.", contents.state_problem)
        elif contents.state is not None:
            self._state = dict(contents.state)
            try:
                if self.paths.state_key in contents.state:
                    self.paths.restore_guards(contents.state[self.paths.state_key])
            except GuardStateError as exc:
                log.warning("Ignoring the guards in the state file: %s. Starting a new guard sample.", exc)
        for problem in contents.bridge_descriptor_problems:
            log.info("Ignoring a cached bridge descriptor: %s", problem)
        for descriptor, text in contents.bridge_descriptors:
            self._learned_bridge_descriptor(descriptor, text, cached=True)
        self.fetch_bridge_descriptors()
        if contents.consensus_problem:
            log.warning("Discarding the cached consensus: %s", contents.consensus_problem)
        if contents.microdescs_problem:
            log.warning("Discarding the cached microdescriptors: %s", contents.microdescs_problem)
        if contents.microdescs is not None:
            self._merge_microdescs(contents.microdescs, None, update=False)
        if contents.checked is not None:
            consensus = contents.checked.netdir.consensus
            log.info("Loaded the cached microdesc consensus valid-after %s (%d relays, %d microdescriptors)",
                     format_time(consensus.valid_after), len(consensus.relays), len(self._microdescs))
            self._install_consensus(contents.checked, contents.consensus_raw, "the cache", from_cache=True,
                                    microdesc_version=self._microdesc_version)
        else:
            self._update_dir_info()
            self.fetch_consensus_now()

    def _cache_install_failed(self, failure) -> None:
        log.error("Using the directory cache failed unexpectedly: %s", failure.getTraceback())
        self._state_loaded = True
        if not self._stopped and self.netdir is None:
            self.fetch_consensus_now()

    def _cache_load_failed(self, failure) -> None:
        log.warning("Could not load the directory cache in %s: %s", self.data_directory,
                    failure.getErrorMessage())
        self._state_loaded = True
        if not self._stopped:
            self.fetch_consensus_now()

    def _write_in_background(self, what: str, function: Callable, *args: Any) -> None:
        """Run a cache write in a worker thread, one after the other, logging failures."""
        def run(_):
            return self._thread(function, *args)

        def failed(failure):
            log.warning("Could not write %s to %s: %s", what, self.data_directory, failure.getErrorMessage())

        self._writes = self._writes.addCallback(run).addErrback(failed)

    def _save_state(self) -> None:
        guards = self.paths.guards
        guards.mark_saved()
        self._state[self.paths.state_key] = guards.to_dict()
        self._write_in_background("the guard state", self.cache.write_state, dict(self._state))

    def _guards_changed(self, event: GuardsChanged) -> None:
        """A guard's outcome: write a newly confirmed guard, and look at the directory information again
        (a primary guard may be down, or back)."""
        if event.needs_saving and self._state_loaded:
            self._save_state()
        self._update_dir_info()

    def _save_certificates(self) -> None:
        now = self.clock()
        texts = [text for certificate, text in self._certificates.values() if certificate.expires >= now]
        self._write_in_background("the key certificates", self.cache.write_certificates, texts)

    def _save_microdescs(self) -> None:
        self._microdescs_unsaved = False
        entries = [(body, self._microdesc_last_listed.get(digest))
                   for digest, body in self._microdesc_bodies.items()]
        self._write_in_background("the microdescriptors", self.cache.write_microdescriptors, entries)

    # ---- requests -------------------------------------------------------------------------

    def _default_run_in_thread(self, function: Callable, *args: Any) -> defer.Deferred:
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), function, *args)

    def _thread(self, function: Callable, *args: Any) -> defer.Deferred:
        return self._run_in_thread(function, *args)

    def _track(self, request: defer.Deferred) -> defer.Deferred:
        self._in_flight.add(request)

        def forget(result):
            self._in_flight.discard(request)
            return result

        return request.addBoth(forget)

    def _directory_sources(self, authorities_only: bool = False) -> list[DirectorySource]:
        """Directory guards (once we have their microdescriptors) and one other V2Dir relay chosen by
        its directory weight, then the fallback directories in random order, then the authorities'
        ORPorts in random order (the last resort: tor spares the authorities). ``authorities_only``
        asks the authorities alone. With bridges: the usable bridges alone, whatever is asked."""
        if self.paths.bridges is not None:
            return [DirectorySource(target, SourceKind.BRIDGE) for target in self.paths.directory_guards()]
        sources: list[DirectorySource] = []
        if not authorities_only:
            guards = self.paths.directory_guards(DIRECTORY_GUARDS_TO_TRY)
            sources += [DirectorySource(target, SourceKind.DIRECTORY_GUARD) for target in guards]
            cache = self.paths.directory_cache(guards) if guards else None
            if cache is not None:
                sources.append(DirectorySource(cache, SourceKind.CACHE))
            fallbacks = list(self.fallback_dirs)
            self.rng.shuffle(fallbacks)
            sources += [DirectorySource(self._configured_target(fallback.nickname or UNNAMED, fallback.fingerprint,
                                                                fallback.address, fallback.or_port),
                                        SourceKind.FALLBACK) for fallback in fallbacks]
        # An authority configured without an ORPort can only be reached at its DirPort: never asked.
        authorities = [authority for authority in self.v3_authorities if authority.or_port]
        self.rng.shuffle(authorities)
        sources += [DirectorySource(self._configured_target(authority.nickname or UNNAMED, authority.fingerprint,
                                                            authority.address, authority.or_port),
                                    SourceKind.AUTHORITY) for authority in authorities]
        return sources

    def _configured_target(self, nickname: str, fingerprint: str, address: str, or_port: int) -> RelayTarget:
        """A fallback or an authority as its torrc line gives it: the link handshake proves its RSA
        identity; its ntor onion key (and Ed25519 identity) come from its microdescriptor when we hold
        one, else the circuit is created with CREATE_FAST."""
        rsa_id = bytes.fromhex(fingerprint)
        known = self.netdir.relay_target(rsa_id) if self.netdir is not None else None
        if known is None:
            return RelayTarget(nickname, rsa_id, address, or_port)
        return RelayTarget(nickname, rsa_id, address, or_port, known.ntor_onion_key, known.ed25519_id)

    @defer.inlineCallbacks
    def _request(self, source: DirectorySource, kind: str, path: str, max_size: int,
                 if_modified_since: float | None = None):
        """One request to one source; fires with a 200 DirectoryResponse or fails."""
        self.fetch_counts[kind] += 1
        self.fetch_counts[f"{kind}:{source.kind.value}"] += 1
        circuit = yield self._directory_circuit(source.target)
        if kind == "consensus":
            self.bootstrap.report(BootstrapPhase.REQUESTING_STATUS)
        response = yield self._track(self.client.fetch_over_circuit(
            circuit, path, max_size, relay=source.target, if_modified_since=if_modified_since))
        return response

    @defer.inlineCallbacks
    def _directory_circuit(self, target: RelayTarget):
        """The circuit manager's one-hop circuit to ``target``; the outcome is reported on the directory guard
        (guard-spec: a directory guard is marked down when no connection to it can be made)."""
        try:
            circuit = yield self._track(self.circuits.directory_circuit(target))
        except defer.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a refused link, a failed CREATE_FAST or ntor, a timeout
            if not self._stopped:
                self.paths.mark_guard_down(target.rsa_id)
            raise DirectoryConnectionError(
                f"one-hop directory circuit to {target.describe()} failed: {exc}") from None
        if not self._stopped:
            self.paths.mark_guard_up(target.rsa_id)
        return circuit

    def _link_event(self, event: LinkEvent) -> None:
        """tor's bootstrap phases for a connection to a relay (control_bootstrap.c, btrack_orconn_cevent.c):
        conn when the TCP connection is made (conn_pt to a bridge's pluggable transport, whose conn_done_pt
        the daemon reports from the transport's events), conn_done and handshake once it is up,
        handshake_done once the link handshake is done; before there is enough directory information, that
        link is for a one-hop directory circuit, whose CREATE cell goes out at once (onehop_create)."""
        if self.enough_dir_info:
            return
        if isinstance(event, LinkLaunched):
            self.bootstrap.report(BootstrapPhase.CONN if event.transport is None else BootstrapPhase.CONN_PT)
        elif isinstance(event, LinkConnected):
            self.bootstrap.report(BootstrapPhase.CONN_DONE)
            self.bootstrap.report(BootstrapPhase.HANDSHAKE)
        elif isinstance(event, LinkOpened):
            self.bootstrap.report(BootstrapPhase.HANDSHAKE_DONE)
            self.bootstrap.report(BootstrapPhase.ONEHOP_CREATE)
        elif isinstance(event, LinkFailed):
            # control_bootstrap.c control_event_bootstrap_prob_or: with bridges, a user hears at once.
            relay = event.relay
            self.bootstrap.report_problem(event.reason, event.or_reason, relay.describe(),
                                          f"{relay.address}:{relay.or_port}", warn=self.paths.bridges is not None)

    # ---- bridge descriptors ------------------------------------------------------------------

    def fetch_bridge_descriptors(self) -> None:
        """With bridges: fetch the descriptor of each usable bridge whose descriptor is not held yet or is
        due to be fetched again, from the bridge itself (tor bridges.c fetch_bridge_descriptors). Each fetch
        goes on by itself; a bridge that fails is marked down and asked again at the next consensus fetch
        after its retry time."""
        bridges = self.paths.bridges
        if bridges is None or self._stopped:
            return
        now = self.clock()
        for target in self.paths.directory_guards():
            ask = bridges.descriptor_target(target)
            key = _bridge_key(ask)
            due = bridges.descriptor(target.fingerprint) is None or self._bridge_refetch_at.get(key, 0.0) <= now
            if not due or key in self._bridge_fetches:
                continue
            fetch = self._fetch_bridge_descriptor(DirectorySource(ask, SourceKind.BRIDGE))
            self._bridge_fetches[key] = fetch
            fetch.addBoth(lambda result, key=key: (self._bridge_fetches.pop(key, None), result)[1])

    @defer.inlineCallbacks
    def _fetch_bridge_descriptor(self, source: DirectorySource):
        """``/tor/server/authority`` from the bridge, verified and checked against the bridge's identity: the
        one its Bridge line gives, else the one its link handshake proved, which is learned."""
        target = source.target
        key = _bridge_key(target)
        try:
            response = yield self._request(source, "bridge-descriptor", bridge_descriptor_url(),
                                           MAX_ROUTER_DESCRIPTOR_SIZE)
            descriptor = yield self._thread(parse_router_descriptor, response.body)
        except defer.CancelledError:
            return None
        except Exception as exc:  # noqa: BLE001 - unreachable, another identity, a bad document: not used
            if not self._stopped:
                self._bridge_failed(source, _reason(exc))
            return None
        if self._stopped:
            return None
        if target.rsa_id:
            expected, says = target.fingerprint, "its Bridge line says"
        else:
            proven = self.links.proven_identity(target.address, target.or_port) if self.links is not None else None
            expected, says = (proven or b"").hex().upper(), "its link handshake proved"
        if descriptor.fingerprint != expected:
            self._bridge_failed(source, f"it sent the descriptor of ${descriptor.fingerprint}, but {says} "
                                        f"${expected}")
            return None
        self._bridges_warned.discard(key)
        self._bridge_failures.pop(key, None)
        self._learned_bridge_descriptor(descriptor, response.body,
                                        at=None if target.rsa_id else (target.address, target.or_port))
        self._schedule_bridge_refetch(key, BRIDGE_DESCRIPTOR_REFETCH)
        return descriptor

    def _schedule_bridge_refetch(self, key: str, delay: float) -> None:
        self._bridge_refetch_at[key] = self.clock() + delay
        if self._stopped:
            return
        if self._bridge_timer is not None and self._bridge_timer.active():
            self._bridge_timer.cancel()
        delay = max(0.0, min(self._bridge_refetch_at.values()) - self.clock())
        self._bridge_timer = self.reactor.callLater(delay, self._bridge_timer_fired)

    def _bridge_timer_fired(self) -> None:
        self._bridge_timer = None
        self.fetch_bridge_descriptors()

    def _bridge_failed(self, source: DirectorySource, why: str) -> None:
        """A bridge is not used until its retry time (guard-spec); the first failure in a row is a warning.
        Its descriptor is asked for again after a backoff (tor bridges.c: DL_SCHED_BRIDGE), so that a bridge
        back up is found without waiting for the next consensus fetch."""
        target = source.target
        key = _bridge_key(target)
        failures = self._bridge_failures.get(key, 0)
        self._bridge_failures[key] = failures + 1
        self._schedule_bridge_refetch(key, _backoff(failures, self._consensus_retry))
        level = logging.INFO if key in self._bridges_warned else logging.WARNING
        self._bridges_warned.add(key)
        bridges = self.paths.bridges
        fingerprint = target.fingerprint or (bridges.learned_fingerprint(target.address, target.or_port)
                                             if bridges is not None else None)
        log.log(level, "Bridge %s at %s:%d is not used until its retry time: %s",
                f"${fingerprint}" if fingerprint else "(fingerprint not known yet)", target.address,
                target.or_port, why)
        if fingerprint:
            self.paths.mark_guard_down(fingerprint)

    def _learned_bridge_descriptor(self, descriptor: RouterDescriptor, text: bytes, cached: bool = False,
                                   at: tuple[str, int] | None = None) -> None:
        """Hand the descriptor of a configured bridge to the path layer (a cached one of a bridge no longer
        configured is dropped) and keep it in the DataDirectory; a new one is logged as tor logs it
        (bridges.c learned_bridge_descriptor), the same one fetched again at info level. ``at``: the
        address and port of the Bridge line without a fingerprint it came from."""
        bridges = self.paths.bridges
        previous = bridges.descriptor(descriptor.fingerprint) if bridges is not None else None
        if not self.paths.learned_bridge_descriptor(descriptor, at):
            return
        level = logging.INFO if previous is not None and previous.published == descriptor.published else NOTICE
        log.log(level, "new bridge descriptor '%s' (%s): $%s~%s at %s", descriptor.nickname,
                "cached" if cached else "fresh", descriptor.fingerprint, descriptor.nickname, descriptor.address)
        self._bridge_descriptor_texts[descriptor.fingerprint] = text
        if not cached:
            self._write_in_background("the bridge descriptors", self.cache.write_bridge_descriptors,
                                      list(self._bridge_descriptor_texts.values()))

    # ---- consensus -------------------------------------------------------------------------

    def fetch_consensus_now(self, authorities_only: bool = False) -> defer.Deferred:
        """Fetch a newer consensus now (or join the fetch under way).

        Fires with the new :class:`Consensus` once in use, or with None if no source gave
        a newer, valid one (the current consensus then stays in use, and a retry is
        scheduled). ``authorities_only`` skips the directory guards.
        """
        if self._consensus_round is not None:
            joined: defer.Deferred = defer.Deferred()
            self._consensus_round.addBoth(lambda result: (joined.callback(result), result)[1])
            return joined
        if self._consensus_timer is not None and self._consensus_timer.active():
            self._consensus_timer.cancel()
        self._consensus_timer = None
        self.fetch_bridge_descriptors()
        failures: list[tuple[str, str, bool]] = []
        round_ = self._run_consensus_round(authorities_only, failures)
        round_.addTimeout(DIRECTORY_ROUND_DEADLINE, self.reactor)

        def finished(result):
            self._consensus_round = None
            if not isinstance(result, Failure):
                return result
            if self._stopped:                   # stop() cancelled the round
                return None
            if result.check(defer.TimeoutError):
                log.warning("The consensus fetch did not finish within %.0f s; abandoning it (tried: %s)",
                            DIRECTORY_ROUND_DEADLINE, "; ".join(where for where, _, _ in failures) or "none")
                failures.append(("the fetch", f"abandoned after {DIRECTORY_ROUND_DEADLINE:.0f} s", True))
            else:
                log.error("Consensus fetch failed unexpectedly: %s", result.getTraceback())
                failures.append(("internal error", result.getErrorMessage(), False))
            self._consensus_round_failed(failures)
            return None

        self._consensus_round = round_
        round_.addBoth(finished)
        result: defer.Deferred = defer.Deferred()
        round_.addBoth(lambda value: (result.callback(value), value)[1])
        return result

    def _if_modified_since(self) -> float | None:
        if self.netdir is None:
            return None
        consensus = self.netdir.consensus
        delay = min(IF_MODIFIED_SINCE_DELAY, (consensus.fresh_until - consensus.valid_after) // 2)
        return consensus.valid_after + delay

    @defer.inlineCallbacks
    def _run_consensus_round(self, authorities_only: bool, failures: list[tuple[str, str, bool]]):
        """Each source in turn until one gives a usable consensus; whatever fails at one source (its
        answer, the certificates, the checks), the next one is tried. Cancelling ends the round."""
        sources = self._directory_sources(authorities_only)
        for source in sources:
            if self._stopped:
                return None
            try:
                consensus = yield self._consensus_from(source, sources, failures)
            except defer.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bug met at this source: log it, try the next
                log.exception("Consensus fetch from %s failed unexpectedly", source.describe())
                failures.append((source.describe(), f"internal error: {_reason(exc)}", False))
                continue
            if consensus is not None:
                return consensus
        if not self._stopped:
            self._consensus_round_failed(failures)
        return None

    @defer.inlineCallbacks
    def _consensus_from(self, source: DirectorySource, sources: list[DirectorySource],
                        failures: list[tuple[str, str, bool]]):
        """Try one source: fetch, get certificates, verify, install. Returns the Consensus or None."""
        try:
            response = yield self._request(source, "consensus", consensus_url(), MAX_CONSENSUS_SIZE,
                                           self._if_modified_since())
        except DirectoryStatusError as exc:
            reason = "no newer consensus (304 Not Modified)" if exc.status == 304 else str(exc)
            failures.append((source.describe(), reason, False))
            log.info("Consensus fetch from %s: %s", source.describe(), reason)
            return None
        except defer.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any transport failure: try the next source
            failures.append((source.describe(), _reason(exc), _is_unreachable(exc)))
            log.info("Consensus fetch from %s failed: %s", source.describe(), _reason(exc))
            return None
        if self._stopped:
            return None
        self.bootstrap.report(BootstrapPhase.LOADING_STATUS)
        yield self._fetch_missing_certificates(response.body, source, sources)
        if self._stopped:
            return None
        self.bootstrap.report(BootstrapPhase.LOADING_KEYS)
        current = self._consensus()
        version = self._microdesc_version
        try:
            checked = yield self._thread(
                _check_consensus, response.body, [c for c, _ in self._certificates.values()],
                self.authorities, self.clock(), current.valid_after if current is not None else None, 0.0,
                dict(self._microdescs), self.paths.prepare)
        except ConsensusNotNewerError as exc:
            failures.append((source.describe(), str(exc), False))
            log.info("Ignoring the consensus from %s: %s", source.describe(), exc)
            return None
        except DirectoryError as exc:
            failures.append((source.describe(), f"rejected: {type(exc).__name__}: {exc}", False))
            keeping = (f"Still using the consensus valid-after {format_time(current.valid_after)}."
                       if current is not None else "No consensus is in use yet.")
            log.warning("Rejected the microdesc consensus from %s: %s: %s. %s", source.describe(),
                        type(exc).__name__, exc, keeping)
            return None
        if self._stopped:
            return None
        installed = self._consensus()
        if installed is not current:            # another path installed one meanwhile
            if installed.valid_after >= checked.netdir.consensus.valid_after:
                return None
        self._install_consensus(checked, response.body, source.describe(), microdesc_version=version)
        return checked.netdir.consensus

    @defer.inlineCallbacks
    def _fetch_missing_certificates(self, consensus_raw: bytes, first: DirectorySource,
                                    sources: list[DirectorySource]):
        """Fetch the certificates of configured authorities whose signatures we cannot check yet."""
        configured = {a.v3ident for a in self.v3_authorities}
        missing = {key for key in signature_key_ids(consensus_raw)
                   if key[0] in configured and key not in self._certificates}
        if not missing:
            return
        self.bootstrap.report(BootstrapPhase.LOADING_KEYS)
        order = [first] + [source for source in sources if source != first]
        for source in order:
            if self._stopped or not missing:
                return
            try:
                response = yield self._request(source, "certificates", key_certificates_url(sorted(missing)),
                                               MAX_CERTIFICATES_SIZE)
            except defer.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.info("Key certificate fetch from %s failed: %s", source.describe(), _reason(exc))
                continue
            good, problems = yield self._thread(_parse_certificates, response.body, self.authorities,
                                                self.clock())
            for problem in problems:
                log.warning("Rejected an authority key certificate from %s: %s", source.describe(), problem)
            added = 0
            for certificate, text in good:
                key = (certificate.fingerprint, certificate.signing_key_digest)
                if key not in self._certificates:
                    self._certificates[key] = (certificate, text)
                    added += 1
                missing.discard(key)
            if added:
                log.info("Loaded %d authority key certificate(s) from %s", added, source.describe())
                self._save_certificates()

    def _install_consensus(self, checked: _CheckedConsensus, raw: bytes, origin: str, *, microdesc_version: int,
                           from_cache: bool = False) -> None:
        """Take a checked consensus into use; ``microdesc_version`` is the count of microdescriptor merges
        when its NetDir was made."""
        netdir = checked.netdir
        if microdesc_version != self._microdesc_version:
            # Microdescriptors arrived while the consensus was being checked: the NetDir takes them too.
            netdir = netdir.with_microdescs(self._microdescs)
        consensus = netdir.consensus
        now = self.clock()
        self._consensus_raw = raw
        for digest in consensus.microdesc_digests():
            self._microdesc_last_listed[digest] = max(self._microdesc_last_listed.get(digest, 0.0),
                                                      float(consensus.valid_after))
        self._forget_old_microdescs(consensus, now)
        self._publish(netdir)           # the guard sample follows the new consensus: save it
        self._save_state()
        if not from_cache:
            self._write_in_background("the consensus", self.cache.write_consensus, raw)
            self._save_microdescs()
            log.info("Using the microdesc consensus valid-after %s from %s (%d relays, signed by %d of %d "
                     "authorities)", format_time(consensus.valid_after), origin, len(consensus.relays),
                     len(checked.verification.good_authorities), len(self.v3_authorities))
        if self._outage_warned:
            log.log(NOTICE, "Got a usable consensus again (from %s) after %d failed attempt(s).", origin,
                    self._consensus_failures)
        self._consensus_failures = 0
        self._outage_warned = False
        self._schedule_refresh(consensus, now)
        self._update_dir_info()
        self._start_microdesc_round()

    def _publish(self, netdir: NetDir) -> None:
        """Take ``netdir`` into use, in one assignment, and tell the observers."""
        event = NetDirChanged(netdir, self.netdir)
        self.netdir = netdir
        self.paths.set_netdir(netdir)
        for observer in list(self._netdir_observers):
            try:
                observer(event)
            except Exception:  # noqa: BLE001 - an observer's bug must not stop the directory
                log.exception("NetDir observer %r failed", observer)

    def _consensus(self) -> Consensus | None:
        return self.netdir.consensus if self.netdir is not None else None

    def _schedule_refresh(self, consensus: Consensus, now: float) -> None:
        if now > consensus.valid_until:
            delay, why = 0.0, "the consensus in use has expired"
        else:
            at = consensus_refresh_time(consensus, self.rng)
            delay, why = max(0.0, at - now), f"at {format_time(at)}, before it expires"
        self._schedule_consensus_fetch(delay, why)

    def _schedule_consensus_fetch(self, delay: float, why: str) -> None:
        if self._stopped:
            return
        if self._consensus_timer is not None and self._consensus_timer.active():
            self._consensus_timer.cancel()
        log.info("Next consensus fetch in %.1f s (%s)", delay, why)
        self._consensus_timer = self.reactor.callLater(delay, self._consensus_timer_fired)

    def _consensus_timer_fired(self) -> None:
        self._consensus_timer = None
        self.fetch_consensus_now()

    def _consensus_round_failed(self, failures: list[tuple[str, str, bool]]) -> None:
        delay = _backoff(self._consensus_failures, self._consensus_retry)
        self._consensus_failures += 1
        consensus = self._consensus()
        detail = "; ".join(f"{where}: {why}" for where, why, _ in failures) or \
            "no directory source is configured"
        live = consensus is not None and self.clock() <= consensus.valid_until
        if live:
            # A refresh failed while the consensus in use is still valid: try again later, quietly.
            log.info("No newer consensus from %d source(s) (%s); retrying in %.0f s", len(failures), detail,
                     delay)
        elif not self._outage_warned:
            self._outage_warned = True
            unreachable = all(unreachable for _, _, unreachable in failures)
            if self.paths.bridges is not None:
                what = "No bridge could be reached" if unreachable else "No bridge gave a usable consensus"
            else:
                what = ("No directory authority or cache could be reached" if unreachable
                        else "No directory source gave a usable consensus")
            log.warning("%s (%s). Retrying in %.0f s, backing off up to %.0f s.", what, detail, delay,
                        self._consensus_retry[1])
        else:
            log.info("Still no usable consensus after %d attempt(s) (%s); retrying in %.0f s",
                     self._consensus_failures, detail, delay)
        self._schedule_consensus_fetch(delay, f"retry {self._consensus_failures}")

    # ---- microdescriptors ----------------------------------------------------------------------

    def _wanted_microdescs(self) -> list[str]:
        """Digests the consensus lists for usable relays, not held, and not waiting for a retry."""
        if self.netdir is None:
            return []
        now = self.clock()
        return sorted(digest for digest in self.netdir.usable_microdesc_digests
                      if digest not in self._microdescs and self._microdesc_retry_at.get(digest, 0.0) <= now)

    def _start_microdesc_round(self) -> None:
        if self._stopped:
            return
        if self._microdesc_round is not None:
            self._microdesc_again = True
            return
        if self._microdesc_timer is not None and self._microdesc_timer.active():
            self._microdesc_timer.cancel()
        self._microdesc_timer = None
        self._microdesc_again = False
        round_ = self._run_microdesc_round()

        def finished(result):
            self._microdesc_round = None
            if self._stopped:
                return
            if isinstance(result, Failure):
                log.error("Microdescriptor fetch failed unexpectedly: %s", result.getTraceback())
                if self._microdesc_timer is None or not self._microdesc_timer.active():
                    self._microdesc_timer = self.reactor.callLater(self._microdesc_retry[0],
                                                                   self._start_microdesc_round)
            if self._microdesc_again:
                self._start_microdesc_round()

        self._microdesc_round = round_
        round_.addBoth(finished)

    @defer.inlineCallbacks
    def _run_microdesc_round(self):
        wanted = self._wanted_microdescs()
        if not wanted:
            return
        if not self.enough_dir_info:
            self.bootstrap.report(BootstrapPhase.REQUESTING_DESCRIPTORS)
        sources = self._directory_sources()
        batches = [wanted[start:start + MAX_MICRODESCS_PER_REQUEST]
                   for start in range(0, len(wanted), MAX_MICRODESCS_PER_REQUEST)]
        log.info("Fetching %d microdescriptor(s) in %d request(s)", len(wanted), len(batches))
        spread = not any(source.kind is SourceKind.DIRECTORY_GUARD for source in sources)
        semaphore = defer.DeferredSemaphore(MAX_PARALLEL_MICRODESC_REQUESTS)
        requests = []
        for index, batch in enumerate(batches):
            # At bootstrap, spread the batches over the fallbacks and authorities; later, ask the directory
            # guard first.
            shift = index % len(sources) if spread and sources else 0
            order = sources[shift:] + sources[:shift]
            requests.append(semaphore.run(self._fetch_microdesc_batch, batch, order))
        fetches = defer.DeferredList(requests, consumeErrors=True)
        # Past the deadline the batches still under way are cancelled and retried like failed ones.
        fetches.addTimeout(DIRECTORY_ROUND_DEADLINE, self.reactor, onTimeoutCancel=_microdesc_fetches_expired)
        yield fetches
        if self._stopped:
            return
        now = self.clock()
        missing = [digest for digest in wanted if digest not in self._microdescs]
        for digest in missing:
            failures = self._microdesc_failures.get(digest, 0)
            self._microdesc_failures[digest] = failures + 1
            self._microdesc_retry_at[digest] = now + _backoff(failures, self._microdesc_retry)
        if missing:
            retry_at = min(self._microdesc_retry_at[digest] for digest in missing)
            log.info("%d microdescriptor(s) could not be fetched; retrying in %.0f s", len(missing),
                     retry_at - now)
            self._microdesc_timer = self.reactor.callLater(max(0.0, retry_at - now), self._start_microdesc_round)
        self._save_microdescs()
        yield self._prepare_netdir()

    @defer.inlineCallbacks
    def _fetch_microdesc_batch(self, batch: list[str], sources: list[DirectorySource]):
        remaining = list(batch)
        for source in sources:
            if self._stopped or not remaining:
                return
            try:
                response = yield self._request(source, "microdescriptors", microdescriptors_url(remaining),
                                               MAX_MICRODESCS_RESPONSE_SIZE)
            except defer.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - try the next source
                log.info("Microdescriptor fetch from %s failed: %s", source.describe(), _reason(exc))
                continue
            try:
                parsed = yield self._thread(_parse_microdescs, response.body, remaining)
            except defer.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the whole reply is unusable: try the next source
                log.warning("Rejected the %d-byte microdescriptor reply from %s: %s", len(response.body),
                            source.describe(), _reason(exc))
                continue
            if self._stopped:
                return
            if parsed.invalid:      # one line per reply, however many it spoils; each one at info level
                (digest, reason), *others = parsed.invalid.items()
                log.warning("Rejected %d microdescriptor(s) from %s, the first %s: %s", len(parsed.invalid),
                            source.describe(), digest, reason)
                for digest, reason in others:
                    log.info("Rejected microdescriptor %s from %s: %s", digest, source.describe(), reason)
            lacking = [digest for digest in remaining if digest not in parsed.records
                       and digest not in parsed.invalid]
            if parsed.unrequested and lacking:
                log.warning("Rejected %d microdescriptor(s) from %s whose SHA-256 digest matches none of the "
                            "%d asked for and not received (altered or wrong documents)",
                            parsed.unrequested, source.describe(), len(lacking))
            elif parsed.unrequested:
                log.info("Dropped %d microdescriptor(s) from %s that were not asked for",
                         parsed.unrequested, source.describe())
            # As tor: report the loading progress, then see whether that is enough.
            self._merge_microdescs(parsed, self._consensus(), update=False)
            self._microdescs_unsaved = True
            self._loading_progress()
            self._update_dir_info()
            remaining = [digest for digest in remaining if digest not in self._microdescs]

    def _merge_microdescs(self, batch: _MicrodescBatch, consensus: Consensus | None, update: bool = True) -> None:
        if not batch.records:
            return
        listed_at = float(consensus.valid_after) if consensus is not None else None
        for digest, record in batch.records.items():
            self._microdescs[digest] = record
            body = batch.bodies.get(digest)
            if body is not None:
                self._microdesc_bodies[digest] = body
            last = batch.last_listed.get(digest, listed_at)
            if last is not None:
                self._microdesc_last_listed[digest] = max(self._microdesc_last_listed.get(digest, 0.0), last)
            self._microdesc_failures.pop(digest, None)
            self._microdesc_retry_at.pop(digest, None)
        self._microdesc_version += 1
        if self.netdir is not None:
            self._publish(self.netdir.with_microdescs(self._microdescs))
        if update:
            self._update_dir_info()

    def _forget_old_microdescs(self, consensus: Consensus, now: float) -> None:
        """Drop microdescriptors no consensus has listed for MICRODESC_UNLISTED_LIFETIME (none that
        ``consensus`` lists, so a NetDir still holding them answers the same)."""
        listed = consensus.microdesc_digests()
        cutoff = now - MICRODESC_UNLISTED_LIFETIME
        stale = [digest for digest in self._microdescs
                 if digest not in listed and self._microdesc_last_listed.get(digest, now) < cutoff]
        for digest in stale:
            del self._microdescs[digest]
            self._microdesc_bodies.pop(digest, None)
            self._microdesc_last_listed.pop(digest, None)

    @defer.inlineCallbacks
    def _prepare_netdir(self):
        """Build the path selector of the NetDir in use in a worker thread (the reactor builds it only if
        a path is asked for first)."""
        if self.netdir is not None:
            yield self._thread(self.paths.prepare, self.netdir)

    # ---- enough directory information ---------------------------------------------------------

    def _loading_progress(self) -> None:
        """tor ``count_loading_descriptors_progress``: 50% plus the share of the needed paths."""
        netdir = self.netdir
        if netdir is None or self.enough_dir_info:
            return
        paths, _ = netdir.path_fraction()
        fraction = paths / netdir.paths_needed()
        progress = 0 if fraction > 1.0 else int(BootstrapPhase.LOADING_DESCRIPTORS) + int(
            fraction * (BootstrapPhase.ENOUGH_DIRINFO - 1 - BootstrapPhase.LOADING_DESCRIPTORS))
        self.bootstrap.report(BootstrapPhase.LOADING_DESCRIPTORS, progress)

    def _update_dir_info(self) -> None:
        """tor ``update_router_have_minimum_dir_info``: the NetDir's answer, with the primary guards."""
        netdir = self.netdir
        info = self.paths.dir_info()
        enough = info.enough
        self.dir_info_status = info.status
        if enough and not self.enough_dir_info:
            self.enough_dir_info = True
            self.bootstrap.report(BootstrapPhase.ENOUGH_DIRINFO)
            log.info("We now have enough directory information to build circuits.")
            waiters, self._enough_waiters = self._enough_waiters, []
            for waiter in waiters:
                waiter.callback(self)
        elif not enough and self.enough_dir_info:
            self.enough_dir_info = False
            log.log(NOTICE, "Our directory information is no longer up-to-date enough to build circuits: %s",
                    self.dir_info_status)
        elif not enough and netdir is not None:
            self.bootstrap.report(BootstrapPhase.REQUESTING_DESCRIPTORS)


def _microdesc_fetches_expired(results: Any, deadline: float) -> Any:
    """The microdescriptor fetches reached DIRECTORY_ROUND_DEADLINE and were cancelled: say so, carry on."""
    log.warning("Microdescriptor fetches did not finish within %.0f s; the rest are retried later", deadline)
    return results


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, (DirectoryRequestError, DirectoryError)):
        return text
    return f"{type(exc).__name__}: {text}"


def _is_unreachable(exc: BaseException) -> bool:
    """Did the request fail for want of a working connection (rather than a bad answer)?"""
    return isinstance(exc, (DirectoryConnectionError, DirectoryTimeoutError, defer.CancelledError))
