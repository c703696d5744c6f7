"""Local transport vs SSH loopback: does going through ssh + the agent change the numbers?

Starts the test OpenSSH server (tests/sshd.py) on 127.0.0.1, then benchmarks every target of a bundle
on `local` and on the loopback ssh device, one device at a time (never in parallel: same CPU),
alternating for ROUNDS rounds, and prints the median p50 per transport and the ssh/local ratio.

    python benchmarks/devices_loopback.py BUNDLE_DIR [--data inputs.npz] [--rounds 3]

Needs /usr/sbin/sshd (apt-get install openssh-server) and runs as the current user.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import sshd

from edgepack.bench import run_bench


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--data")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    why = sshd.available()
    if why:
        print(f"cannot run: {why}")
        return 2
    overrides = {"runs": args.runs, "min_seconds": args.min_seconds, "threads": args.threads, "max_runs": 100000}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        server = sshd.SSHServer.start(tmp / "sshd")
        try:
            loop = server.profile(tmp / "loopback.yaml", name="loopback")
            p50: dict[tuple[str, str], list[float]] = {}
            wall: dict[str, list[float]] = {}
            for r in range(args.rounds):
                for dev in ("local", str(loop)):
                    t0 = time.perf_counter()
                    rep = run_bench(args.bundle, [dev], data=Path(args.data) if args.data else None, overrides=overrides)
                    name = next(iter(rep["devices"]))
                    wall.setdefault(name, []).append(time.perf_counter() - t0)
                    for tid, t in rep["devices"][name]["targets"].items():
                        if t["status"] != "ok":
                            print(f"round {r}: {tid} on {name}: {t.get('error')}")
                            continue
                        p50.setdefault((tid, name), []).append(t["latency"]["p50_ms"])
        finally:
            server.stop()
    print(f"{'target':<12} {'local p50 ms':>13} {'ssh p50 ms':>11} {'ssh/local':>10}   (median of {args.rounds} rounds, "
          f"threads={args.threads}, >= {args.runs} runs and {args.min_seconds}s each)")
    for tid in sorted({t for t, _ in p50}):
        a = statistics.median(p50.get((tid, "local"), [float("nan")]))
        b = statistics.median(p50.get((tid, "loopback"), [float("nan")]))
        rounds = " ".join(f"{x:.4f}" for x in p50.get((tid, "local"), [])) + " | " + " ".join(
            f"{x:.4f}" for x in p50.get((tid, "loopback"), []))
        print(f"{tid:<12} {a:13.4f} {b:11.4f} {b / a:10.3f}   rounds local | ssh: {rounds}")
    print(f"wall per bench command: local {statistics.median(wall['local']):.1f}s, "
          f"ssh {statistics.median(wall['loopback']):.1f}s (bench + memory job per target, connection set-up included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
