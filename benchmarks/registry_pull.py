"""Registry pulls side by side on a local docker-registry: whole bundle vs one device's target vs verify-only.

Usage: python benchmarks/registry_pull.py [--targets 3] [--mb 20] [--repeat 3]
Prints bytes and median seconds per mode and the ratios to a whole-bundle pull; also oras-py's
pull of one target manifest (no re-hash, no signature) next to edgepack's verified one.
Needs /usr/bin/docker-registry (scripts/setup-tests.sh installs it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from registry_server import RegistryServer  # noqa: E402

from edgepack import registry  # noqa: E402
from edgepack.bundle import keygen, sign_bundle, write_bundle  # noqa: E402
from edgepack.devices import DeviceProfile  # noqa: E402


def make_bundle(root: Path, n: int, mb: int, key: Path) -> Path:
    files, targets, devices = {}, {}, {}
    for i in range(n):
        src = root / f"t{i}.onnx"
        src.write_bytes(os.urandom(mb << 20))
        files[f"targets/t{i}/model.onnx"] = src
        targets[f"t{i}"] = {"path": f"targets/t{i}/model.onnx", "runtime": "onnxruntime", "precision": "fp32",
                            "validated_on": ["edge"]}
        devices[f"t{i}"] = {"devices": {"edge": {"status": "ok", "latency": {"p50_ms": 1.0 + i}}}}
    b = write_bundle(root / "bundle", files, {"name": "bench", "version": "1", "targets": targets}, {"targets": devices})
    sign_bundle(b, key)
    return b


def timed(fn, repeat: int) -> float:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def tree_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", type=int, default=3)
    ap.add_argument("--mb", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        priv, pub = keygen(d / "k.pem")
        b = make_bundle(d, a.targets, a.mb, priv)
        with RegistryServer(d / "registry") as reg:
            ref = f"{reg.host}/models/bench:1"  # repository = model name, tag = version
            push_s = timed(lambda: registry.push(b, ref), 1)
            dev = DeviceProfile(name="edge", runtimes=["onnxruntime"])
            rows = {}

            def pull(out, **kw):
                shutil.rmtree(out, ignore_errors=True)
                registry.pull(ref, out, pub, **kw)

            rows["whole bundle (verified)"] = (timed(lambda: pull(d / "full"), a.repeat), tree_bytes(d / "full"))
            rows["--device edge (verified)"] = (timed(lambda: pull(d / "dev", device=dev), a.repeat), tree_bytes(d / "dev"))
            rows["verify REF (no download)"] = (timed(lambda: registry.verify(ref, pub), a.repeat), 0)
            try:
                import json

                import oras.client

                from edgepack.registry.http import RemoteStore

                idx = json.loads(RemoteStore(reg.host, "models/bench").get_manifest("1")[0])
                m = idx["manifests"][0]["digest"]
                client = oras.client.OrasClient(insecure=True)

                def oras_pull():
                    shutil.rmtree(d / "oras", ignore_errors=True)
                    client.pull(target=f"{reg.host}/models/bench@{m}", outdir=str(d / "oras"))

                rows["oras-py pull, one target (unverified)"] = (timed(oras_pull, a.repeat), tree_bytes(d / "oras"))
            except ImportError:
                pass
    base_s, base_b = rows["whole bundle (verified)"]
    print(f"bundle: {a.targets} targets x {a.mb} MB; push {push_s:.2f} s; median of {a.repeat}")
    print(f"{'mode':<40} {'seconds':>8} {'MB on disk':>11} {'time ratio':>11} {'bytes ratio':>12}")
    for k, (s, n) in rows.items():
        print(f"{k:<40} {s:8.3f} {n / 2**20:11.1f} {s / base_s:11.2f} {n / base_b:12.2f}")


if __name__ == "__main__":
    main()
