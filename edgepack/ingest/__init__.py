"""Convert a source model to ONNX and check it numerically against the source.

Each source format is one module with ``convert(ctx) -> Converted``. The shared code here checks the
ONNX model (checker + shape inference), runs it with ONNX Runtime on the same sample inputs as the
source, and fails naming the worst output when the difference is beyond ``model.tolerance``.
"""

from __future__ import annotations

import importlib
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifact import Artifact, TensorSpec, digest_path
from ..engine import Stage, StageResult, package_versions
from ..errors import BadInputError, StageError
from ..recipe import ModelFormat, ModelSection

# format -> (module, pip extra). Nothing registers itself on import.
CONVERTERS: dict[ModelFormat, tuple[str, str | None]] = {
    ModelFormat.PYTORCH: ("edgepack.ingest.torch", "torch"),
    ModelFormat.TORCHSCRIPT: ("edgepack.ingest.torch", "torch"),
    ModelFormat.EXPORTED_PROGRAM: ("edgepack.ingest.torch", "torch"),
    ModelFormat.ONNX: ("edgepack.ingest.onnx", None),
    ModelFormat.KERAS: ("edgepack.ingest.tensorflow", "tensorflow"),
    ModelFormat.SAVED_MODEL: ("edgepack.ingest.tensorflow", "tensorflow"),
    ModelFormat.TFLITE: ("edgepack.ingest.tensorflow", "tensorflow"),
    ModelFormat.HF: ("edgepack.ingest.hf", "hf"),
}

TOOLCHAIN = {
    "torch": ("torch", "onnxscript"),
    "tensorflow": ("tensorflow", "tf2onnx"),
    "hf": ("torch", "onnxscript", "transformers", "tokenizers"),
    None: (),
}

# pip extra of a source format -> the toolchain (edgepack/toolchains) its conversion runs in: the running
# interpreter when it satisfies that toolchain's lock, else the toolchain's managed environment
SOURCE_TOOLCHAINS = {"torch": "torch", "tensorflow": "tflite"}


@dataclass
class ConvertContext:
    model: ModelSection
    recipe_dir: Path
    source_where: str  # 'recipe.yaml:5:3 model' for error messages
    samples: list[dict[str, np.ndarray]]
    workdir: Path
    output_names: list[str]
    source: Artifact  # resolved source file (or weights) and its digest
    torch_program: bool = False  # also save a torch.export program (program.pt2) for the ExecuTorch target (hf sources)


@dataclass
class Converted:
    onnx_path: Path
    source_outputs: list[list[np.ndarray]] | None  # per sample, per output; None when the source is ONNX itself
    record: dict = field(default_factory=dict)
    checked: bool = False  # the converter ran verify_export itself (to fall back on a failed check)
    outputs: dict[str, tuple[Path, str]] = field(default_factory=dict)  # more stage outputs: name -> (path, kind), e.g. the tokenizer


class ExportCheckError(StageError):
    """An exporter's ONNX failed one of verify_export's checks; ``check`` names which one."""

    def __init__(self, message: str, hint: str | None = None, check: str = "numeric check", **fields):
        super().__init__(message, hint, **fields)
        self.check = check


def sample_inputs(model: ModelSection, data: dict[str, np.ndarray] | None, n: int = 4, recipe_dir: Path | None = None) -> list[dict[str, np.ndarray]]:
    """Up to ``n`` complete single-sample feeds: from data when given, else seeded random values
    (constants and state inputs as the runner feeds them: edgepack.data.model_samples)."""
    from ..data import model_samples

    if not data:
        rng = np.random.default_rng(0)
        data = {}
        for spec in model.data_inputs():
            shape = [n] + [d if isinstance(d, int) else 1 for d in spec.sample_shape]
            if spec.dtype.value.startswith("float"):
                data[spec.name] = rng.standard_normal(shape).astype(spec.dtype.value)
            else:
                data[spec.name] = rng.integers(0, 2 if spec.dtype.value == "bool" else 10, shape).astype(spec.dtype.value)
    return model_samples(model, data, recipe_dir, limit=n)


def onnx_specs(path: Path, layouts: dict[str, str | None] | None = None) -> tuple[list[TensorSpec], list[TensorSpec]]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in m.graph.initializer}

    def spec(v):
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "unknown"
        return TensorSpec(v.name, dims, dtype, (layouts or {}).get(v.name))

    return [spec(v) for v in m.graph.input if v.name not in init], [spec(v) for v in m.graph.output]


def check_onnx(path: Path, where: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise BadInputError(
            f"not a valid ONNX model ({e.__class__.__name__}: {str(e).splitlines()[0][:200]})",
            hint="the file may be truncated or corrupted; re-export it", where=where
        ) from e


def _first_line(e: Exception, n: int = 240) -> str:
    text = str(e).strip()
    return f"{e.__class__.__name__}: {text.splitlines()[0][:n] if text else ''}"


def verify_export(path: Path, samples, source_outputs, tolerance: float) -> tuple[Path, dict]:
    """Check an exporter's ONNX: the ONNX checker, shape inference, an ONNX Runtime run and the numeric
    comparison with the source. Returns the shape-inferred path and the check record; raises
    ExportCheckError naming the check that failed (never 'your file may be corrupted': the file is ours)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise ExportCheckError(f"invalid ONNX ({_first_line(e)})", check="ONNX checker") from e
    path = _infer_shapes(path)
    try:
        onnx_out = run_onnx(path, samples)
    except Exception as e:
        shapes = {k: list(v.shape) for k, v in samples[0].items()}
        raise ExportCheckError(f"ONNX Runtime rejected inputs of shape {shapes}: {_first_line(e)}",
                               hint="fix model.inputs[].shape / dtype to what the model expects", check="ONNX Runtime run") from e
    out_names = [o.name for o in onnx_specs(path)[1]]
    try:
        diffs = compare_outputs(source_outputs, onnx_out, out_names)
    except StageError as e:
        raise e.recast(ExportCheckError, check="numeric check") from e
    record = {"max_abs_diff": diffs, "tolerance": tolerance, "exported_opset": _opset(path)}
    worst = max(diffs, key=lambda k: diffs[k]) if diffs else None
    if worst is not None and diffs[worst] > tolerance:
        raise ExportCheckError(
            f"ONNX output '{worst}' differs from the source by {diffs[worst]:.3g} (tolerance {tolerance:g})",
            hint="raise model.tolerance if this is expected, or check the exporter record in --verbose",
        )
    return path, record


def run_onnx(path: Path, samples: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return [sess.run(None, {k: s[k] for k in names}) for s in samples]


def compare_outputs(source: list[list[np.ndarray]], onnx_out: list[list[np.ndarray]], names: list[str]) -> dict[str, float]:
    from ..validate.fidelity import max_abs_error

    diffs: dict[str, float] = {}
    for s_outs, o_outs in zip(source, onnx_out):
        if len(s_outs) != len(o_outs):
            raise StageError(f"the source model gives {len(s_outs)} outputs but the ONNX model gives {len(o_outs)}")
        for name, a, b in zip(names, s_outs, o_outs):
            if np.shape(a) != np.shape(b):
                raise StageError(f"output '{name}': source shape {list(np.shape(a))} but ONNX shape {list(np.shape(b))}")
            d = max_abs_error(a, b)
            diffs[name] = max(diffs.get(name, 0.0), d)
    return diffs


class ConvertStage(Stage):
    """Source model -> FP32 ONNX, numerically checked. A PyTorch or TensorFlow-family source converts in a worker
    of its toolchain's interpreter (SOURCE_TOOLCHAINS); an ONNX file is checked in-process."""

    kind = "convert"
    version = "2"  # 2: the record names the versions of the interpreter it ran in
    isolated = True
    timeout = 1800.0

    def __init__(self, model: ModelSection, recipe_dir: Path, source_where: str, torch_program: bool = False):
        self.model = model
        self.torch_program = torch_program and model.format is ModelFormat.HF
        self.recipe_dir = Path(recipe_dir).resolve()
        self.source_where = source_where
        self.module, self.extra = CONVERTERS[model.format]
        # torch / TensorFlow exporters run in a worker; checking an ONNX file does not need one
        self.isolated = self.extra is not None
        self.toolchain_env = SOURCE_TOOLCHAINS.get(self.extra or "")

    def config(self) -> dict:
        from ..recipe_hf import HF_FIELDS

        hf = self.model.format is ModelFormat.HF  # other formats' keys stay as they were before hf sources existed
        cfg = self.model.model_dump(mode="json", exclude={"path", "weights"} | (set() if hf else set(HF_FIELDS)))
        if self.torch_program:
            cfg["torch_program"] = True
        return cfg

    def toolchain(self) -> dict[str, str]:
        """Exporter versions (cache key) from the environment that will run the conversion."""
        names = ("onnx", "onnxruntime", *TOOLCHAIN[self.extra])
        if self.toolchain_env is None:
            return package_versions(*names)
        from .. import toolchains

        return toolchains.versions(self.toolchain_env, *names)

    def run(self, inputs: dict[str, Artifact], workdir: Path) -> StageResult:
        from ..data import read_npz

        data = read_npz(inputs["samples"].path)[0] if "samples" in inputs else None
        samples = sample_inputs(self.model, data, recipe_dir=self.recipe_dir)
        names = self.model.outputs or []
        ctx = ConvertContext(self.model, self.recipe_dir, self.source_where, samples, workdir, names, inputs["source"], self.torch_program)
        if self.extra:
            from ..errors import require_backend

            require_backend(TOOLCHAIN[self.extra][-2 if self.extra == "hf" else 0], self.extra)  # hf: transformers
        converted: Converted = importlib.import_module(self.module).convert(ctx)
        record = dict(converted.record)
        if converted.checked:
            path = converted.onnx_path
        elif converted.source_outputs is None:  # a user-given ONNX file: its problems are the user's
            path = self._check_user_onnx(converted.onnx_path, samples)
            record["exported_opset"] = _opset(path)
        else:
            try:
                path, checks = verify_export(converted.onnx_path, samples, converted.source_outputs, self.model.tolerance)
            except ExportCheckError as e:
                raise StageError(f"the ONNX from {record.get('exporter')} failed the {e.check}: {e.text()}",
                                 hint=e.hint, where=self.source_where) from e
            record.update(checks)
        # the versions of the interpreter this ran in (a toolchain environment's, or the build's): the manifest's conversion
        record["toolchain"] = {**package_versions("onnx", "onnxruntime", "numpy", *TOOLCHAIN[self.extra]), "python": platform.python_version()}
        ins, outs = onnx_specs(path, {i.name: i.layout for i in self.model.inputs})
        art = Artifact(path, "onnx", inputs=ins, outputs=outs, meta={"opset": record["exported_opset"]})
        more = {name: Artifact(p, kind) for name, (p, kind) in converted.outputs.items()}
        return StageResult({"model": art, **more}, record)

    def _check_user_onnx(self, path: Path, samples) -> Path:
        """The ONNX source was checked by ingest.onnx; infer shapes and check it runs on the samples."""
        path = _infer_shapes(path)
        try:
            run_onnx(path, samples)
        except Exception as e:
            shapes = {k: list(v.shape) for k, v in samples[0].items()}
            raise BadInputError(
                f"{self.source_where}.inputs: ONNX Runtime rejected inputs of shape {shapes}: {str(e).splitlines()[0][:240]}",
                hint="fix model.inputs[].shape / dtype to what the model expects",
            ) from e
        return path


def _opset(path: Path) -> int:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _infer_shapes(path: Path) -> Path:
    import onnx

    out = path.with_name("model.onnx")
    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=False, data_prop=True)
    tmp = out.with_suffix(".onnx.tmp")
    onnx.save(m, str(tmp))
    tmp.replace(out)
    if path != out:
        path.unlink(missing_ok=True)
    return out


def source_artifact(model: ModelSection, lr, cache=None) -> Artifact:
    """The source model as an artifact (its digest keys the convert stage). A Hugging Face folder becomes the
    files loading it reads (ingest/hf.py ``folder_files``), digested and, with ``cache``, put into the cache
    as an input entry (hard links): every stage reads that entry, and a Ray task fetches it from the store."""
    from ..entrypoints import module_file

    if model.format is ModelFormat.PYTORCH:
        assert model.entrypoint is not None  # ModelSection requires it for format pytorch
        code = module_file(model.entrypoint, lr.dir)
        if code is None:
            raise BadInputError(
                f"cannot find module '{model.entrypoint.partition(':')[0]}'",
                hint=f"the module is looked up in {lr.dir} and on PYTHONPATH", where=lr.where('model', 'entrypoint')
            )
        parts = [digest_path(code)]
        weights = None
        if model.weights:
            weights = lr.resolve(model.weights)
            if not weights.is_file():
                raise BadInputError(f"{weights} (model.weights): weights file not found", hint="check the path; it is relative to the recipe")
            parts.append(digest_path(weights))
        import hashlib

        digest = hashlib.sha256("|".join(parts).encode()).hexdigest()
        return Artifact(weights or code, "pytorch", digest=digest, meta={"module": str(code), "weights": str(weights) if weights else None})
    path = lr.resolve(model.path)
    if not path.exists():
        raise BadInputError(f"{path} (model.path): model file not found", hint="check the path; it is relative to the recipe")
    if model.format is ModelFormat.HF and path.is_dir():
        from ..cache import put_input
        from .hf import folder_files

        files = folder_files(path)
        art = Artifact(path, "hf", digest=digest_path(path, files))
        return art if cache is None else put_input(cache, art, files, push=False)[1]
    return Artifact(path, model.format.value)
