"""Pick the target a device should get, from the SIGNED bundle manifest and report only.

Index annotations (target, precision, validated-on) are for people and `edgepack ls`; they
are not signed, so the choice is made again from ``edgepack.json`` (config, signed) and
``report.json`` (signed) once the signature has been checked.

Best = among targets validated on a device profile of this name (``validated_on``) whose
runtime the device has: the lowest measured p50 latency on that device, where latencies within
the measured noise of the fastest are ties: ``p50 - fastest p50 <= max(noise of either, 2% of the
fastest p50)`` (noise: ``latency.p50_noise_ms``, how far the median moved during the timed runs,
edgepack/devices/runner.py). Ties (or no latency) go to the lower precision (int8 before fp16
before fp32), then the smaller model file, then the target id.
"""

from __future__ import annotations

from edgepack.errors import BadInputError

_PRECISION_RANK = {"int8": 0, "int8-static": 0, "int8-dynamic": 1, "fp16": 2, "fp32": 3}


TIE_FLOOR = 0.02  # latencies within 2% of the fastest are ties whatever the measured noise (run-to-run drift)


def _latency(report: dict, tid: str, device: str) -> tuple[float | None, float]:
    """(p50 ms, its noise in ms) of ``tid`` on ``device``."""
    dev = (((report.get("targets") or {}).get(tid) or {}).get("devices") or {}).get(device) or {}
    lat = dev.get("latency") or {}
    p50, noise = lat.get("p50_ms"), lat.get("p50_noise_ms")
    return (p50 if isinstance(p50, (int, float)) else None), (noise if isinstance(noise, (int, float)) else 0.0)


def _size(report: dict, tid: str) -> float:
    size = ((report.get("targets") or {}).get(tid) or {}).get("size_bytes")
    return size if isinstance(size, (int, float)) else float("inf")


def _best(candidates: list[dict]) -> tuple[dict, list[str]]:
    """The candidate to ship and the ids tied with the fastest within the noise."""
    timed = sorted((c for c in candidates if c["p50"] is not None), key=lambda c: c["p50"])
    pool = candidates
    if timed:
        fast = timed[0]
        pool = [c for c in timed if c["p50"] - fast["p50"] <= max(fast["noise"], c["noise"], TIE_FLOOR * fast["p50"])]
    pool = sorted(pool, key=lambda c: (c["rank"], c["size"], c["tid"]))
    return pool[0], [c["tid"] for c in pool]


def choose_target(config: dict, report: dict, device, where: str) -> tuple[str, dict]:
    """(target id, why) for a DeviceProfile-like object with ``name`` and ``runtimes``."""
    declared = config.get("targets")
    targets: dict = declared if isinstance(declared, dict) else {}
    candidates, seen = [], []
    for tid, t in sorted(targets.items()):
        validated = list(t.get("validated_on") or [])
        seen.append(f"{tid} ({t.get('runtime')}, validated on {', '.join(validated) or 'nothing'})")
        if device.name in validated and t.get("runtime") in device.runtimes:
            p50, noise = _latency(report, tid, device.name)
            candidates.append({"tid": tid, "t": t, "p50": p50, "noise": noise, "size": _size(report, tid),
                               "rank": _PRECISION_RANK.get(str(t.get("precision")), 9)})
    if not candidates:
        raise BadInputError(
            f"no target was validated on device '{device.name}' with one of its runtimes "
            f"({', '.join(device.runtimes)}); targets: {'; '.join(seen) or 'none'}",
            hint="add this device profile to the recipe's devices and rebuild, or pull a target by name with --target", where=where
        )
    best, tied = _best(candidates)
    t = best["t"]
    why = {"device": device.name, "target": best["tid"], "precision": t.get("precision"), "runtime": t.get("runtime"),
           "p50_ms": best["p50"], "candidates": [c["tid"] for c in sorted(candidates, key=lambda c: (c["p50"] is None, c["p50"] or 0, c["tid"]))],
           "tied_within_noise": tied if len(tied) > 1 else []}
    return best["tid"], why
