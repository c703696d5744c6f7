"""Toolchain environments: each heavy backend (onnx2tf + TensorFlow, OpenVINO + NNCF, coremltools, ExecuTorch, ...)
declared by a lock file shipped in this package, run in its own virtual environment when the running one does not
satisfy the lock.

One static table, ``TOOLCHAINS``, names them; the lock of ``NAME`` is ``locks/NAME.txt``: pip constraints (every
resolved ``name==version``) under two header lines, ``# python: SPECIFIER`` and ``# requires: REQ ...`` (the direct
requirements that define the toolchain, edgepack's own core dependencies among them, since the worker imports edgepack
there). A toolchain is *satisfied* by the running environment when its interpreter matches ``python:``, every
``requires:`` is installed at a version it allows and the modules the stages import are importable; then it is used
directly (a single-environment install). Otherwise a managed environment
``$EDGEPACK_HOME/toolchains/NAME-<lock digest>/`` made by ``edgepack toolchains install NAME`` (env.py) runs the
stage: ``resolve(NAME).python`` is its interpreter, which ``worker.run_isolated(python=...)`` spawns.

``EDGEPACK_TOOLCHAINS=managed`` always uses the managed environment (tests, or a host whose own packages must not
be used); the default ``auto`` prefers the running environment when it satisfies the lock.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import platform
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..errors import BadInputError


@dataclass(frozen=True)
class Toolchain:
    name: str
    modules: tuple[str, ...]  # import names the stages need (checked without importing them)
    packages: tuple[str, ...]  # distributions whose versions go into cache keys and the manifest
    description: str = ""
    extra: str | None = None  # the pip extra giving a single-environment install of it (pyproject.toml)


# name -> Toolchain; its lock is locks/NAME.txt. Nothing registers itself on import.
TOOLCHAINS: dict[str, Toolchain] = {
    "tflite": Toolchain("tflite", ("tensorflow", "onnx2tf", "tf_keras", "tf2onnx"),
                        ("onnx2tf", "tensorflow", "tf_keras", "tf2onnx", "onnx", "onnxruntime", "onnxsim", "ai-edge-litert", "numpy"),
                        "onnx2tf + TensorFlow + LiteRT + tf2onnx (TFLite target; Keras/SavedModel/TFLite source conversion)", "tflite"),
    "torch": Toolchain("torch", ("torch", "onnxscript"), ("torch", "onnxscript", "onnx", "onnxruntime", "numpy"),
                       "PyTorch + onnxscript (PyTorch/TorchScript/ExportedProgram source conversion to ONNX)", "torch"),
    "openvino": Toolchain("openvino", ("openvino", "nncf", "openvino_tokenizers", "openvino_genai", "transformers"),
                          ("openvino", "nncf", "openvino-tokenizers", "openvino-genai", "transformers", "onnx", "numpy"),
                          "OpenVINO + NNCF + openvino-tokenizers/genai (OpenVINO IR target; text-generation: LLMPipeline)", "openvino"),
    "coreml": Toolchain("coreml", ("coremltools", "onnx2tf", "tensorflow", "torch"),
                        ("coremltools", "onnx2tf", "tensorflow", "tf_keras", "torch", "onnx", "numpy"),
                        "coremltools (+ onnx2tf for ONNX sources, torch for the PyTorch frontend) (Core ML target)", "coreml"),
    "executorch": Toolchain("executorch", ("executorch", "torch"), ("executorch", "torch", "torchao", "numpy"),
                            "ExecuTorch + XNNPACK (ExecuTorch .pte target)", "executorch"),
    "genai": Toolchain("genai", ("onnxruntime_genai", "onnxruntime"), ("onnxruntime-genai", "onnxruntime", "numpy"),
                       "ONNX Runtime GenAI (text-generation device runs: generation.runtime onnxruntime-genai)"),
    "tensorrt": Toolchain("tensorrt", ("tensorrt",), ("tensorrt-cu12", "tensorrt", "onnx", "numpy"),
                          "TensorRT (engine builds on an NVIDIA GPU host)", "tensorrt"),
}

MODE_ENV = "EDGEPACK_TOOLCHAINS"  # auto | managed


class ToolchainMissingError(BadInputError):
    """A stage needs a toolchain that neither the running environment nor a managed one provides."""


@dataclass(frozen=True)
class Lock:
    name: str
    text: str
    python: str  # PEP 440 specifier for the interpreter
    requires: tuple[str, ...]
    pins: dict[str, str] = field(default_factory=dict)  # canonical name -> version, every resolved line

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:12]


def canonical(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def get(name: str) -> Toolchain:
    if name not in TOOLCHAINS:
        import difflib

        close = difflib.get_close_matches(name, list(TOOLCHAINS), n=1)
        raise BadInputError(f"toolchain '{name}' is not known (known: {', '.join(TOOLCHAINS)})",
                            hint=f"did you mean '{close[0]}'?" if close else "run: edgepack toolchains ls")
    return TOOLCHAINS[name]


def lock_path(name: str):
    return resources.files(__name__).joinpath("locks", f"{get(name).name}.txt")


@functools.lru_cache(maxsize=None)
def read_lock(name: str) -> Lock:
    text = lock_path(name).read_text()
    return parse_lock(name, text)


def parse_lock(name: str, text: str) -> Lock:
    python, pins = "", {}
    requires: tuple[str, ...] = ()
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("# python:"):
            python = s.partition(":")[2].strip()
        elif s.startswith("# requires:"):
            requires = tuple(s.partition(":")[2].split())
        elif s and not s.startswith("#"):
            req = s.split("#")[0].strip().split(";")[0].strip()
            if "==" in req:
                n, _, v = req.partition("==")
                pins[canonical(n.split("[")[0])] = v.strip()
    if not python or not requires:
        raise BadInputError(f"toolchain lock {name}.txt: needs '# python:' and '# requires:' header lines")
    return Lock(name, text, python, requires, pins)


def python_ok(spec: str, version: str | None = None) -> bool:
    from packaging.specifiers import SpecifierSet

    return (version or platform.python_version()) in SpecifierSet(spec)


_SIMPLE_REQ = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?([<>=!~,.*+A-Za-z0-9]*)")


def _name_and_spec(r: str):
    """(distribution name, SpecifierSet) of a lock's ``requires`` entry, or None when its marker excludes this
    environment. The entries are whitespace-free ``name[extras]SPEC``: a regex and a SpecifierSet read those
    (packaging.requirements' grammar costs ~50 ms of import in every warm build); markers fall back to it."""
    from packaging.specifiers import SpecifierSet

    m = _SIMPLE_REQ.fullmatch(r)
    if m:
        return m[1], SpecifierSet(m[2])
    from packaging.requirements import Requirement

    req = Requirement(r)
    return None if req.marker is not None and not req.marker.evaluate() else (req.name, req.specifier)


@functools.lru_cache(maxsize=None)
def unsatisfied(name: str) -> str | None:
    """Why the running environment does not satisfy the lock of ``name`` (None: it does). Memoized: the running
    environment's packages do not change under a build (a few hundred ms of metadata reads otherwise)."""
    from ..engine import installed_version

    lock = read_lock(name)
    if not python_ok(lock.python):
        return f"Python {platform.python_version()} here, the lock needs {lock.python}"
    for mod in get(name).modules:
        if importlib.util.find_spec(mod) is None:
            return f"the '{mod}' package is not installed here"
    for r in lock.requires:
        req = _name_and_spec(r)
        if req is None:
            continue
        dist, spec = req
        have = installed_version(dist)
        if have is None:
            return f"the '{dist}' package is not installed here"
        if have not in spec:
            return f"{dist} {have} is installed here, the lock needs {dist}{spec}"
    return None


@dataclass(frozen=True)
class Env:
    name: str
    where: str  # "running" | "managed"
    python: str | None  # the managed interpreter; None = the running one
    digest: str
    path: str | None = None

    def info(self) -> dict:
        """What the manifest records about where the toolchain ran."""
        return {"toolchain": self.name, "lock": self.digest, "environment": self.where}


def home() -> Path:
    """Where managed environments live: $EDGEPACK_TOOLCHAINS_DIR, default $EDGEPACK_HOME/toolchains."""
    if os.environ.get("EDGEPACK_TOOLCHAINS_DIR"):
        return Path(os.environ["EDGEPACK_TOOLCHAINS_DIR"]).expanduser()
    from ..cache import edgepack_home

    return edgepack_home() / "toolchains"


def env_dir(name: str) -> Path:
    return home() / f"{name}-{read_lock(name).digest}"


def installed_record(name: str) -> dict | None:
    """The managed environment's toolchain.json (written last by install: present means complete)."""
    p = env_dir(name) / "toolchain.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def mode() -> str:
    value = os.environ.get(MODE_ENV, "auto") or "auto"
    if value not in ("auto", "managed"):
        raise BadInputError(f"{MODE_ENV}={value!r}: use 'auto' or 'managed'")
    return value


def resolve(name: str) -> Env:
    """The environment a stage of toolchain ``name`` runs in; ToolchainMissingError (exit 2) naming the install
    command when there is none."""
    lock = read_lock(name)
    why = unsatisfied(name) if mode() == "auto" else f"{MODE_ENV}=managed"
    if why is None:
        return Env(name, "running", None, lock.digest)
    rec = installed_record(name)
    if rec is None:
        raise ToolchainMissingError(f"needs the {name} toolchain: {why}, and its environment is not installed",
                                    hint=f"edgepack toolchains install {name}" + (
                                        f", or pip install 'edgepack[{get(name).extra}]' in this environment" if get(name).extra and mode() == "auto" else ""))
    d = env_dir(name)
    return Env(name, "managed", str(d / "bin" / "python"), lock.digest, str(d))


def versions(name: str, *packages: str) -> dict[str, str]:
    """``{package: version}`` (plus ``python``) from the environment that runs toolchain ``name``: what a stage's
    ``toolchain()`` returns for its cache key and the manifest. Without any environment the running one's answer
    (``not-installed``; pre-flight has already refused the target)."""
    from ..engine import package_versions

    packages = packages or get(name).packages
    try:
        env = resolve(name)
    except ToolchainMissingError:
        env = None
    if env is None or env.where == "running":
        return {**package_versions(*packages), "python": platform.python_version()}
    rec = installed_record(name) or {}
    have = {canonical(k): v for k, v in rec.get("versions", {}).items()}
    return {**{p: have.get(canonical(p), "not-installed") for p in packages}, "python": rec.get("python", "unknown")}


# runner adapter (edgepack/devices/runner.py) -> the toolchain whose environment has its runtime
RUNTIME_TOOLCHAINS = {"tflite": "tflite", "openvino": "openvino", "openvino-genai": "openvino", "executorch": "executorch",
                      "onnxruntime-genai": "genai"}


def runtime_python(runtime: str | None) -> str | None:
    """The interpreter the local device runs the runner in for ``runtime``: the toolchain environment's when the
    running one does not satisfy its lock (None: the running interpreter, also when no environment is installed:
    the runner then reports the missing runtime itself)."""
    name = RUNTIME_TOOLCHAINS.get(runtime or "")
    if name is None:
        return None
    try:
        return resolve(name).python
    except ToolchainMissingError:
        return None


def check(name: str, where: str, what: str) -> None:
    """Pre-flight: raise ToolchainMissingError ``WHERE: WHAT needs the NAME toolchain ...`` unless it can run."""
    try:
        resolve(name)
    except ToolchainMissingError as e:
        raise ToolchainMissingError(f"{what} {e.text()}", hint=e.hint, where=where) from e


def python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"
