"""Build a real model's recipe with the real `edgepack` command and read back what it produced.

`build()` runs `edgepack build` in a child process and returns the exit code, the stderr line and the
report; `run_artifact()` runs a compiled target (ONNX Runtime or OpenVINO) on arrays here, so a test
computes the task metric itself from the artifacts edgepack produced and checks edgepack's number.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BENCH = "benchmark: {warmup_runs: 0, warmup_seconds: 0, runs: 1, min_seconds: 0, max_runs: 1}\n"


@dataclass
class Build:
    rc: int
    stdout: str
    stderr: str
    report: dict
    bundle: Path
    home: Path

    def target(self, tid: str) -> dict:
        return self.report["targets"][tid]

    def device(self, tid: str) -> dict:
        return self.target(tid)["devices"]["local"]

    def metric(self, tid: str, name: str) -> float:
        """The named task metric edgepack reports for a target on the local device."""
        return float(self.device(tid)["accuracy"]["metrics"][name]["value"])

    def reference(self, name: str) -> float:
        return float(self.report["evaluate"]["reference"][name]["value"])

    def artifact(self, tid: str) -> dict:
        """The target's artifact with `path` resolved on this host: in the signed bundle, else in the stage
        cache of the compile stage that produced it (a build whose gates failed writes no bundle)."""
        art = dict(self.target(tid)["artifact"])
        rel = Path(art["path"])
        if (self.bundle / rel).exists():
            art["path"] = str(self.bundle / rel)
            return art
        stage = next(s for s in self.report["stages"] if s.get("outputs", {}).get("artifact") == art["digest"])
        art["path"] = str(self.home / "cache" / stage["key"][:2] / stage["key"] / rel.name)
        return art

    def gate_failed(self, tid: str) -> bool:
        dev = self.device(tid)
        return self.target(tid)["status"] != "ok" or not dev.get("gates", {}).get("passed", False)

    def signed(self) -> set[str]:
        """Target ids in a signed bundle (empty when nothing was signed)."""
        manifest = self.bundle / "edgepack.json"
        if not manifest.is_file():
            return set()
        return set(json.loads(manifest.read_text())["targets"])

    def why(self) -> str:
        return f"exit {self.rc}\nstderr: {self.stderr[-2500:]}\nstdout: {self.stdout[-1500:]}"


def recipe_dir(tmp_path: Path, *modules: str) -> Path:
    """A recipe folder with the named helper modules (nets.py, metrics_fns.py) copied beside it."""
    d = tmp_path / "recipe"
    d.mkdir(exist_ok=True)
    for m in modules:
        shutil.copy(HERE / m, d / m)
    return d


def build(d: Path, recipe: str, home: Path, *extra: str, timeout: int = 900) -> Build:
    (d / "recipe.yaml").write_text(recipe)
    env = dict(os.environ, PYTHONPATH=str(REPO), EDGEPACK_HOME=str(home))
    r = subprocess.run([sys.executable, "-m", "edgepack.cli", "build", "recipe.yaml", "-o", "out", "--no-publish", *extra],
                       cwd=d, env=env, capture_output=True, text=True, timeout=timeout)
    report_path = next((p for p in (d / "out" / "report.json", d / "out.report.json") if p.is_file()), None)
    report = json.loads(report_path.read_text()) if report_path else {}
    return Build(r.returncode, r.stdout, r.stderr, report, d / "out", home)


def build_many(recipes: dict[Path, str], home: Path, *extra: str, env: dict | None = None, timeout: int = 900) -> list[Build]:
    """Several recipes (folder -> recipe text) in ONE `edgepack build` (one plan, one process): each bundle goes to
    its folder's out/ (package.output), each Build gets that recipe's own exit code (the command's last lines)."""
    for d, text in recipes.items():
        (d / "recipe.yaml").write_text(text + "package: {output: out}\n")
    paths = [str(d / "recipe.yaml") for d in recipes]
    full_env = dict(os.environ, PYTHONPATH=str(REPO), EDGEPACK_HOME=str(home), **(env or {}))
    r = subprocess.run([sys.executable, "-m", "edgepack.cli", "build", *paths, "--no-publish", *extra],
                       env=full_env, capture_output=True, text=True, timeout=timeout)
    codes = {ln.rpartition(": ")[0]: int(ln.rpartition("(exit ")[2].rstrip(")")) for ln in r.stdout.splitlines()
             if ln.endswith(")") and "(exit " in ln and ln.rpartition(": ")[0] in paths}
    builds = []
    for d, path in zip(recipes, paths):
        report_path = next((p for p in (d / "out" / "report.json", d / "out.report.json") if p.is_file()), None)
        report = json.loads(report_path.read_text()) if report_path else {}
        builds.append(Build(codes.get(path, r.returncode if r.returncode else -1), r.stdout, r.stderr, report, d / "out", home))
    return builds


def error_line(b: Build) -> str:
    """The one error line the CLI printed (house rule: one line naming the field/node and what to do)."""
    lines = [ln for ln in b.stderr.splitlines() if ln.startswith("error")]
    assert lines, b.why()
    assert "Traceback" not in b.stderr, b.why()
    return lines[-1]


def runner(artifact: dict):
    """A callable feeds -> list of outputs for a compiled ONNX Runtime / OpenVINO artifact (loaded once)."""
    path = Path(artifact["path"])
    if path.is_dir():  # an OpenVINO IR folder
        path = next(path.glob("*.xml"))
    if path.suffix == ".xml":
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": 1})
        return lambda f: [np.asarray(v) for v in compiled(f).values()]
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = 1, 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda f: sess.run(None, f)


def run_artifact(artifact: dict, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """Run a compiled artifact on per-sample feeds; outputs concatenated on axis 0."""
    run = runner(artifact)
    outs = [run(f) for f in feeds]
    assert outs, f"no feeds for artifact {artifact['path']}"
    return [np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))]


def samples(arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(arrays.values())))
    return [{k: v[i : i + 1] for k, v in arrays.items()} for i in range(n)]
