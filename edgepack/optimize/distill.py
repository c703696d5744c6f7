"""Knowledge distillation: the model entering the pass (teacher) -> a student named by module:function.

The teacher's outputs are computed once with ONNX Runtime on data.training (so any source format
can teach). The student trains with the loop in edgepack/optimize/training.py (KL on the
temperature-softened teacher outputs + cross-entropy on labels when present), keeps its best
validation epoch, and is exported to ONNX with the convert stage's input/output names and dynamic
axes: that ONNX model is what the next pass sees. Runs in a worker process.
"""

from __future__ import annotations

from pathlib import Path

from ..artifact import Artifact
from ..engine import Stage, StageResult, package_versions
from ..errors import BadInputError
from ..recipe import DistillPass
from . import PassContext
from .effect import measure, run_model


class DistillStage(Stage):
    kind = "optimize.distill"
    version = "1"
    isolated = True
    timeout = 3600.0
    uses = ("model", "training", "validation")

    def __init__(self, cfg: DistillPass, ctx: PassContext):
        self.cfg = cfg
        self.ctx = ctx

    def config(self) -> dict:
        from ..entrypoints import module_file

        code = module_file(self.cfg.student, self.ctx.recipe_dir)
        from ..artifact import digest_path

        return {
            "pass": self.cfg.model_dump(mode="json", by_alias=True),
            "student_code": digest_path(code) if code else None,
            "model": self.ctx.model.model_dump(mode="json"),
            "gates": self.ctx.gates.model_dump(mode="json") if self.ctx.gates is not None else None,
            "evaluate": [m.model_dump(mode="json") for m in self.ctx.evaluate],
        }

    def toolchain(self) -> dict[str, str]:
        return package_versions("onnx", "onnxruntime", "torch", "onnxscript")

    def check_inputs(self, inputs):
        if "training" not in inputs:
            raise BadInputError("distillation needs training data", hint="add data.training to the recipe", where=self.ctx.where)

    def run(self, inputs: dict[str, Artifact], workdir: Path) -> StageResult:
        from ..data import read_npz
        from .torch_model import build_module, export, param_count, save_state
        from .training import fit, seed_everything

        c = self.cfg
        src = inputs["model"]
        where = self.ctx.where
        names = [t.name for t in src.inputs]
        validation = inputs["validation"].path if "validation" in inputs else None
        teacher_rec, teacher_val = measure(src.path, validation, specs=self.ctx.evaluate, base_dir=self.ctx.recipe_dir, model=self.ctx.model)
        tr_arrays, tr_labels = read_npz(inputs["training"].path)
        tr_arrays = {n: tr_arrays[n] for n in names}
        teacher_train = run_model(src.path, tr_arrays)[0]
        seed_everything(c.training.seed)
        student = build_module(c.student, Path(self.ctx.recipe_dir), f"{where}.student")
        val = None
        if validation is not None:
            va, vl = read_npz(validation)
            val = ({n: va[n] for n in names}, vl)
        record: dict = {
            "student": c.student,
            "loss": {"temperature": c.temperature, "kd_weight": c.kd_weight, "ce_weight": c.ce_weight if tr_labels is not None else 0.0},
            "teacher": "the model entering this pass (outputs from ONNX Runtime)",
        }
        if tr_labels is None:
            record["loss"]["note"] = "data.training has no labels: cross-entropy term dropped, KD only"
        record["training"] = fit(
            student, (tr_arrays, tr_labels), val, names, c.training, f"{where}.training",
            teacher=teacher_train, teacher_val=teacher_val[0] if teacher_val else None,
            temperature=c.temperature, kd_weight=c.kd_weight, ce_weight=c.ce_weight,
        )
        record["student_torch_params"] = param_count(student)
        example = {n: tr_arrays[n][:1] for n in names}
        out = export(student, src, self.ctx.model, example, workdir, record)
        torch_meta = save_state(student, workdir, c.student, self.ctx.recipe_dir)
        student_rec, _ = measure(out, validation, teacher_val, specs=self.ctx.evaluate, base_dir=self.ctx.recipe_dir, model=self.ctx.model)
        record["before"], record["after"] = teacher_rec, student_rec
        record["size_ratio"] = round(teacher_rec["size_bytes"] / student_rec["size_bytes"], 3)
        record["params_ratio"] = round(teacher_rec["params"] / max(student_rec["params"], 1), 3)
        if isinstance(teacher_rec["macs"], int) and isinstance(student_rec["macs"], int) and student_rec["macs"]:
            record["macs_ratio"] = round(teacher_rec["macs"] / student_rec["macs"], 3)
        from .effect import budget_check

        record["accuracy_budget"] = budget_check(teacher_rec, student_rec, self.ctx.gates, where)
        meta = dict(src.meta)
        meta["torch"] = torch_meta
        meta["passes"] = [*src.meta.get("passes", []), "distill"]
        return StageResult({"model": Artifact(out, "onnx", inputs=src.inputs, outputs=src.outputs, meta=meta)}, record)
