"""`edgepack devices check`: reach a device and say what it is and which bundle targets it can run."""

from __future__ import annotations

from . import DeviceProfile, transport_for

# target type -> the runner adapter (runtime) its artifacts need; target types and runtimes share names
TARGET_RUNTIMES = {"onnxruntime": "onnxruntime", "tflite": "tflite", "openvino": "openvino", "coreml": "coreml",
                   "tensorrt": "tensorrt", "web": "onnxruntime-web"}


def check_device(profile: DeviceProfile) -> dict:
    """Probe the device with the runner; compare with what the profile declares."""
    probe = transport_for(profile).execute({"mode": "probe"}, {}, {})
    runtimes = probe.get("runtimes") or {}
    usable = {k: v for k, v in runtimes.items() if v and not str(v).startswith(("error:", "unusable:"))}
    problems = []
    if probe.get("numpy") is None:
        problems.append("numpy is not installed in the device's Python (the runner needs it)")
    for name in profile.runtimes:
        if name not in usable:
            why = runtimes.get(name) or "not installed"
            problems.append(f"the profile lists runtime '{name}' but on the device it is {why}")
    arch = (probe.get("host") or {}).get("arch")
    if profile.arch and arch and profile.arch != arch:
        problems.append(f"the profile says arch {profile.arch}, the device reports {arch}")
    limits = profile.limits
    if limits.memory_mb and probe.get("mem_free_mb") is not None and probe["mem_free_mb"] < 0.1 * limits.memory_mb:
        problems.append(f"only {probe['mem_free_mb']:.0f} MB of memory free")
    return {
        "device": profile.name,
        "transport": profile.transport.type.value,
        "host": probe.get("host"),
        "numpy": probe.get("numpy"),
        "runtimes": runtimes,
        "mem_free_mb": probe.get("mem_free_mb"),
        "disk_free_mb": probe.get("disk_free_mb"),
        "can_run_targets": sorted(t for t, rt in TARGET_RUNTIMES.items() if rt in usable and rt in profile.runtimes),
        "problems": problems,
        "transport_info": probe.get("transport"),
    }


def format_check(info: dict) -> str:
    h = info.get("host") or {}
    lines = [
        f"device:      {info['device']} ({info['transport']})",
        f"arch:        {h.get('arch')}  os: {h.get('os')} {h.get('os_release', '')}",
        f"cpu:         {h.get('cpu_model')} x{h.get('cpu_count')}  governor: {h.get('governor') or 'unreadable'}",
        f"python:      {h.get('python')}  numpy: {info.get('numpy') or 'MISSING'}",
    ]
    for name, v in sorted(info["runtimes"].items()):
        lines.append(f"runtime:     {name:<12} {v or 'not installed'}")
    mem, disk = info.get("mem_free_mb"), info.get("disk_free_mb")
    lines.append(f"free memory: {mem:.0f} MB" if mem is not None else "free memory: unreadable")
    lines.append(f"free disk:   {disk:.0f} MB (where runs go)" if disk is not None else "free disk: unreadable")
    lines.append(f"can run:     {', '.join(info['can_run_targets']) or 'no bundle target'}")
    for p in info["problems"]:
        lines.append(f"problem:     {p}")
    return "\n".join(lines)
