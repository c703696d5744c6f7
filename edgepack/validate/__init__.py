"""Validation stages: FP32 reference outputs, and per (target, device) latency + accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact import Artifact
from ..data import read_data, read_npz
from ..devices import DeviceProfile, transport_for
from ..engine import Stage, StageResult, package_versions
from ..recipe import Benchmark
from .scoring import score_outputs


def read_outputs(path: Path, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Outputs by name. Files written before outputs were keyed by name hold output_0, output_1, ...
    (in the FP32 model's order): those are renamed with ``names`` when given."""
    with np.load(path, allow_pickle=False) as z:
        files = list(z.files)
        if names and len(names) == len(files) and files == [f"output_{k}" for k in range(len(files))]:
            return {n: z[f"output_{k}"] for k, n in enumerate(names)}
        return {k: z[k] for k in files}


class ReferenceStage(Stage):
    """FP32 ONNX outputs on the validation inputs: what every target is compared with."""

    kind = "reference"
    version = "2"  # outputs keyed by name

    def toolchain(self):
        return package_versions("onnxruntime")

    def run(self, inputs, workdir):
        from ..data import samples
        from ..ingest import run_onnx

        arrays, _ = read_npz(inputs["validation"].path)
        outs = run_onnx(inputs["model"].path, list(samples(arrays)))
        names = [t.name for t in inputs["model"].outputs] or onnx_output_names(inputs["model"].path)
        payload = {names[k]: np.concatenate([o[k] for o in outs], axis=0) for k in range(len(outs[0]))}
        path = workdir / "reference.npz"
        np.savez(path, **payload)
        return StageResult({"outputs": Artifact(path, "npz")}, {"samples": len(outs)})


def onnx_output_names(path: Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def runner_job(artifact: Artifact, source_inputs: list[str], protocol: dict) -> dict:
    """The runner job for an artifact: adapter, input mapping/transposes from the artifact's meta."""
    meta = artifact.meta
    job = {"mode": "bench", "runtime": meta["runtime"], "protocol": protocol, "options": meta.get("runner_options", {})}
    if meta.get("input_map"):
        job["input_map"] = meta["input_map"]
    else:
        names = [t.name for t in artifact.inputs] or source_inputs
        job["input_map"] = [{"source": s, "name": n} for s, n in zip(source_inputs, names)]
    for k in ("output_perms", "output_order"):
        if meta.get(k) is not None:
            job[k] = meta[k]
    return job


class ValidateStage(Stage):
    """Run one target's artifact on one device: benchmark protocol, peak memory, outputs vs FP32 and labels."""

    kind = "validate"
    version = "2"  # metrics by output name

    def __init__(self, profile: DeviceProfile, benchmark: Benchmark, source_inputs: list[str],
                 metrics: list | None = None, base_dir: Path | None = None, output_names: list[str] | None = None,
                 cosine=None):
        self.profile = profile
        self.benchmark = benchmark
        self.source_inputs = source_inputs
        self.metrics = list(metrics or [])
        self.base_dir = base_dir
        self.output_names = output_names
        # gates.min_cosine aggregated other than as the mean over every output: computed here, from all samples
        self.cosine = cosine if cosine is not None and (cosine.per_sample != "mean" or cosine.output) else None

    def config(self):
        from .scoring import metrics_config

        return {"device": self.profile.model_dump(mode="json"), "benchmark": self.protocol(), "inputs": self.source_inputs,
                "metrics": metrics_config(self.metrics, self.base_dir), "outputs": self.output_names,
                "cosine": None if self.cosine is None else self.cosine.model_dump(mode="json")}

    def toolchain(self):
        from ..devices.runner import RUNNER_VERSION

        return {"runner": RUNNER_VERSION}

    def protocol(self) -> dict:
        p = self.benchmark.model_dump(mode="json")
        p.update(self.profile.benchmark)
        return p

    def run(self, inputs, workdir):
        artifact: Artifact = inputs["artifact"]
        transport = transport_for(self.profile)
        job = runner_job(artifact, self.source_inputs, self.protocol())
        out_path = workdir / "outputs.npz"
        result = transport.execute(job, {"artifact": artifact.path, "inputs": inputs["validation"].path}, {"outputs": out_path})
        mem = transport.execute(dict(job, mode="memory"), {"artifact": artifact.path, "inputs": inputs["validation"].path}, {})
        record = {
            "device": self.profile.name,
            "runtime": result["runtime"],
            "runtime_version": result["runtime_version"],
            "host": result["host"],
            "threads": result["threads"],
            "protocol": self.protocol(),
            "cold_load_ms": result["cold_load_ms"],
            "first_inference_ms": result["first_inference_ms"],
            "latency": result["latency"],
            "noisy": result["noisy"],
            "samples_ms": result["samples_ms"],
            "memory": {k: v for k, v in mem.items() if k != "ok"},
            "load": result.get("load", {}),
            "warmup": result.get("warmup"),
            "timed": result.get("timed"),
            "transport": result.get("transport") or {"type": self.profile.transport.type.value},
        }
        reference = read_outputs(inputs["reference"].path) if "reference" in inputs else None
        names = self.output_names or (list(reference) if reference is not None else None)
        outputs = read_outputs(out_path, names)
        np.savez(out_path, **outputs)  # keyed by output name from here on (the runner writes output_0, ...)
        record["accuracy"] = score_outputs(self.metrics, outputs, read_data(inputs["validation"].path)[1], reference, self.base_dir)
        if self.cosine is not None and reference is not None:
            from .fidelity import cosine_gate_value

            record["accuracy"]["cosine_gate"] = cosine_gate_value(reference, outputs, self.cosine.per_sample, self.cosine.output)
        return StageResult({"outputs": Artifact(out_path, "npz")}, record)
