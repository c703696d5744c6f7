"""Package + sign, and verify, of a large bundle vs one sha256 pass over its bytes (issue 12 item 7).

    python benchmarks/package_sign.py [--mb 500] [--repeat 3]

Writes one --mb MB file of random bytes under /tmp (deleted at the end), then per repeat: one sha256
pass over it (the floor), ``write_bundle`` with the build's ``before_swap`` signing (copy, manifest,
model-signing signature, as ``edgepack build`` packages), and ``verify_bundle`` with the public key
(file list + signature, as ``edgepack verify DIR``). Prints the medians and the ratios to the floor
(targets: package + sign <= 2x, verify <= 1.2x). The file is read from the page cache after the
first pass (the machine has the memory), so the ratios compare hashing work, not disk speed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _sha256_pass(path: Path) -> float:
    t0 = time.perf_counter()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return time.perf_counter() - t0


def main() -> None:
    from edgepack.bundle.keys import keygen
    from edgepack.bundle.manifest import write_bundle
    from edgepack.bundle.sign import sign_bundle
    from edgepack.bundle.sigcheck import verify_bundle

    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgepack-pkg-sign-", dir="/tmp") as d:
        d = Path(d)
        big = d / "model.bin"
        with open(big, "wb") as f:
            for _ in range(args.mb):
                f.write(os.urandom(1 << 20))
        key, pub = keygen(d / "key.pem")
        floor, pkg, ver = [], [], []
        for i in range(args.repeat):
            floor.append(_sha256_pass(big))
            out = d / f"bundle{i}"
            t0 = time.perf_counter()
            write_bundle(out, {"targets/big/model.bin": big}, {"name": "big", "version": "1.0.0", "targets": {}}, {},
                         before_swap=lambda staged: sign_bundle(staged, key, files_checked=True))
            pkg.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            verify_bundle(out, pub)
            ver.append(time.perf_counter() - t0)
    f, p, v = statistics.median(floor), statistics.median(pkg), statistics.median(ver)
    print(f"bundle of one {args.mb} MB file, median of {args.repeat}")
    print(f"one sha256 pass:  {f:.2f} s  runs {[round(x, 2) for x in floor]}")
    print(f"package + sign:   {p:.2f} s  runs {[round(x, 2) for x in pkg]}  -> {p / f:.2f}x the sha256 pass (target <= 2x)")
    print(f"verify:           {v:.2f} s  runs {[round(x, 2) for x in ver]}  -> {v / f:.2f}x the sha256 pass (target <= 1.2x)")


if __name__ == "__main__":
    main()
