"""Which metrics and gates a build computes, checked against the model's outputs and the data's label sets.

Every gate and metric that cannot be computed for this model is a recipe error (exit 2) raised before any
long stage: at load time with the names the recipe declares (model.outputs, data.validation.labels),
in the build's pre-flight for ONNX sources (names and shapes read from the file), after loading the data
(label sets of a loader), and right after convert (the exported outputs' names and shapes).
"""

from __future__ import annotations

from pathlib import Path

from .errors import RecipeError
from .recipe_evaluate import CtcGreedyDecode, FnMetric, TextMetric, TokenMetric, Top1

CLASSIFIER = ("top1", "topk", "top1_agreement")
BINARY = ("binary_accuracy", "f1", "roc_auc")


def declared_label_sets(recipe) -> set[str] | None:
    """Label set names known from the recipe alone (None: a loader or an .npz decides)."""
    src = recipe.data.validation
    if src is None:
        return set()
    if isinstance(src.labels, dict):
        return set(src.labels)
    if isinstance(src.labels, str):
        return {"labels"}
    return None


def _dims(shape):
    return None if shape is None else list(shape)


def stream_shapes(recipe, shapes: dict | None) -> dict | None:
    """Stream mode (data.validation.mode: stream): each ONNX output shape as metrics receive it,
    [S, T, *step] (the per-step output without its batch axis; a state output's is its state input's)."""
    src = recipe.data.validation
    if shapes is None or src is None or src.mode != "stream":
        return shapes
    specs = {i.name: i for i in recipe.model.inputs}
    state_axis = {st.output: specs[st.input].feed_batch_axis if st.input in specs else 0 for st in recipe.model.state}
    out = {}
    for name, shape in shapes.items():
        s = _dims(shape)
        ax = state_axis.get(name, 0)
        out[name] = None if s is None else ["S", "T", *(d for i, d in enumerate(s) if i != ax)]
    return out


def _shape_problem(m, shape) -> str | None:
    s = _dims(shape)
    if s is None:
        return None
    t = getattr(m, "type", None)
    if s[:2] == ["S", "T"] and t in BINARY:  # stream: per-step scores against per-step labels [S, T]
        return None if s[2:] in ([], [1], [2]) or (len(s) == 3 and isinstance(s[2], str)) else \
            f"needs per-step [], [1] or [2] scores (stream mode: [S, T, ...]), the output has shape {s}"
    if t in CLASSIFIER and (len(s) != 2 or s[1] == 1):
        return f"needs a classifier output [N, classes], the output has shape {s}"
    if t in BINARY and not (len(s) == 1 or (len(s) == 2 and s[1] in (1, 2) or (len(s) == 2 and isinstance(s[1], str)))):
        return f"needs [N], [N, 1] or [N, 2] scores, the output has shape {s}"
    if isinstance(getattr(m, "decode", None), CtcGreedyDecode) and len(s) != 3:
        return f"ctc_greedy needs [N, T, classes] scores, the output has shape {s}"
    return None


def _check_metric(i, m, where, outs, shapes, label_sets, base_dir, generation=None):
    if isinstance(m, TokenMetric):  # computed from greedy runs (validate/generation.py), not from an output
        if generation is None:
            raise RecipeError(f"'{m.id}' is a text-generation metric; it needs model.task text-generation and a generation: section",
                              where=where('evaluate', i))
        if m.type == "perplexity" and not generation.perplexity:
            raise RecipeError("perplexity needs generation.perplexity (the text file it scores)", hint="add generation.perplexity: FILE", where=where("evaluate", i))
        return
    names = ", ".join(outs) if outs else ""
    wanted = (m.outputs or ([m.output] if m.output else [])) if isinstance(m, FnMetric) else ([m.output] if m.output else [])
    for k, o in enumerate(wanted):
        if outs is not None and o not in outs:
            field = ("outputs", k) if isinstance(m, FnMetric) and m.outputs else ("output",)
            raise RecipeError(f"the model has no output '{o}' (outputs: {names})", where=where('evaluate', i, *field))
    if not isinstance(m, FnMetric):
        if not wanted and outs is not None and len(outs) > 1:
            raise RecipeError(f"'{m.id}' does not say which output it reads; the model has outputs {names}",
                              hint="add 'output: NAME'", where=where('evaluate', i))
        out = wanted[0] if wanted else (outs[0] if outs else None)
        problem = _shape_problem(m, (shapes or {}).get(out)) if out else None
        if problem:
            raise RecipeError(f"'{m.id}' on output '{out}' {problem}", hint="name another output, or use another metric", where=where('evaluate', i))
    if isinstance(m, TextMetric) and isinstance(m.decode, CtcGreedyDecode) and m.decode.charset and base_dir is not None:
        if not (Path(base_dir) / m.decode.charset).is_file():
            raise RecipeError(f"charset file not found: {Path(base_dir) / m.decode.charset}", where=where('evaluate', i, 'decode', 'charset'))
    needs = m.wants_labels() or (isinstance(m, FnMetric) and m.labels)
    if needs and label_sets is not None:
        if not label_sets:
            raise RecipeError(f"'{m.id}' needs labels; data.validation has none",
                              hint="add data.validation.labels (a .npy, or a mapping of named .npy files)", where=where('evaluate', i))
        if m.labels and m.labels not in label_sets:
            raise RecipeError(f"no label set '{m.labels}' (label sets: {', '.join(sorted(label_sets))})", where=where('evaluate', i, 'labels'))
        if not m.labels and len(label_sets) > 1:
            raise RecipeError(f"'{m.id}' does not say which labels it compares with; label sets: {', '.join(sorted(label_sets))}",
                              hint="add 'labels: NAME'", where=where('evaluate', i))


def _check_gates(recipe, where, outs, shapes, label_sets):
    gates = recipe.gates
    ids = [m.id for m in recipe.evaluate]
    prefixes = tuple(f"{m.id}." for m in recipe.evaluate if isinstance(m, FnMetric))
    for name in gates.metrics:
        if name not in ids and not (prefixes and name.startswith(prefixes)):
            raise RecipeError(f"no metric named '{name}' in evaluate: (metrics: {', '.join(ids) or 'none'})",
                              hint="gates.metrics keys are the names of evaluate: items", where=where('gates', 'metrics', name))
    for k, w in enumerate(gates.waive):
        if w.startswith("metrics.") and w[len("metrics."):] not in gates.metrics:
            raise RecipeError(f"no gate '{w}' (gates.metrics has {', '.join(gates.metrics) or 'none'})", where=where('gates', 'waive', k))
    cos = gates.cosine
    if cos is not None and cos.output and outs is not None and cos.output not in outs:
        raise RecipeError(f"the model has no output '{cos.output}' (outputs: {', '.join(outs)})", where=where('gates', 'min_cosine', 'output'))
    if gates.max_accuracy_drop is None or any(isinstance(m, Top1) for m in recipe.evaluate):
        return
    if outs is not None and len(outs) > 1:
        raise RecipeError(f"top-1 of which output? The model has outputs {', '.join(outs)}", where=where('gates', 'max_accuracy_drop'),
                          hint="add `evaluate: [{type: top1, output: NAME}]` naming the classifier output, or gate a metric with gates.metrics")
    if outs is not None and label_sets is not None and len(label_sets) > 1:  # (the output comes first)
        raise RecipeError(f"top-1 against which labels? The data has label sets {', '.join(sorted(label_sets))}",
                          hint="add `evaluate: [{type: top1, output: NAME, labels: SET}]`", where=where('gates', 'max_accuracy_drop'))
    if outs and shapes and _shape_problem(Top1(type="top1"), shapes.get(outs[0])):
        raise RecipeError(f"top-1 needs a classifier output [N, classes]; output '{outs[0]}' has shape {_dims(shapes[outs[0]])}",
                          hint="gate the task's metric instead: evaluate: + gates.metrics", where=where('gates', 'max_accuracy_drop'))
    if recipe.data.validation is not None and label_sets is not None and not label_sets:  # argmax of an embedding means nothing
        raise RecipeError("max_accuracy_drop is the top-1 drop against labels, and data.validation has none",
                          hint="give data.validation.labels, or gate the task's metric (evaluate: + gates.metrics; "
                               "top1_agreement with FP32 is there for a classifier without labels)", where=where('gates', 'max_accuracy_drop'))


def check_evaluation(recipe, where, outputs: dict | list | None = None, label_sets: set[str] | None = None, base_dir=None) -> None:
    """Raise RecipeError for any evaluate:/gates item that cannot be computed.

    outputs: the model's output names (a list) or {name: shape} (None: use recipe.model.outputs, if given).
    label_sets: the validation label set names (None: those the recipe declares, if it does)."""
    shapes = stream_shapes(recipe, outputs) if isinstance(outputs, dict) else None
    outs = list(outputs) if outputs is not None else (list(recipe.model.outputs) if recipe.model.outputs else None)
    if label_sets is None:
        label_sets = declared_label_sets(recipe)
    generation = getattr(recipe, "generation", None)
    if recipe.evaluate and recipe.data.validation is None and generation is None:
        raise RecipeError("metrics are computed on data.validation, and the recipe has none",
                          hint="add data.validation (path or loader)", where=where('evaluate'))
    seen: set[str] = set()
    for i, m in enumerate(recipe.evaluate):
        if m.id in seen:
            raise RecipeError(f"two metrics are named '{m.id}'", hint="give each a distinct 'name'", where=where('evaluate', i))
        seen.add(m.id)
        _check_metric(i, m, where, outs, shapes, label_sets, base_dir, generation)
    if sum(1 for m in recipe.evaluate if m.primary) > 1:
        raise RecipeError("more than one metric has primary: true", where=where('evaluate'))
    _check_gates(recipe, where, outs, shapes, label_sets)


def effective_metrics(recipe, outputs: dict, label_sets: set[str]) -> list:
    """The recipe's evaluate: items, plus the implicit ones its gates need (outputs: {name: shape}).

    Without evaluate:, a single [N, C] output with labels is scored top-1 as before. max_accuracy_drop with no
    top1 metric adds one on the single output (it needs labels: check_evaluation refuses it without)."""
    specs = list(recipe.evaluate)
    ids = {m.id for m in specs}
    names = list(outputs)
    single = names[0] if len(names) == 1 and not _shape_problem(Top1(type="top1"), outputs[names[0]]) else None
    wants_top1 = recipe.gates.max_accuracy_drop is not None or not specs
    if single and wants_top1 and not any(isinstance(m, Top1) for m in specs):
        if label_sets and len(label_sets) == 1 and "top1" not in ids:
            specs.append(Top1(type="top1", output=single))
    return specs


def accuracy_gate_metric(recipe, specs) -> str | None:
    """The metric `max_accuracy_drop` checks: the (first) top1 metric."""
    return next((m.id for m in specs if isinstance(m, Top1)), None)


def onnx_outputs(model, lr) -> dict | None:
    """{name: shape} of an ONNX source's outputs, read without running it (None for other formats)."""
    if getattr(model.format, "value", model.format) != "onnx" or not model.path:
        return None
    import onnx

    path = lr.resolve(model.path)
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:
        return None  # the convert stage reports an unreadable model with its own message
    out = {}
    for o in graph.output:
        dims = o.type.tensor_type.shape.dim if o.type.HasField("tensor_type") else []
        out[o.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims] if dims else None
    if model.outputs and len(model.outputs) == len(out):  # the recipe renames them
        out = dict(zip(model.outputs, out.values()))
    return out
