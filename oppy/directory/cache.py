"""The DataDirectory cache: directory documents and client state on disk, written atomically.

File names and formats follow C tor's so that a tor DataDirectory can seed
oppy and the files stay recognisable:

* ``cached-certs``: authority key certificates, concatenated;
* ``cached-microdesc-consensus``: the last verified microdesc consensus, byte for byte
  as signed (so it can be verified again on start-up);
* ``cached-microdescs``: microdescriptors, each after an ``@last-listed`` annotation
  (tor ``microdesc_cache_rebuild``); tor's journal ``cached-microdescs.new`` is read too;
* ``cached-descriptors``: the descriptors of the bridges (UseBridges), each after an ``@purpose bridge``
  annotation, as tor keeps them there;
* ``state``: oppy's persistent client state (the guard sample) as JSON (tor's own
  ``state`` file is a key-value text file; oppy does not share it).

Every write goes to a temporary file in the same directory, is flushed to disk and
renamed over the old file, so a crash leaves either the old or the new file, never
half of one. Everything here blocks on the disk: the directory service calls it
from a worker thread.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from oppy.netdoc.documents import split_microdescriptor_chunks
from oppy.netdoc.errors import DocumentParseError
from oppy.netdoc.fields import format_time, parse_time

__all__ = [
    "CACHED_CERTS_FILE",
    "CACHED_CONSENSUS_FILE",
    "CACHED_MICRODESCS_FILE",
    "CACHED_MICRODESCS_JOURNAL_FILE",
    "CACHED_DESCRIPTORS_FILE",
    "STATE_FILE",
    "CacheError",
    "DirectoryCache",
    "atomic_write",
    "split_key_certificates",
    "split_microdescriptors",
    "encode_microdescriptors",
    "split_router_descriptors",
]

CACHED_CERTS_FILE = "cached-certs"
CACHED_CONSENSUS_FILE = "cached-microdesc-consensus"
CACHED_MICRODESCS_FILE = "cached-microdescs"
#: C tor appends new microdescriptors to this journal between rebuilds; oppy only reads it.
CACHED_MICRODESCS_JOURNAL_FILE = "cached-microdescs.new"
CACHED_DESCRIPTORS_FILE = "cached-descriptors"
#: The annotation tor writes before a bridge's descriptor in cached-descriptors (routerlist.c).
BRIDGE_PURPOSE_ANNOTATION = b"@purpose bridge\n"
STATE_FILE = "state"
#: The annotation tor writes before each cached microdescriptor.
LAST_LISTED_ANNOTATION = "@last-listed"
#: Version of the JSON ``state`` file.
STATE_FILE_VERSION = 1
#: Files hold private client state (which guards we use): owner-only, like tor's DataDirectory.
FILE_MODE = 0o600
DIRECTORY_MODE = 0o700

_CERT_START_RE = re.compile(rb"^dir-key-certificate-version", re.M)


class CacheError(ValueError):
    """A cache or state file could not be read or written, or is malformed."""


def atomic_write(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new content, whole."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX: the directory entry lives in the directory)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def split_key_certificates(data: bytes) -> list[bytes]:
    """The text of each certificate in a concatenation (CRLF read as LF, as they were signed)."""
    data = data.replace(b"\r\n", b"\n")
    starts = [match.start() for match in _CERT_START_RE.finditer(data)]
    starts.append(len(data))
    return [data[starts[i]:starts[i + 1]] for i in range(len(starts) - 1)]


def split_microdescriptors(data: bytes) -> Iterator[tuple[bytes, float | None]]:
    """Yield ``(body, last_listed)`` for each microdescriptor of a cache file or a fetch reply.

    The body runs from ``onion-key`` to the next annotation or ``onion-key`` line
    (tor ``microdescs_parse_from_string``), exactly the text its digest covers.
    ``last_listed`` comes from a preceding ``@last-listed`` annotation, if any.
    """
    last_listed: float | None = None
    for chunk in split_microdescriptor_chunks(data):
        if chunk.startswith(b"onion-key"):
            yield chunk, last_listed
            last_listed = None
        elif chunk.startswith(LAST_LISTED_ANNOTATION.encode()):
            text = chunk[len(LAST_LISTED_ANNOTATION):].decode("latin-1").strip()
            try:
                last_listed = parse_time(text)
            except DocumentParseError:
                last_listed = None


def encode_microdescriptors(entries: Iterable[tuple[bytes, float | None]]) -> bytes:
    """Microdescriptor bodies with their ``@last-listed`` annotations, as tor's cache holds them."""
    parts = []
    for body, last_listed in entries:
        if last_listed is not None:
            parts.append(f"{LAST_LISTED_ANNOTATION} {format_time(last_listed)}\n".encode("ascii"))
        parts.append(body if body.endswith(b"\n") else body + b"\n")
    return b"".join(parts)


_ROUTER_START_RE = re.compile(rb"^router ", re.M)


def split_router_descriptors(data: bytes) -> list[bytes]:
    """The text of each server descriptor in a concatenation, from its ``router`` line to the next one (the
    next descriptor's annotations, after this one's signature, are left to the parser to skip)."""
    starts = [match.start() for match in _ROUTER_START_RE.finditer(data)]
    starts.append(len(data))
    return [data[starts[i]:starts[i + 1]] for i in range(len(starts) - 1)]


class DirectoryCache:
    """Reads and writes the cache files of one DataDirectory (blocking: call from a thread)."""

    def __init__(self, data_directory: Path | str) -> None:
        self.path = Path(data_directory)

    def ensure_directory(self) -> None:
        """Create the DataDirectory (owner-only) if it does not exist."""
        try:
            self.path.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create the DataDirectory {self.path}: {exc}") from None

    def _read(self, name: str) -> bytes | None:
        try:
            return (self.path / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheError(f"cannot read {self.path / name}: {exc}") from None

    def _write(self, name: str, data: bytes) -> None:
        self.ensure_directory()
        try:
            atomic_write(self.path / name, data)
        except OSError as exc:
            raise CacheError(f"cannot write {self.path / name}: {exc}") from None

    # ---- documents ---------------------------------------------------------------

    def read_certificates(self) -> bytes | None:
        return self._read(CACHED_CERTS_FILE)

    def write_certificates(self, certificates: Iterable[bytes]) -> None:
        self._write(CACHED_CERTS_FILE, b"".join(
            text if text.endswith(b"\n") else text + b"\n" for text in certificates))

    def read_consensus(self) -> bytes | None:
        return self._read(CACHED_CONSENSUS_FILE)

    def write_consensus(self, data: bytes) -> None:
        self._write(CACHED_CONSENSUS_FILE, data)

    def read_microdescriptors(self) -> bytes | None:
        """The cache file and tor's journal, concatenated (None if neither exists)."""
        main = self._read(CACHED_MICRODESCS_FILE)
        journal = self._read(CACHED_MICRODESCS_JOURNAL_FILE)
        if main is None and journal is None:
            return None
        return (main or b"") + (journal or b"")

    def write_microdescriptors(self, entries: Iterable[tuple[bytes, float | None]]) -> None:
        """Rewrite the cache with these (body, last_listed) entries; tor's journal is folded in."""
        self._write(CACHED_MICRODESCS_FILE, encode_microdescriptors(entries))
        try:
            (self.path / CACHED_MICRODESCS_JOURNAL_FILE).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CacheError(f"cannot remove {self.path / CACHED_MICRODESCS_JOURNAL_FILE}: {exc}") from None

    # ---- state ---------------------------------------------------------------------

    def read_bridge_descriptors(self) -> bytes | None:
        return self._read(CACHED_DESCRIPTORS_FILE)

    def write_bridge_descriptors(self, descriptors: Iterable[bytes]) -> None:
        self._write(CACHED_DESCRIPTORS_FILE, b"".join(
            BRIDGE_PURPOSE_ANNOTATION + (text if text.endswith(b"\n") else text + b"\n") for text in descriptors))

    def read_state(self) -> dict[str, Any] | None:
        """The JSON state, or None if there is none; :class:`CacheError` if it is malformed."""
        data = self._read(STATE_FILE)
        if data is None:
            return None
        try:
            state = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            # ValueError: not UTF-8, not JSON, or an integer beyond int()'s 4300 digits;
            # RecursionError: arrays nested deeper than the parser's recursion limit.
            raise CacheError(f"{self.path / STATE_FILE} is not valid JSON: {type(exc).__name__}: "
                             f"{str(exc)[:200]}") from None
        if not isinstance(state, dict) or state.get("version") != STATE_FILE_VERSION:
            raise CacheError(f"{self.path / STATE_FILE} is not an oppy state file of version "
                             f"{STATE_FILE_VERSION}")
        return state

    def write_state(self, state: dict[str, Any]) -> None:
        document = dict(state)
        document["version"] = STATE_FILE_VERSION
        self._write(STATE_FILE, (json.dumps(document, indent=1, sort_keys=True) + "\n").encode("utf-8"))
