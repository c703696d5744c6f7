"""Mistakes found before any stage runs (issue 13 item 6), shared by `edgepack build` and `edgepack check`.

Each check raises BadInputError (exit 2) with one line naming the recipe field and what to do:
a pip extra missing for the source format, a pass or a target (with the pip command); a pass that needs
data the recipe lacks; an ONNX source whose inputs (names, ranks) differ from model.inputs.
"""

from __future__ import annotations

import importlib.util

from .errors import BadInputError
from .recipe import LoadedRecipe

# pip extra -> the modules it provides that a stage imports (pyproject.toml [project.optional-dependencies])
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "torch": ("torch", "onnxscript"),
    "tensorflow": ("tensorflow", "tf2onnx"),
    "tflite": ("onnx2tf", "tensorflow"),
    "openvino": ("openvino",),  # nncf too, for int8 (checked by that stage)
    "coreml": ("coremltools",),
    "tensorrt": (),  # without tensorrt on the build host, the engine is built on the device
    "hf": ("torch", "onnxscript", "transformers", "tokenizers", "safetensors"),
}


def _missing(modules) -> str | None:
    return next((m for m in modules if importlib.util.find_spec(m) is None), None)


def _require(where: str, what: str, extra: str, modules=None) -> None:
    mod = _missing(modules if modules is not None else EXTRA_MODULES.get(extra, ()))
    if mod is not None:
        raise BadInputError(f"{what} needs the '{mod}' package, which is not installed", hint=f"pip install 'edgepack[{extra}]'", where=where)


def pass_extra(cfg) -> str | None:
    """The pip extra an optimize pass needs beyond the base install (None: onnx/onnxruntime only)."""
    if cfg.pass_ == "distill" or (cfg.pass_ == "prune" and getattr(cfg, "method", None) == "channel"):
        return "torch"
    return None


def check_extras(lr: LoadedRecipe, targets) -> None:
    """Source format, passes and the selected targets: their backends are importable."""
    from . import toolchains
    from .ingest import CONVERTERS, SOURCE_TOOLCHAINS
    from .targets import TARGETS

    m = lr.recipe.model
    extra = CONVERTERS.get(m.format, (None, None))[1]
    if extra in SOURCE_TOOLCHAINS:  # its conversion runs in a toolchain: here, or in that toolchain's managed environment
        toolchains.check(SOURCE_TOOLCHAINS[extra], lr.where("model", "path" if m.path else "entrypoint"), f"a {m.format.value} source")
    elif extra:  # hf: converts in the build's environment (transformers)
        _require(lr.where("model", "format"), f"a {m.format.value} source", extra)
    for i, cfg in enumerate(lr.recipe.optimize):
        extra = pass_extra(cfg)
        if extra:
            _require(lr.where("optimize", i), f"the {cfg.pass_} pass", extra,
                     ("torch", "torch_pruning") if cfg.pass_ == "prune" else ("torch",))
    for i, t in enumerate(lr.recipe.targets):
        extra = TARGETS[t.type][1] if t.type in TARGETS else None
        if t in targets and extra:
            where, what = lr.where("targets", i), f"target '{t.id}' ({t.type.value})"
            if extra in toolchains.TOOLCHAINS and extra != "tensorrt":  # its compile runs in that toolchain: here or in
                toolchains.check(extra, where, what)                     # its managed environment (TensorRT: on the device)
                continue
            _require(where, what, extra)


def check_pass_data(lr: LoadedRecipe) -> None:
    """A pass that needs data the recipe lacks (static quantization without data.calibration)."""
    data = lr.recipe.data
    for i, cfg in enumerate(lr.recipe.optimize):
        if cfg.pass_ == "quantize" and getattr(cfg.mode, "value", cfg.mode) == "static" and data.calibration is None:
            raise BadInputError("static quantization needs calibration data; the recipe has no data.calibration",
                                hint="add data.calibration (path or loader), or use mode: dynamic", where=lr.where('optimize', i))


def onnx_inputs(lr: LoadedRecipe) -> dict[str, int] | None:
    """{name: rank} of an ONNX source's graph inputs (initializers excluded), read without running it."""
    m = lr.recipe.model
    if m.format.value != "onnx" or not m.path:
        return None
    import onnx

    try:
        graph = onnx.load(str(lr.resolve(m.path)), load_external_data=False).graph
    except Exception:
        return None  # the convert stage reports an unreadable model with its own message
    inits = {i.name for i in graph.initializer}
    return {i.name: len(i.type.tensor_type.shape.dim) for i in graph.input
            if i.name not in inits and i.type.HasField("tensor_type") and i.type.tensor_type.HasField("shape")}


def check_onnx_inputs(lr: LoadedRecipe) -> None:
    """model.inputs name the ONNX file's inputs, with the same rank."""
    found = onnx_inputs(lr)
    if not found:
        return
    names = ", ".join(f"{n} (rank {r})" for n, r in found.items())
    for i, spec in enumerate(lr.recipe.model.inputs):
        if spec.name not in found:
            raise BadInputError(f"{lr.recipe.model.path} has no input '{spec.name}' (its inputs: {names})",
                                hint="use the model file's input names", where=lr.where('model', 'inputs', i, 'name'))
        if spec.value is None and len(spec.shape) != found[spec.name]:  # (a constant may be fed reshaped)
            raise BadInputError(f"input '{spec.name}' has rank {found[spec.name]} in "
                                f"{lr.recipe.model.path}, the recipe gives {len(spec.shape)} dims {spec.shape}",
                                hint=f"give {found[spec.name]} dims", where=lr.where('model', 'inputs', i, 'shape'))


# top-level module a user's loader may import -> the edgepack extra that provides it
MODULE_EXTRAS = {"sklearn": "examples", "torch": "torch", "tensorflow": "tensorflow", "onnx2tf": "tflite",
                 "openvino": "openvino", "nncf": "openvino", "coremltools": "coreml", "requests": "registry"}


def check_loaders(lr: LoadedRecipe) -> None:
    """Each data loader's module imports (a module it needs that is missing: the extra or package to install)."""
    from .entrypoints import resolve

    for role in ("calibration", "validation", "training"):
        src = getattr(lr.recipe.data, role)
        if src is None or not src.loader:
            continue
        where = lr.where("data", role, "loader")
        try:
            resolve(src.loader, lr.dir, where)
        except BadInputError as e:
            cause = e.__cause__
            missing = getattr(cause, "name", None) if isinstance(cause, ModuleNotFoundError) else None
            if not missing or missing == src.loader.partition(":")[0]:
                raise
            top = missing.partition(".")[0]
            hint = f"pip install 'edgepack[{MODULE_EXTRAS[top]}]'" if top in MODULE_EXTRAS else f"pip install {top} (the package that provides it)"
            raise BadInputError(f"{src.loader} imports '{missing}', and the '{top}' package is not installed", hint=hint, where=where) from e


def check_hf_folder(lr: LoadedRecipe) -> None:
    """A Hugging Face folder has config.json, safetensors weights and tokenizer files (ingest/hf.py)."""
    m = lr.recipe.model
    if m.format.value == "hf" and m.path:
        from .ingest.hf import check_folder

        check_folder(lr.resolve(m.path), lr.where("model", "path"))


def preflight(lr: LoadedRecipe, targets) -> None:
    """Every cheap check on a loaded recipe and its selected targets, before any stage."""
    check_hf_folder(lr)
    check_extras(lr, targets)
    check_pass_data(lr)
    check_onnx_inputs(lr)
    check_loaders(lr)


def check_recipe(lr: LoadedRecipe, wanted: list[str] | None = None) -> list[str]:
    """`edgepack check`: what `build` checks up front, plus that each SSH device answers; builds nothing.

    Returns one line per thing checked; raises the first mistake."""
    from .build_checks import check_target_names
    from .devices import check_ready, load_profile
    from .validate_plan import check_evaluation, onnx_outputs

    r = lr.recipe
    check_target_names(lr, wanted)
    selected = [t for t in r.targets if not wanted or t.id in wanted]
    preflight(lr, selected)
    check_evaluation(r, lr.where, outputs=onnx_outputs(r.model, lr), base_dir=lr.dir)
    lines = [f"recipe:  {lr.path} ({r.name} {r.version})", f"targets: {', '.join(t.id for t in selected)} (backends installed)"]
    for d in r.devices:
        profile = load_profile(d, lr.dir)[0]
        check_ready(profile)
        if profile.transport.type.value == "ssh":
            from .devices.check import check_device

            info = check_device(profile)
            lines.append(f"device:  {profile.name} reachable ({(info.get('host') or {}).get('arch')}; can run "
                         f"{', '.join(info['can_run_targets']) or 'no bundle target'})")
            lines.extend(f"problem: {profile.name}: {p}" for p in info["problems"])
        else:
            lines.append(f"device:  {profile.name} ({profile.transport.type.value})")
    return lines
