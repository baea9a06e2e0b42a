"""Client CPU per MB, A/B: oppy from two or more source trees and the C tor client, alternating, on a running
private network.

    python -m tests.support.bench_cpu_ab --network-dir DIR [--rounds 5] [--fetches 2]
        [--oppy main=/work/main,branch=.] [--tor tor,tor-noconflux]

Each round starts every client fresh (scripts/bench's clients: empty data directory, the network's
DirAuthority lines), in an order that rotates round by round, and times `--fetches` downloads of 50 MB
(content checked), taking the client's utime+stime from /proc/PID/stat over each. oppy first waits for a linked
conflux set, and a download that did not ride one (STREAM events against circuit-status) is left out and said
so: a stream that comes while the sets still link takes a single circuit. Prints each sample, then the CPU
ms/MB and MB/s medians [min-max] per client. `tor` is C tor with its defaults (conflux), `tor-noconflux` with
ConfluxEnabled 0. Every process it starts is stopped by pid.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parent.parent.parent
BULK_MB = 50


def load_bench():
    """scripts/bench as a module (it has no .py name)."""
    loader = importlib.machinery.SourceFileLoader("bench", str(REPO / "scripts" / "bench"))
    spec = importlib.util.spec_from_loader("bench", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module
    loader.exec_module(module)
    return module


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    return f"{median(values):.1f} [{values[0]:.1f}-{values[-1]:.1f}] (n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network-dir", required=True, help="a running network (scripts/testnet up --dir DIR)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fetches", type=int, default=2, help="50 MB downloads per client and round")
    parser.add_argument("--oppy", default=f"main=/work/main,branch={REPO}",
                        help="NAME=TREE,...: oppy source trees to compare")
    parser.add_argument("--tor", default="tor,tor-noconflux", help="C tor configurations beside them ('' for none)")
    args = parser.parse_args()
    bench = load_bench()
    trees = {name: Path(tree).resolve() for name, tree in (item.split("=", 1) for item in args.oppy.split(","))}
    clients = list(trees) + [name for name in args.tor.split(",") if name]
    # Each oppy runs from its own tree: `python -m oppy` with that tree as its working directory.
    os.environ.pop("PYTHONPATH", None)
    network = json.loads(subprocess.run([sys.executable, str(REPO / "scripts" / "testnet"), "env", "--dir",
                                         args.network_dir, "--json"], check=True, capture_output=True,
                                        text=True).stdout)
    target = bench.Target(network["http_port"])
    size = BULK_MB * bench.MB
    target.sha256(size)
    cpu: dict[str, list[float]] = {name: [] for name in clients}
    speed: dict[str, list[float]] = {name: [] for name in clients}
    root = Path(tempfile.mkdtemp(prefix="oppy-cpu-ab-"))
    for round_number in range(args.rounds):
        order = clients[round_number % len(clients):] + clients[:round_number % len(clients)]
        for name in order:
            workdir = root / f"{name}-{round_number}"
            workdir.mkdir()
            if name in trees:
                bench.REPO = trees[name]
                client = bench.OppyClient(network, workdir)
            else:
                client = bench.TorClient(network, workdir, conflux=(name == "tor"))
            client.start()
            try:
                if name in trees and not bench.wait_conflux_linked(client, bench.BOOTSTRAP_TIMEOUT):
                    raise RuntimeError("no conflux set linked")
                bench.wait_first_fetch(client, target)
                target.fetch(client.socks_port, 1_000_000)
                for _ in range(args.fetches):
                    control = bench.ControlConnection(client.control_port) if name in trees else None
                    if control is not None:
                        control.command("SETEVENTS STREAM")
                    before = bench.cpu_seconds(client.pid)
                    fetched = target.fetch(client.socks_port, size, check=True)
                    used = bench.cpu_seconds(client.pid) - before
                    path = "-"
                    if control is not None:
                        path = bench.stream_path(control)
                        control.close()
                        if path != "a conflux set":
                            print(f"round {round_number} {name}: left out, the download rode {path}", flush=True)
                            continue
                    cpu[name].append(used / BULK_MB * 1000)
                    speed[name].append(BULK_MB / fetched["seconds"])
                    print(f"round {round_number} {name}: {cpu[name][-1]:.1f} ms/MB, {speed[name][-1]:.1f} MB/s "
                          f"{path}", flush=True)
            except Exception as exc:  # noqa: BLE001 - one failed run is reported, the others go on
                print(f"round {round_number} {name}: failed: {exc!r}", flush=True)
            finally:
                client.stop()
    for name in clients:
        print(f"{name:14s} CPU ms/MB {spread(cpu[name])}   MB/s {spread(speed[name])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
