"""Pick the target a device should get, from the SIGNED bundle manifest and report only.

Index annotations (target, precision, validated-on) are for people and `edgepack ls`; they
are not signed, so the choice is made again from ``edgepack.json`` (config, signed) and
``report.json`` (signed) once the signature has been checked.

Best = among targets validated on a device profile of this name (``validated_on``) whose
runtime the device has: the lowest measured p50 latency on that device; ties (or no latency)
go to the lower precision (int8 before fp16 before fp32), then the target id.
"""

from __future__ import annotations

from edgepack.errors import BadInputError

_PRECISION_RANK = {"int8": 0, "int8-static": 0, "int8-dynamic": 1, "fp16": 2, "fp32": 3}


def _p50(report: dict, tid: str, device: str):
    dev = (((report.get("targets") or {}).get(tid) or {}).get("devices") or {}).get(device) or {}
    return (dev.get("latency") or {}).get("p50_ms")


def choose_target(config: dict, report: dict, device, where: str) -> tuple[str, dict]:
    """(target id, why) for a DeviceProfile-like object with ``name`` and ``runtimes``."""
    declared = config.get("targets")
    targets: dict = declared if isinstance(declared, dict) else {}
    candidates, seen = [], []
    for tid, t in sorted(targets.items()):
        validated = list(t.get("validated_on") or [])
        seen.append(f"{tid} ({t.get('runtime')}, validated on {', '.join(validated) or 'nothing'})")
        if device.name in validated and t.get("runtime") in device.runtimes:
            p50 = _p50(report, tid, device.name)
            rank = (p50 if isinstance(p50, (int, float)) else float("inf"), _PRECISION_RANK.get(str(t.get("precision")), 9), tid)
            candidates.append((rank, tid, t, p50))
    if not candidates:
        raise BadInputError(
            f"{where}: no target was validated on device '{device.name}' with one of its runtimes "
            f"({', '.join(device.runtimes)}); targets: {'; '.join(seen) or 'none'}",
            hint="add this device profile to the recipe's devices and rebuild, or pull a target by name with --target",
        )
    candidates.sort(key=lambda c: c[0])
    _, tid, t, p50 = candidates[0]
    why = {"device": device.name, "target": tid, "precision": t.get("precision"), "runtime": t.get("runtime"),
           "p50_ms": p50, "candidates": [c[1] for c in candidates]}
    return tid, why
