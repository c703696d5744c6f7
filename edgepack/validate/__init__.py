"""Validation stages: FP32 reference outputs, and per (target, device) latency + accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact import Artifact
from ..data import read_npz
from ..devices import DeviceProfile, transport_for
from ..engine import Stage, StageResult, package_versions
from ..recipe import Benchmark
from .accuracy import fidelity, top1


def read_outputs(path: Path) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return [z[f"output_{k}"] for k in range(len(z.files))]


class ReferenceStage(Stage):
    """FP32 ONNX outputs on the validation inputs: what every target is compared with."""

    kind = "reference"
    version = "1"

    def toolchain(self):
        return package_versions("onnxruntime")

    def run(self, inputs, workdir):
        from ..data import samples
        from ..ingest import run_onnx

        arrays, _ = read_npz(inputs["validation"].path)
        outs = run_onnx(inputs["model"].path, list(samples(arrays)))
        payload = {f"output_{k}": np.concatenate([o[k] for o in outs], axis=0) for k in range(len(outs[0]))}
        path = workdir / "reference.npz"
        np.savez(path, **payload)
        return StageResult({"outputs": Artifact(path, "npz")}, {"samples": len(outs)})


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
    version = "1"

    def __init__(self, profile: DeviceProfile, benchmark: Benchmark, source_inputs: list[str]):
        self.profile = profile
        self.benchmark = benchmark
        self.source_inputs = source_inputs

    def config(self):
        return {"device": self.profile.model_dump(mode="json"), "benchmark": self.protocol(), "inputs": self.source_inputs}

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
        outputs = read_outputs(out_path)
        reference = read_outputs(inputs["reference"].path) if "reference" in inputs else None
        _, labels = read_npz(inputs["validation"].path)
        acc: dict = {}
        if reference is not None:
            acc["fidelity"] = fidelity(reference, outputs)
            acc["reference_top1"] = top1(reference, labels)
        acc["top1"] = top1(outputs, labels)
        if acc.get("top1") is not None and acc.get("reference_top1") is not None:
            acc["accuracy_drop"] = acc["reference_top1"] - acc["top1"]
        record["accuracy"] = acc
        return StageResult({"outputs": Artifact(out_path, "npz")}, record)
