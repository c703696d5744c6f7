"""Device profiles and transports.

A profile (``devices/*.yaml``) says what a device is and how to reach it. A transport places files on
the device, runs the self-contained runner (runner.py) there with a JSON job, and brings back the
result and any output files. ``local`` runs the runner in a child process of this host.
"""

from __future__ import annotations

import contextvars
import enum
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import BadInputError, StageError

RUNNER = Path(__file__).with_name("runner.py")
# what a transport places on the device: the runner and the runtime adapters it loads from its own folder
RUNNER_FILES = tuple(RUNNER.with_name(n) for n in ("runner.py", "runtimes.py", "runtime_tensorrt.py"))
REPO_DEVICES = Path(__file__).resolve().parents[2] / "devices"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TransportType(str, enum.Enum):
    LOCAL = "local"
    SSH = "ssh"
    BROWSER = "browser"  # headless Chromium on this host running onnxruntime-web (devices/browser.py)


class TransportSpec(Strict):
    type: TransportType = TransportType.LOCAL
    host: str | None = None
    port: int = 22
    user: str | None = None
    key: str | None = None
    known_hosts: str | None = Field(None, description="known_hosts file; host key checking is always on")
    accept_new_host_key: bool = False
    connect_timeout_s: float = 10
    step_timeout_s: float = 600
    run_timeout_s: float = Field(1800, gt=0, description="Per-device limit for a whole fleet run (all its jobs)")
    remote_dir: str | None = Field(None, description="Where per-run folders go on the device (default: its temp dir)")
    browser: str | None = Field(None, description="browser transport: the Chromium binary (default: $EDGEPACK_CHROMIUM, then chromium on PATH)")


class Limits(Strict):
    memory_mb: float | None = None
    storage_mb: float | None = None


class DeviceProfile(Strict):
    name: str
    description: str | None = None
    arch: str | None = None
    os: str | None = None
    transport: TransportSpec = TransportSpec()
    python: str | None = Field(None, description="Python on the device (default: this interpreter for local)")
    runtimes: list[str] = Field(default_factory=lambda: ["onnxruntime"])
    limits: Limits = Limits()
    benchmark: dict = Field(default_factory=dict, description="Overrides of the recipe's benchmark settings")
    threads: int | list[int] | None = Field(None, description="Runtime thread count(s): validation runs and gates every one listed")

    @field_validator("threads")
    @classmethod
    def _threads(cls, v):
        counts = [v] if isinstance(v, int) else v
        if counts is not None and (not counts or any(n < 1 for n in counts) or len(set(counts)) != len(counts)):
            raise ValueError("threads must be a positive count or a non-empty list of distinct positive counts, e.g. [1, 4]")
        return v

    def thread_counts(self) -> list[int | None]:
        """Thread counts validation runs at: the profile's list, else its/the recipe's single setting (None)."""
        if self.threads is None:
            return [None]
        return [self.threads] if isinstance(self.threads, int) else list(self.threads)

    def at_threads(self, n: int | None) -> "DeviceProfile":
        """This profile with its benchmark protocol pinned to ``n`` threads (unchanged for None)."""
        return self if n is None else self.model_copy(update={"benchmark": {**self.benchmark, "threads": n}})


LOCAL = DeviceProfile(name="local", description="this host", runtimes=["onnxruntime", "tflite", "openvino", "executorch"])


def load_profile(ref: str, base_dir: Path | None = None) -> tuple[DeviceProfile, Path | None]:
    """A profile by path, or by name from ./devices or the repo's devices/ folder ('local' is built in)."""
    candidates = []
    p = Path(os.path.expanduser(ref))
    if p.suffix in (".yaml", ".yml") or "/" in ref:
        candidates.append(p if p.is_absolute() or base_dir is None else base_dir / p)
        candidates.append(p)
    else:
        for d in ([base_dir / "devices"] if base_dir else []) + [Path.cwd() / "devices", REPO_DEVICES]:
            candidates.append(d / f"{ref}.yaml")
    for c in candidates:
        if c.is_file():
            return _parse(c), c
    if ref == "local":
        return LOCAL, None
    raise BadInputError(f"device profile '{ref}' not found (looked at {', '.join(str(c) for c in candidates)})")


def _parse(path: Path) -> DeviceProfile:
    try:
        from .. import safe_yaml

        data = safe_yaml.load(safe_yaml.read(path), path)  # size / alias budget, duplicate keys refused
        transport = data.get("transport") if isinstance(data, dict) else None
        for k in ("key", "known_hosts"):  # relative key files are relative to the profile
            v = transport.get(k) if isinstance(transport, dict) else None
            if isinstance(transport, dict) and isinstance(v, str) and not v.startswith("~") and not os.path.isabs(v):
                transport[k] = str((path.parent / v).absolute())
        return DeviceProfile.model_validate(data)
    except yaml.YAMLError as e:
        raise BadInputError(f"malformed YAML: {str(e).splitlines()[0]}", where=path) from e
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise BadInputError(f"{loc}: {err['msg']}", where=path) from e


# Monotonic deadline of the current device's fleet run (set per thread by devices/fleet.py).
DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("edgepack_device_deadline", default=None)


def remaining_timeout(timeout: float, where: str) -> float:
    """``timeout`` capped by the fleet deadline; StageError when that deadline has already passed."""
    deadline = DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise StageError("the per-device time limit (transport.run_timeout_s) ran out before this step", where=where)
    return min(timeout, left)


class Transport:
    """Runs runner jobs on a device. ``files``: job key -> local path to place on the device;
    ``fetch``: job key -> local path where the device's output file must land."""

    def __init__(self, profile: DeviceProfile):
        self.profile = profile

    def execute(self, job: dict, files: dict[str, Path], fetch: dict[str, Path], timeout: float | None = None) -> dict:
        raise NotImplementedError


class LocalTransport(Transport):
    def execute(self, job, files, fetch, timeout=None):
        timeout = remaining_timeout(timeout or self.profile.transport.step_timeout_s, f"device {self.profile.name}")
        with tempfile.TemporaryDirectory(prefix="edgepack-run-") as tmp:
            tmp = Path(tmp)
            job = dict(job)
            for k, path in files.items():
                job[k] = str(Path(path).resolve())
            for k in fetch:
                job[k] = str(tmp / f"{k}.npz")
            job["workdir"] = str(tmp)
            (tmp / "job.json").write_text(json.dumps(job))
            python = self.profile.python or _toolchain_python(job.get("runtime")) or sys.executable
            try:
                isolated = ["-I"] if job.get("mode") == "memory" else []  # memory: a clean interpreter (no PYTHON* env, no user site)
                proc = subprocess.run(
                    [python, *isolated, str(RUNNER), str(tmp / "job.json"), str(tmp / "result.json")],
                    capture_output=True, text=True, timeout=timeout,
                )
            except subprocess.TimeoutExpired as e:
                raise StageError(f"device {self.profile.name}: the runner timed out after {timeout:.0f}s") from e
            except OSError as e:
                raise StageError(f"device {self.profile.name}: cannot start {python}: {e}") from e
            result_path = tmp / "result.json"
            if not result_path.exists():
                tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
                raise StageError(f"device {self.profile.name}: the runner crashed (exit {proc.returncode}): {tail[0]}")
            result = json.loads(result_path.read_text())
            if not result.get("ok"):
                raise StageError(f"device {self.profile.name}: {result.get('error')}")
            for k, dest in fetch.items():
                src = Path(job[k])
                if src.exists():
                    Path(dest).parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(src), str(dest))
            return result


def _toolchain_python(runtime: str | None) -> str | None:
    from ..toolchains import runtime_python  # a runtime living in a toolchain environment (edgepack/toolchains)

    return runtime_python(runtime)


# transport type -> "module:Class". The SSH transport lives in devices/ssh.py.
TRANSPORTS = {
    TransportType.LOCAL: "edgepack.devices:LocalTransport",
    TransportType.SSH: "edgepack.devices.ssh:SSHTransport",
    TransportType.BROWSER: "edgepack.devices.browser:BrowserTransport",
}


def check_ready(profile: DeviceProfile) -> None:
    """Pre-flight of a device that runs on this host: what it needs is here (BadInputError otherwise)."""
    if profile.transport.type == TransportType.BROWSER:
        from .browser import check_ready as browser_ready

        browser_ready(profile)


def transport_for(profile: DeviceProfile) -> Transport:
    import importlib

    module, _, cls = TRANSPORTS[profile.transport.type].partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise StageError(f"device {profile.name}: transport '{profile.transport.type.value}' is not available: {e}") from e
    return getattr(mod, cls)(profile)
