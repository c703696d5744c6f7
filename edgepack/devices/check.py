"""`edgepack devices check`: reach a device and say what it is, which bundle targets it can run, and which
toolchain environment (edgepack/toolchains) each of those targets needs on this host."""

from __future__ import annotations

from . import DeviceProfile, TransportType, transport_for

# target type -> the runner adapter (runtime) its artifacts need; target types and runtimes share names
TARGET_RUNTIMES = {"onnxruntime": "onnxruntime", "tflite": "tflite", "openvino": "openvino", "coreml": "coreml",
                   "tensorrt": "tensorrt", "executorch": "executorch", "web": "onnxruntime-web"}
# what a toolchain row adds for target types whose compile does not always run in it (preflight._in_toolchain)
TOOLCHAIN_NOTES = {"coreml": "ONNX sources only: the PyTorch frontend runs in the build's environment",
                   "tensorrt": "needed on the GPU host that builds the engine (the device's runner), not here"}


def check_device(profile: DeviceProfile) -> dict:
    """Probe the device with the runner; compare with what the profile declares."""
    transport = transport_for(profile)
    probe = transport.execute({"mode": "probe"}, {}, {})
    runtimes = dict(probe.get("runtimes") or {})
    runtime_envs, missing = _probe_toolchain_runtimes(profile, transport, runtimes)
    usable = {k: v for k, v in runtimes.items() if v and not str(v).startswith(("error:", "unusable:"))}
    problems = []
    if probe.get("numpy") is None:
        problems.append("numpy is not installed in the device's Python (the runner needs it)")
    for name in profile.runtimes:
        if name not in usable:
            why = runtimes.get(name) or "not installed"
            if name in missing:
                why += f" (the local runner runs it in the {missing[name]} toolchain, not installed: edgepack toolchains install {missing[name]})"
            problems.append(f"the profile lists runtime '{name}' but on the device it is {why}")
    arch = (probe.get("host") or {}).get("arch")
    if profile.arch and arch and profile.arch != arch:
        problems.append(f"the profile says arch {profile.arch}, the device reports {arch}")
    limits = profile.limits
    if limits.memory_mb and probe.get("mem_free_mb") is not None and probe["mem_free_mb"] < 0.1 * limits.memory_mb:
        problems.append(f"only {probe['mem_free_mb']:.0f} MB of memory free")
    declared = sorted(t for t, rt in TARGET_RUNTIMES.items() if rt in profile.runtimes)
    return {
        "device": profile.name,
        "transport": profile.transport.type.value,
        "host": probe.get("host"),
        "numpy": probe.get("numpy"),
        "runtimes": runtimes,
        "runtime_envs": runtime_envs,
        "mem_free_mb": probe.get("mem_free_mb"),
        "disk_free_mb": probe.get("disk_free_mb"),
        "can_run_targets": [t for t in declared if TARGET_RUNTIMES[t] in usable],
        "toolchains": toolchain_needs(declared),
        "problems": problems,
        "transport_info": probe.get("transport"),
    }


def _probe_toolchain_runtimes(profile: DeviceProfile, transport, runtimes: dict) -> tuple[dict, dict]:
    """The local device runs the runner of a toolchain's runtime (.pte, .tflite, IR) in that toolchain's
    environment (toolchains.runtime_python): probe each such runtime the profile lists there, as a build would
    run it. Returns ({runtime: environment}, {runtime: toolchain that is missing here}); updates ``runtimes``."""
    from ..toolchains import RUNTIME_TOOLCHAINS, ToolchainMissingError, resolve

    envs: dict[str, str] = {}
    missing: dict[str, str] = {}
    if profile.transport.type != TransportType.LOCAL or profile.python:  # a profile's python: always that one
        return envs, missing
    probed: dict[str, dict] = {}  # interpreter -> its probe's runtimes
    for name in profile.runtimes:
        toolchain = RUNTIME_TOOLCHAINS.get(name)
        if toolchain is None:
            continue
        try:
            env = resolve(toolchain)
        except ToolchainMissingError:
            missing[name] = toolchain
            continue
        if env.python is None:  # the running environment satisfies the lock: the first probe is the answer
            envs[name] = "running"
            continue
        if env.python not in probed:
            probed[env.python] = transport.execute({"mode": "probe", "runtime": name}, {}, {}).get("runtimes") or {}
        runtimes[name] = probed[env.python].get(name)
        envs[name] = env.path or env.python
    return envs, missing


def toolchain_needs(target_types: list[str]) -> list[dict]:
    """Per toolchain the given target types need (their pip extra names a TOOLCHAINS entry): the environment
    that runs it here (`edgepack toolchains ls`'s row: running, a managed one, or the install command)."""
    from ..recipe_targets import TargetType
    from ..targets import TARGETS
    from ..toolchains import TOOLCHAINS
    from ..toolchains.env import listing

    need: dict[str, list[str]] = {}
    for t in target_types:
        extra = TARGETS[TargetType(t)][1]
        if extra in TOOLCHAINS:
            need.setdefault(extra, []).append(t)
    if not need:
        return []
    rows = []
    listed = [r for r in listing() if r["toolchain"] in need and r["current"]]
    for name, targets in need.items():
        r = next(r for r in listed if r["toolchain"] == name)  # the running env first, as resolve() prefers it
        row = {"toolchain": name, "targets": targets, "installed": r["environment"] is not None,
               "environment": r["environment"], "lock": r["lock"], "python": r["python"], "versions": r["versions"]}
        if r["environment"] is None:
            row.update(install=r["install"], missing=r["missing"])
        if name in TOOLCHAIN_NOTES:
            row["note"] = TOOLCHAIN_NOTES[name]
        rows.append(row)
    return rows


def format_check(info: dict) -> str:
    h = info.get("host") or {}
    lines = [
        f"device:      {info['device']} ({info['transport']})",
        f"arch:        {h.get('arch')}  os: {h.get('os')} {h.get('os_release', '')}",
        f"cpu:         {h.get('cpu_model')} x{h.get('cpu_count')}  governor: {h.get('governor') or 'unreadable'}",
        f"python:      {h.get('python')}  numpy: {info.get('numpy') or 'MISSING'}",
    ]
    envs = info.get("runtime_envs") or {}
    for name, v in sorted(info["runtimes"].items()):
        env = envs.get(name)
        where = "" if env in (None, "running") else f"  (in {env})"
        lines.append(f"runtime:     {name:<12} {v or 'not installed'}{where}")
    mem, disk = info.get("mem_free_mb"), info.get("disk_free_mb")
    lines.append(f"free memory: {mem:.0f} MB" if mem is not None else "free memory: unreadable")
    lines.append(f"free disk:   {disk:.0f} MB (where runs go)" if disk is not None else "free disk: unreadable")
    lines.append(f"can run:     {', '.join(info['can_run_targets']) or 'no bundle target'}")
    for t in info.get("toolchains") or []:
        lines.append(f"toolchain:   {t['toolchain']:<12} {_toolchain_state(t)}  (targets: {', '.join(t['targets'])})")
    for p in info["problems"]:
        lines.append(f"problem:     {p}")
    return "\n".join(lines)


def _toolchain_state(row: dict) -> str:
    from pathlib import Path

    if not row["installed"]:
        state = f"not installed here: {row['install']} ({row['missing']})"
    elif row["environment"] == "running":
        state = f"running environment (satisfies lock {row['lock']})"
    else:
        state = f"{Path(row['environment']).name} (Python {row['python']})"
    return state + (f"; {row['note']}" if row.get("note") else "")
