"""oppy-side helpers for scripts/bench, run as subprocesses of it.

    python -m tests.support.bench_oppy profiled-daemon PROFILE_OUT -- OPPY_ARGS...
        oppy's daemon with cProfile switched on by SIGUSR1 and off by SIGUSR2 (which also writes the
        stats to PROFILE_OUT), so a profile covers exactly one transfer and not the bootstrap.
    python -m tests.support.bench_oppy traced-daemon [--frames N] OUT_DIR -- OPPY_ARGS...
        oppy's daemon with tracemalloc (N frames) started by the first SIGUSR1 (after the bootstrap); each
        SIGUSR1 writes OUT_DIR/dump-NNN.txt (traced and RSS sizes, the C allocator's and pymalloc's figures,
        the top allocation sites, live objects by type, compared with the previous and the first dump) and
        appends one JSON line to OUT_DIR/summary.jsonl, so growth over a long run can be read site by site.
        --frames 0 traces nothing (object counts and allocator figures only, at no cost between dumps).
    python -m tests.support.bench_oppy circuits --dir-port PORT --count N [--guard FP]
        builds N three-hop circuits in process with oppy.circuit.build.build_circuit against the relays
        the directory at 127.0.0.1:PORT lists (link to the guard opened first and reused, as a running
        client has it), and prints one JSON object with the build times in seconds.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import cProfile
import ctypes
import gc
import json
import linecache
import os
import random
import re
import signal
import sys
import tempfile
import time
import tracemalloc
import types
import urllib.request
from collections import Counter
from pathlib import Path

HOST = "127.0.0.1"


# ---------------------------------------------------------------------------------------------- profiling


def profiled_daemon(profile_out: str, oppy_args: list[str]) -> int:
    """Run oppy's main with a profiler that SIGUSR1 starts and SIGUSR2 stops and dumps."""
    from oppy.cli import main

    profiler = cProfile.Profile()

    def start(_signum, _frame):
        profiler.enable()

    def stop(_signum, _frame):
        profiler.disable()
        profiler.dump_stats(profile_out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    return main(oppy_args)


# ---------------------------------------------------------------------------------------------- tracemalloc

# Allocation sites shown per dump, and object types.
TOP_SITES = 30
TOP_TYPES = 40
# OPPY_DUMP_REFERRERS=module.Type[,...]: each dump also shows what keeps a few instances of these types alive.
REFERRERS_ENV = "OPPY_DUMP_REFERRERS"
REFERRER_CHAINS = 12
# The dumper's own allocations (tracemalloc formatting tracebacks fills linecache) are not oppy's.
_NOISE = (tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap*"),
          tracemalloc.Filter(False, "<unknown>"), tracemalloc.Filter(False, linecache.__file__, all_frames=True),
          tracemalloc.Filter(False, __file__, all_frames=True))


def _vm_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


class _MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (malloc.h), summed over every arena."""

    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _malloc_kib() -> dict:
    """What the C allocator holds: in use (small blocks + mmapped) and free inside its arenas (memory that RSS
    counts but no object uses); empty where the C library is not glibc >= 2.33."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except AttributeError:
        return {}
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return {"malloc_in_use_kib": (info.uordblks + info.hblkhd) // 1024, "malloc_free_kib": info.fordblks // 1024,
            "malloc_heap_kib": info.arena // 1024, "malloc_mmapped_kib": info.hblkhd // 1024}


def _pymalloc_kib() -> dict:
    """Python's small-object allocator: its arenas (1 MiB each, returned only when wholly empty) against the
    bytes its live blocks use, from sys._debugmallocstats (which writes to file descriptor 2)."""
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        try:
            os.dup2(capture.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode(errors="replace")
    arenas = re.search(r"^(\d+) arenas \* (\d+) bytes/arena", text, re.M)
    used = re.search(r"^# bytes in allocated blocks\s*=\s*([\d,]+)", text, re.M)
    if not arenas or not used:
        return {}
    return {"pymalloc_arenas_kib": int(arenas.group(1)) * int(arenas.group(2)) // 1024,
            "pymalloc_used_kib": int(used.group(1).replace(",", "")) // 1024}


def _type_name(kind: type) -> str:
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _object_counts() -> Counter:
    return Counter(_type_name(type(obj)) for obj in gc.get_objects())


def _describe(obj) -> str:
    name = _type_name(type(obj))
    if isinstance(obj, dict) and "__name__" in obj:
        return f"{name} (globals of {obj['__name__']})"
    if isinstance(obj, types.FunctionType):
        return f"{name} {obj.__qualname__}"
    return name


def _referrer_chain(target, max_depth: int = 12) -> list[str]:
    """Who keeps `target` alive: a shortest chain of referrers back to a module or its globals (breadth first
    over gc.get_referrers; frames and the search's own containers are skipped)."""
    seen = {id(target)}
    frontier = [(target, [_describe(target)])]
    ignored = {id(seen), id(frontier)}
    for _ in range(max_depth):
        next_frontier = []
        ignored.add(id(next_frontier))
        for obj, chain in frontier:
            for referrer in gc.get_referrers(obj):
                if id(referrer) in seen or id(referrer) in ignored or isinstance(referrer, types.FrameType):
                    continue
                seen.add(id(referrer))
                path = chain + [_describe(referrer)]
                if isinstance(referrer, types.ModuleType) or (isinstance(referrer, dict) and "__name__" in referrer):
                    return path
                next_frontier.append((referrer, path))
        frontier = next_frontier
        if not frontier:
            break
    return [_describe(target), "(no root found)"]


class MemoryDumper:
    """What SIGUSR1 does: the first one starts tracing (after the bootstrap: tracemalloc slows every
    allocation, and start-up is not what is measured); each one writes this process's memory now, against
    the previous dump (what the last interval kept) and against the first (everything kept since)."""

    def __init__(self, out_dir: Path, frames: int) -> None:
        self.out_dir = out_dir
        self.frames = frames
        self.started = time.monotonic()
        self.count = 0
        self.first: tracemalloc.Snapshot | None = None
        self.previous: tracemalloc.Snapshot | None = None
        self.first_type_counts: Counter | None = None

    def dump(self, *_signal) -> None:
        tracing = self.frames > 0
        if tracing and not tracemalloc.is_tracing():
            tracemalloc.start(self.frames)
        gc.collect()
        snapshot = tracemalloc.take_snapshot().filter_traces(_NOISE) if tracing else None
        type_counts = _object_counts()
        current, peak = tracemalloc.get_traced_memory()
        # pymalloc's figures exist only while it is not wrapped by tracemalloc.
        allocators = {**({} if tracing else _pymalloc_kib()), **_malloc_kib()}
        elapsed = time.monotonic() - self.started
        lines = [f"dump {self.count} at {elapsed:.1f}s: traced {current / 2**20:.2f} MiB (peak {peak / 2**20:.2f}), "
                 f"VmRSS {_vm_kib('VmRSS') / 1024:.1f} MiB, VmHWM {_vm_kib('VmHWM') / 1024:.1f} MiB, "
                 f"gc objects {sum(type_counts.values())}",
                 "allocators: " + ", ".join(f"{key[:-4]} {value / 1024:.1f} MiB" for key, value in allocators.items())]
        if snapshot is not None:
            lines += ["", "top allocation sites (live, traced since dump 0):"]
            lines += [f"  {stat}" for stat in snapshot.statistics("lineno")[:TOP_SITES]]
        lines += ["", "live objects by type:"]
        lines += [f"  {count:8d}  {name}" for name, count in type_counts.most_common(TOP_TYPES)]
        lines += ["", "live oppy objects:"]
        lines += [f"  {count:8d}  {name}" for name, count in sorted(type_counts.items()) if name.startswith("oppy.")]
        for type_name in filter(None, os.environ.get(REFERRERS_ENV, "").split(",")):
            instances = [obj for obj in gc.get_objects() if _type_name(type(obj)) == type_name][:REFERRER_CHAINS]
            lines += ["", f"what keeps {type_name} alive ({len(instances)} shown):"]
            lines += ["  " + " <- ".join(_referrer_chain(obj)) for obj in instances]
        if self.count:
            if snapshot is not None:
                lines += ["", "since the previous dump, by site:"]
                lines += [f"  {stat}" for stat in snapshot.compare_to(self.previous, "lineno")[:TOP_SITES]]
                lines += ["", "since dump 0, by traceback:"]
                for stat in snapshot.compare_to(self.first, "traceback")[:12]:
                    lines.append(f"  {stat.size_diff / 1024:+.1f} KiB, {stat.count_diff:+d} blocks:")
                    lines += [f"      {frame}" for frame in stat.traceback.format(limit=self.frames)]
            lines += ["", "since dump 0, by type:"]
            diff = Counter(type_counts)
            diff.subtract(self.first_type_counts)
            lines += [f"  {count:+8d}  {name}" for name, count in diff.most_common(TOP_TYPES) if count > 0]
        else:
            self.first, self.first_type_counts = snapshot, type_counts
        self.previous = snapshot
        (self.out_dir / f"dump-{self.count:03d}.txt").write_text("\n".join(lines) + "\n")
        with open(self.out_dir / "summary.jsonl", "a") as summary:
            summary.write(json.dumps({"dump": self.count, "seconds": round(elapsed, 1), "traced_kib": current // 1024,
                                      "rss_kib": _vm_kib("VmRSS"), **allocators, "objects": sum(type_counts.values()),
                                      "types": dict(type_counts.most_common(TOP_TYPES)),
                                      "oppy_types": {name: count for name, count in type_counts.items()
                                                     if name.startswith("oppy.")}}) + "\n")
        self.count += 1


def traced_daemon(out_dir: str, frames: int, oppy_args: list[str]) -> int:
    """Run oppy's main, SIGUSR1 starting tracemalloc and writing a dump."""
    from oppy.cli import main

    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGUSR1, MemoryDumper(directory, frames).dump)
    return main(oppy_args)


# ---------------------------------------------------------------------------------------------- circuits


def _b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _relays_from_dir_port(dir_port: int):
    """(RelayTarget, flags) for every relay, from the server descriptors and consensus a DirPort serves."""
    from oppy.netdoc.relay import RelayTarget

    with urllib.request.urlopen(f"http://{HOST}:{dir_port}/tor/server/all", timeout=10) as answer:
        descriptors = answer.read().decode(errors="replace")
    with urllib.request.urlopen(f"http://{HOST}:{dir_port}/tor/status-vote/current/consensus-microdesc",
                                timeout=10) as answer:
        consensus = answer.read().decode(errors="replace")
    flags_by_nick: dict[str, set[str]] = {}
    nickname = None
    for line in consensus.splitlines():
        if line.startswith("r "):
            nickname = line.split()[1]
        elif line.startswith("s ") and nickname:
            flags_by_nick[nickname] = set(line.split()[1:])
    relays = []
    for block in re.split(r"^(?=router )", descriptors, flags=re.M):
        fields = {}
        for line in block.splitlines():
            key, _, value = line.partition(" ")
            if key in ("router", "fingerprint", "ntor-onion-key", "master-key-ed25519"):
                fields.setdefault(key, value.strip())
        if not {"router", "fingerprint", "ntor-onion-key"} <= fields.keys():
            continue
        nick, address, or_port = fields["router"].split()[:3]
        rsa_id = binascii.unhexlify(fields["fingerprint"].replace(" ", ""))
        ed25519 = _b64(fields["master-key-ed25519"]) if "master-key-ed25519" in fields else None
        relays.append((RelayTarget(nick, rsa_id, address, int(or_port), _b64(fields["ntor-onion-key"]), ed25519),
                       flags_by_nick.get(nick, set())))
    return relays


def circuits(dir_port: int, count: int, guard_fingerprint: str | None, seed: int | None) -> int:
    from twisted.internet import defer, reactor, task

    from oppy.circuit.build import build_circuit
    from oppy.link.connection import LinkPool

    relays = _relays_from_dir_port(dir_port)
    rng = random.Random(seed)
    usable = [(r, f) for r, f in relays if {"Running", "Valid"} <= f]
    exits = [r for r, f in usable if "Exit" in f and "BadExit" not in f]
    guards = [r for r, f in usable if "Guard" in f and r not in exits]
    if guard_fingerprint:
        guard = next(r for r, _ in usable if r.fingerprint == guard_fingerprint.upper().lstrip("$"))
    else:
        guard = rng.choice(guards)
    result: dict = {"guard": guard.nickname, "times": [], "errors": []}

    @defer.inlineCallbacks
    def run():
        links = LinkPool(reactor)
        started = time.perf_counter()
        yield links.get(guard)
        result["link_open_seconds"] = time.perf_counter() - started
        for _ in range(count):
            exit_relay = rng.choice([r for r in exits if r != guard])
            middle = rng.choice([r for r, _ in usable if r not in (guard, exit_relay)])
            started = time.perf_counter()
            try:
                circuit = yield build_circuit(links, [guard, middle, exit_relay], timeout=30.0, reactor=reactor)
            except Exception as exc:  # noqa: BLE001 - reported, the run goes on
                result["errors"].append(str(exc))
                continue
            result["times"].append(time.perf_counter() - started)
            circuit.close()
        # Let the DESTROY cells go out before the links close.
        yield task.deferLater(reactor, 0.2, lambda: None)
        links.close_all()

    def finish(outcome):
        if isinstance(outcome, Exception) or hasattr(outcome, "getErrorMessage"):
            result["errors"].append(str(getattr(outcome, "value", outcome)))
        reactor.callLater(0.1, reactor.stop)

    reactor.callWhenRunning(lambda: run().addBoth(finish))
    reactor.run()
    print(json.dumps(result))
    return 0 if result["times"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    daemon = sub.add_parser("profiled-daemon")
    daemon.add_argument("profile_out")
    daemon.add_argument("oppy_args", nargs=argparse.REMAINDER)
    traced = sub.add_parser("traced-daemon")
    traced.add_argument("out_dir")
    traced.add_argument("--frames", type=int, default=int(os.environ.get("OPPY_TRACEMALLOC_FRAMES", "4")))
    traced.add_argument("oppy_args", nargs=argparse.REMAINDER)
    build = sub.add_parser("circuits")
    build.add_argument("--dir-port", type=int, required=True)
    build.add_argument("--count", type=int, default=20)
    build.add_argument("--guard")
    build.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    if args.command == "profiled-daemon":
        oppy_args = args.oppy_args[1:] if args.oppy_args[:1] == ["--"] else args.oppy_args
        return profiled_daemon(args.profile_out, oppy_args)
    if args.command == "traced-daemon":
        oppy_args = args.oppy_args[1:] if args.oppy_args[:1] == ["--"] else args.oppy_args
        return traced_daemon(args.out_dir, args.frames, oppy_args)
    return circuits(args.dir_port, args.count, args.guard, args.seed)


if __name__ == "__main__":
    sys.exit(main())
