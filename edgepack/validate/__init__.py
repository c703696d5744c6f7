"""Validation stages: FP32 reference outputs, and per (target, device) latency + accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact import Artifact
from ..data import read_data, read_npz
from ..devices import DeviceProfile, transport_for
from ..engine import Stage, StageResult, package_versions
from ..progress_hooks import report
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
    """FP32 ONNX outputs on the validation inputs: what every target is compared with.

    Fed by the device runner's own code (devices/runner.py run_all) through the FP32 model's
    identity contract, so batch and stream mode (state carried) are exactly what the devices do."""

    kind = "reference"
    version = "3"  # 2: outputs keyed by name; 3: fed by the runner contract (batch axes, constants, stream)

    def __init__(self, model=None, recipe_dir: Path | None = None, stream: bool = False):
        self.model = model
        self.recipe_dir = recipe_dir
        self.stream = stream

    def config(self):
        from ..contract import model_config

        return {"stream": self.stream, **model_config(self.model)}

    def toolchain(self):
        return package_versions("onnxruntime")

    def run(self, inputs, workdir):
        from ..contract import for_onnx
        from ..devices.runner import run_all
        from ..devices.runtimes import OnnxRuntimeAdapter

        contract = for_onnx(self.model, self.recipe_dir, inputs["model"].path).to_json()
        arrays, _ = read_npz(inputs["validation"].path)
        adapter = OnnxRuntimeAdapter()
        adapter.load(str(inputs["model"].path), None, {})
        payload = run_all(adapter.run, contract, arrays, self.stream)
        path = workdir / "reference.npz"
        np.savez(path, **payload)
        n = len(next(iter(payload.values()))) if payload else 0
        return StageResult({"outputs": Artifact(path, "npz")}, {"samples" if not self.stream else "sequences": n})


def artifact_contract(artifact: Artifact, source_inputs: list[str]):
    """The artifact's RunnerContract (meta["runner"]); artifacts cached before it: from the loose meta keys."""
    from ..contract import RunnerContract

    meta = artifact.meta
    if isinstance(meta.get("runner"), dict) and "inputs" in meta["runner"]:
        return RunnerContract.from_json(meta["runner"])
    legacy = dict(meta)
    if not legacy.get("input_map"):
        names = [t.name for t in artifact.inputs] or source_inputs
        legacy["input_map"] = [{"source": s, "name": n} for s, n in zip(source_inputs, names)]
    return RunnerContract.from_legacy(legacy, [t.to_json() for t in artifact.inputs], [t.to_json() for t in artifact.outputs])


def runner_job(artifact: Artifact, source_inputs: list[str], protocol: dict, stream: bool = False) -> dict:
    """The runner job for an artifact: its adapter, its contract (JSON) and the validation mode."""
    contract = artifact_contract(artifact, source_inputs)
    return {"mode": "bench", "runtime": artifact.meta["runtime"], "protocol": protocol, "contract": contract.to_json(),
            "stream": stream}


class ValidateStage(Stage):
    """Run one target's artifact on one device: benchmark protocol, peak memory, outputs vs FP32 and labels."""

    kind = "validate"
    version = "2"  # metrics by output name

    def __init__(self, profile: DeviceProfile, benchmark: Benchmark, source_inputs: list[str],
                 metrics: list | None = None, base_dir: Path | None = None, output_names: list[str] | None = None,
                 cosine=None, stream: bool = False):
        self.profile = profile
        self.benchmark = benchmark
        self.source_inputs = source_inputs
        self.metrics = list(metrics or [])
        self.base_dir = base_dir
        self.output_names = output_names
        # gates.min_cosine aggregated other than as the mean over every output: computed here, from all samples
        self.cosine = cosine if cosine is not None and (cosine.per_sample != "mean" or cosine.output) else None
        self.stream = stream  # data.validation.mode: stream (outputs [S, T, ...], latency per step)

    def config(self):
        from .scoring import metrics_config

        cfg = {"device": self.profile.model_dump(mode="json"), "benchmark": self.protocol(), "inputs": self.source_inputs,
               "metrics": metrics_config(self.metrics, self.base_dir), "outputs": self.output_names,
               "cosine": None if self.cosine is None else self.cosine.model_dump(mode="json")}
        if self.stream:
            cfg["stream"] = True
        return cfg

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
        job = runner_job(artifact, self.source_inputs, self.protocol(), self.stream)
        out_path = workdir / "outputs.npz"
        report("runs", 0, 2, phase="latency + outputs")
        result = transport.execute(job, {"artifact": artifact.path, "inputs": inputs["validation"].path}, {"outputs": out_path})
        report("runs", 1, 2, phase="memory")
        mem = transport.execute(dict(job, mode="memory"), {"artifact": artifact.path, "inputs": inputs["validation"].path}, {})
        report("runs", 2, 2, phase="metrics")
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
            "mode": "stream" if self.stream else "batch",  # stream: outputs [S, T, ...], latency per step
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
