"""Cost of re-checking a cache hit: the check of a 500 MB entry vs one sha256 pass over its bytes.

    python benchmarks/cache_verify.py [--mb 500] [--files 4] [--repeat 5]

Writes an entry of --files files totalling --mb MB (random bytes) into a fresh StageCache, then
times ``StageCache.lookup`` (sizes, then every file hashed once against entry.json) and a plain
``sha256_file`` pass over the same files, alternately, with the files in the page cache for both.
Prints the medians and their ratio (check / one pass): 1.0 is the floor, the issue asks <= ~1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgepack.artifact import Artifact, sha256_file  # noqa: E402
from edgepack.cache import StageCache  # noqa: E402


def _entry(cache: StageCache, mb: int, files: int) -> tuple[str, list[Path]]:
    key = "b" * 64
    work = cache.new_workdir(key)
    chunk = os.urandom(1 << 20)
    outputs = {}
    for i in range(files):
        p = work / f"part{i}.bin"
        with open(p, "wb") as f:
            for _ in range(mb // files):
                f.write(chunk)
        outputs[f"part{i}"] = Artifact(p, "bin", digest=f"unused{i}")
    entry = cache.entry_dir(key)
    cache.commit(key, work, outputs, {})
    return key, sorted(entry.glob("part*.bin"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=500)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        cache = StageCache(Path(tmp) / "cache")
        key, parts = _entry(cache, args.mb, args.files)
        for p in parts:  # warm the page cache for both
            sha256_file(p)
        check, one_pass = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            hit, problem = cache.lookup(key)
            check.append(time.perf_counter() - t0)
            assert hit is not None and problem is None, problem
            t0 = time.perf_counter()
            for p in parts:
                sha256_file(p)
            one_pass.append(time.perf_counter() - t0)
        c, s = statistics.median(check), statistics.median(one_pass)
        total = sum(p.stat().st_size for p in parts) / 1e6
        print(f"entry: {total:.0f} MB in {len(parts)} files; repeat {args.repeat}")
        print(f"cache hit check (StageCache.lookup): {c:.3f} s median")
        print(f"one sha256 pass (sha256_file):       {s:.3f} s median ({total / s:.0f} MB/s)")
        print(f"ratio check / one pass: {c / s:.3f}")


if __name__ == "__main__":
    main()
