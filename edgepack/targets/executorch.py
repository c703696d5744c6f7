"""ExecuTorch target: a ``.pte`` program from the PyTorch source, delegated to XNNPACK where it can be.

torch.export of the source (nn.Module entrypoint + weights, or an ExportedProgram), for int8 PT2E
quantization with the XNNPACK quantizer calibrated on the recipe's calibration data (fed as the device
runner feeds the model: edgepack/data.py model_samples), then ``to_edge_transform_and_lower`` with the
XNNPACK partitioner and ``to_executorch``. Nodes the partitioner does not take run on the portable
kernels; the record says what share of the nodes was delegated and which ops were not
(targets/executorch_lower.py has the fallbacks). The stage runs in the executorch toolchain's
interpreter (its own environment: executorch needs numpy 2), and so does the op pre-flight.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact import Artifact
from ..engine import StageResult
from ..errors import BadInputError, StageError
from ..recipe import ModelFormat
from . import TargetStage
from .common import compare

FORMATS = (ModelFormat.PYTORCH, ModelFormat.EXPORTED_PROGRAM, ModelFormat.HF)  # hf: the convert's torch.export program
TOOLCHAIN = "executorch"
PACKAGES = ("executorch", "torch", "torchao", "numpy")

_COVERAGE: dict[str, dict] = {}  # source digest + io -> pre-flight result, once per build process


class ExecuTorchTarget(TargetStage):
    kind = "compile.executorch"
    version = "1"
    runtime = "executorch"
    extra = "executorch"
    toolchain_env = TOOLCHAIN
    isolated = True
    timeout = 1200.0
    uses = ("source", "fp32", "calibration")

    def __init__(self, target, ctx):
        super().__init__(target, ctx)
        self.precision = target.precision or "fp32"
        self.opts = target.options.model_dump()  # recipe_targets.ExecuTorchOptions, validated at load
        if ctx.model.format not in FORMATS:
            raise BadInputError(f"{ctx.where}.type: executorch needs a PyTorch source (model.format pytorch, exported-program or hf), "
                                f"this recipe's is {ctx.model.format.value}", hint="export the model from PyTorch, or drop this target")
        if self.opts["timeout_s"]:
            self.timeout = float(self.opts["timeout_s"])

    def _decoder(self) -> bool:
        return getattr(getattr(self.ctx.model, "task", None), "value", None) == "text-generation"

    def toolchain(self) -> dict[str, str]:
        from .. import toolchains

        return toolchains.versions(TOOLCHAIN, *PACKAGES)

    def check_inputs(self, inputs):
        if self._decoder():
            return  # weight quantization of a decoder needs no calibration data
        if self.precision == "int8" and "calibration" not in inputs:
            raise BadInputError(f"{self.ctx.where}.precision: int8 (PT2E, XNNPACK quantizer) needs calibration data",
                                hint="add data.calibration to the recipe")

    # ------------------------------------------------------------ pre-flight (targets/coverage.py)

    def coverage(self, inputs: dict) -> dict:
        """Op pre-flight on the exported source graph, in the toolchain's interpreter (memoized per source)."""
        import json

        from ..contract import model_config

        source = inputs.get("source")
        if source is None:
            return {"checked": False, "reason": "no PyTorch source", "unsupported": []}
        if source.format == "pt2-decoder":  # checked by the compile itself (missing_kernels on the lowered program)
            return {"checked": False, "reason": "text-generation decoder: the compile checks the lowered program's kernels", "unsupported": []}
        # the whole model section: two recipes of one build can share a source file and differ in entrypoint
        memo = source.digest + json.dumps(model_config(self.ctx.model), sort_keys=True) + self.ctx.model.model_dump_json()
        if memo not in _COVERAGE:
            try:
                _COVERAGE[memo] = {"checked": True, **in_toolchain(_coverage_job, self, source, timeout=600, what="executorch op pre-flight")}
            except BadInputError:
                raise
            except Exception as e:  # noqa: BLE001 - a pre-flight that cannot run never blocks: the compile will say more
                return {"checked": False, "reason": f"executorch pre-flight failed: {str(e).splitlines()[0][:240]}", "unsupported": []}
        return _COVERAGE[memo]

    # ------------------------------------------------------------ compile (in the toolchain's interpreter)

    def run(self, inputs: dict[str, Artifact], workdir: Path) -> StageResult:
        from . import executorch_lower as et

        if inputs["source"].format == "pt2-decoder":  # text-generation: the static-KV-cache program (targets/executorch_decoder.py)
            from .executorch_decoder import compile_decoder

            return compile_decoder(self, inputs["source"], workdir)
        fp32 = inputs["fp32"]
        record: dict = {"precision": self.precision, "exporter": "torch.export", "notes": []}
        module = self._module(inputs["source"], workdir)
        feeds = self._feeds(inputs, record)
        example = feeds[0]
        try:
            ep = et.export(module, example)
        except Exception as e:
            raise StageError(f"torch.export cannot export the model for ExecuTorch: {et._line(e)}",
                             hint="see the stage log; torch.export's message names the line of the model") from e
        if self.precision == "int8":
            ep, record["quantization"] = et.quantize(ep, example, feeds[: self.opts["calibration_samples"]], self.opts["per_channel"])
        program, lowering = et.lower(ep, use_xnnpack=self.opts["partitioner"] == "xnnpack")
        record.update(lowering)
        if lowering["fallbacks"]:
            record["notes"].append(f"lowered as '{lowering['lowering']}' after: " + "; ".join(f["failed_because"] for f in lowering["fallbacks"]))
        out = workdir / "model.pte"
        record["operators"] = et.write_program(program, out, hint="replace those ops in the model, or drop this target")
        check = et.run_pte(out, feeds[:1])
        record["sample_check"] = {"vs": "the PyTorch source, 1 sample", "outputs": compare(et.run_module(module, feeds[:1])[0], check[0])}
        fixed = {i.name: list(i.shape) for i in self.ctx.model.inputs if any(isinstance(d, str) for d in i.shape)}
        if fixed:
            record["notes"].append(f"exported with static shapes, as the runner feeds them (batch of 1): {fixed}")
        if not record["notes"]:
            del record["notes"]
        names = [t.name for t in fp32.inputs]
        meta = {"runtime": self.runtime, "precision": self.precision,
                "runner": self.contract(fp32.path, options={"method": et.METHOD, "inputs": names}),
                "delegated_fraction": lowering["delegation"]["delegated_fraction"]}
        return StageResult({"artifact": Artifact(out, "pte", inputs=fp32.inputs, outputs=fp32.outputs, meta=meta)}, record)

    def _module(self, source: Artifact, workdir: Path):
        if source.format == "pt2":  # an hf source's torch.export program (ingest/hf.py): torch alone loads it
            import torch

            return torch.export.load(str(source.path))
        from ..ingest import ConvertContext
        from ..ingest.torch import _load_module

        cctx = ConvertContext(self.ctx.model, Path(self.ctx.recipe_dir).resolve(), f"{self.ctx.where} (model)", [], workdir, [], source)
        return _load_module(cctx)

    def _feeds(self, inputs: dict, record: dict) -> list[tuple]:
        """Complete feeds in the module's argument order (the recipe's inputs): calibration samples as the
        runner feeds them, or one seeded random sample when the recipe has no calibration data."""
        from ..data import model_samples, read_npz
        from ..ingest import sample_inputs

        names = [i.name for i in self.ctx.model.inputs]
        if "calibration" in inputs:
            arrays = read_npz(inputs["calibration"].path)[0]
            samples = model_samples(self.ctx.model, arrays, self.ctx.recipe_dir)
        else:
            samples = sample_inputs(self.ctx.model, None, 1, self.ctx.recipe_dir)
            record["notes"].append("no calibration data: the example input is seeded random data")
        return [tuple(np.asarray(s[n]) for n in names) for s in samples]


def _coverage_job(stage: ExecuTorchTarget, source: Artifact) -> dict:
    """In the toolchain's interpreter: export the source and check its ops against the runtime's kernels."""
    import tempfile

    from . import executorch_lower as et

    with tempfile.TemporaryDirectory(prefix="edgepack-et-") as tmp:
        module = stage._module(source, Path(tmp))
        feeds = stage._feeds({}, {"notes": []})
        try:
            ep = et.export(module, feeds[0])
        except Exception as e:  # the compile reports it with its hint; the pre-flight does not block
            return {"table": "ExecuTorch runtime operator registry", "unsupported": [], "ops": {},
                    "warnings": [f"torch.export failed in pre-flight: {et._line(e)}"]}
        return et.coverage(ep)


def in_toolchain(fn, *args, timeout: float, what: str):
    """``fn(*args)`` in a worker running the executorch toolchain's interpreter."""
    from .. import toolchains
    from ..worker import run_isolated

    env = toolchains.resolve(TOOLCHAIN)
    return run_isolated(fn, *args, timeout=timeout, what=what, python=env.python)
