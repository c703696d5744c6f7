"""The timing protocol with the old cap and the new default (issue 13 item 2): how long each really timed,
what stopped it, and the noise measures. Usage: python benchmarks/timing_protocol.py BUNDLE [DEVICE]"""

from __future__ import annotations

import sys

from edgepack.bench import run_bench


def main(bundle: str, device: str = "local") -> None:
    for label, ov in (("max_runs 2000 (old default)", {"max_runs": 2000, "threads": 1}), ("default", {"threads": 1})):
        rep = run_bench(bundle, [device], overrides=ov)
        for tid, t in rep["devices"][device]["targets"].items():
            lat, timed = t["latency"], t["timed"]
            print(f"{label:<28} {tid}: {timed['runs']} runs in {timed['elapsed_s']:.3f} s (stopped by {timed['stopped_by']}), "
                  f"warm-up {t['warmup']['runs']} runs {t['warmup']['elapsed_s']:.3f} s; p50 {lat['p50_ms']:.4f} p90 {lat['p90_ms']:.4f} ms, "
                  f"cv {lat['cv']:.2f}, spread {lat['spread']:.3f}, p50 noise {lat['p50_noise_ms']:.5f} ms, noisy {t['noisy']}")


if __name__ == "__main__":
    main(*sys.argv[1:])
