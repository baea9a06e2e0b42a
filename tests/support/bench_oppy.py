"""oppy-side helpers for scripts/bench, run as subprocesses of it.

    python -m tests.support.bench_oppy profiled-daemon PROFILE_OUT -- OPPY_ARGS...
        oppy's daemon with cProfile switched on by SIGUSR1 and off by SIGUSR2 (which also writes the
        stats to PROFILE_OUT), so a profile covers exactly one transfer and not the bootstrap.
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
import json
import random
import re
import signal
import sys
import time
import urllib.request

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
    build = sub.add_parser("circuits")
    build.add_argument("--dir-port", type=int, required=True)
    build.add_argument("--count", type=int, default=20)
    build.add_argument("--guard")
    build.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    if args.command == "profiled-daemon":
        oppy_args = args.oppy_args[1:] if args.oppy_args[:1] == ["--"] else args.oppy_args
        return profiled_daemon(args.profile_out, oppy_args)
    return circuits(args.dir_port, args.count, args.guard, args.seed)


if __name__ == "__main__":
    sys.exit(main())
