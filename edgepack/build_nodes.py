"""The nodes of one recipe's build plan (edgepack/plan.py), in plan (topological) order:

  data -> convert -> reference fp32
               \\-> optimize[0] -> optimize[1] ... (a chain)
  compile[target] (<- convert or the last pass; TFLite: <- one shared onnx2tf SavedModel node per model)
  validate[target @ device (threads=N)] (<- compile, reference) -> gates -> package + sign -> publish

Each node's ``prepare`` runs in the coordinator and returns the picklable ``Work`` (a Stage and its input
artifacts) or, for steps that are not stages, its result. Failure handling as before the plan existed: a
failed compile fails its target and its validations only; a failed pass fails the targets that need its
model (``input: fp32`` ones go on); bad input (a recipe problem) stops the recipe.
"""

from __future__ import annotations

import threading

from . import build_generation as gen
from .errors import StageError
from .plan import Node, NodeResult, Plan, Resources, Work
from .recipe import TargetInput


def add_recipe_nodes(plan: Plan, rb) -> None:
    """Add recipe build ``rb``'s nodes (pipeline.RecipeBuild) to ``plan``."""
    r = rb.lr.recipe
    nid = rb.node_id

    def node(name, kind, deps, prepare, **kw):
        rb.ids.append(plan.add(Node(nid(name), kind, tuple(dict.fromkeys(nid(d) for d in deps)), prepare, rb.engine, recipe=rb.key, **kw)).id)
    node("data", "data", (), lambda res: _data(rb))
    node("convert", "convert", ("data",), lambda res: _convert_work(rb, res), finish=lambda out, res: _convert_done(rb, out, res))
    decoder = gen.is_decoder(r)
    if decoder:  # text-generation: the PyTorch model's tokens are the reference (edgepack/build_generation.py)
        node("reference fp32", "reference", ("data",), lambda res: gen.reference_work(rb, res),  # beside convert: it reads the folder
             finish=lambda out, res: gen.reference_done(rb, out, res))
    elif r.data.validation is not None:
        node("reference fp32", "reference", ("convert", "data"), lambda res: _reference_work(rb, res),
             finish=lambda out, res: _reference_done(rb, out, res))
    prev = "convert"
    for i, cfg in enumerate(r.optimize):
        name = f"optimize[{i}] {cfg.pass_}"
        node(name, "optimize", (prev, "data", "convert"), lambda res, i=i, cfg=cfg, prev=prev: _pass_work(rb, res, i, cfg, prev))
        prev = name
    rb.pass_nodes = [nid(f"optimize[{i}] {c.pass_}") for i, c in enumerate(r.optimize)]
    shared: dict[tuple, str] = {}  # (model node, prerequisite config) -> its node name: one conversion per model
    after_gates = []
    for tid, stage in rb.target_stages.items():
        model_node = "convert" if stage.target.input is TargetInput.FP32 or not r.optimize else prev
        deps = [model_node, "data", "convert"]
        pres = {}
        for out_name, pre in stage.prerequisites().items():
            sig = (model_node, out_name, pre.kind, repr(sorted(pre.config().items(), key=str)))
            if sig not in shared:
                shared[sig] = f"compile {tid} [{out_name}]"
                rb.served[nid(shared[sig])] = []
                node(shared[sig], "tf-convert", (model_node, "data", "convert"),
                     lambda res, pre=pre, name=shared[sig], m=model_node: _prerequisite_work(rb, res, name, pre, m))
            rb.served[nid(shared[sig])].append(tid)
            pres[out_name] = shared[sig]
            deps.append(shared[sig])
        cname = f"compile {tid}"
        node(cname, "compile", deps, lambda res, tid=tid, m=model_node, pres=pres: _compile_work(rb, res, tid, m, pres),
             target=tid, after_failure=True)
        after_gates.append(cname)
        if r.data.validation is None and not decoder:
            continue
        for dev in rb.devices:
            counts = dev.thread_counts()
            for n in counts:
                vname = f"validate {tid} @ {dev.name}" + (f" threads={n}" if len(counts) > 1 else "")
                rb.validations.setdefault(tid, {}).setdefault(dev.name, []).append(nid(vname))
                work = (lambda res, tid=tid, dev=dev, n=n, vname=vname: gen.validate_work(rb, res, tid, dev, n, vname)) if decoder else \
                    (lambda res, tid=tid, dev=dev, n=n, vname=vname: _validate_work(rb, res, tid, dev, n, vname))
                node(vname, "validate", (cname, "convert", "reference fp32"), work,
                     target=tid, device=dev.name,
                     resources=Resources(device=dev.name, exclusive=dev.transport.type.value in ("local", "browser")))
                after_gates.append(vname)
    from .build_assemble import gates_node, package_node, publish_node

    node("gates", "gates", tuple(after_gates) + tuple(f"optimize[{i}] {c.pass_}" for i, c in enumerate(r.optimize)), lambda res: gates_node(rb, res), after_failure=True)
    node("package + sign", "package", ("gates",), lambda res: package_node(rb, res, plan))
    node("publish", "publish", ("package + sign",), lambda res: publish_node(rb, res))


def _data(rb) -> NodeResult:
    from .data import freeze, load_source
    from .validate_plan import check_evaluation

    lr, r = rb.lr, rb.lr.recipe
    data = {}
    for role in ("calibration", "validation", "training"):
        src = getattr(r.data, role)
        if src is not None:
            arrays, labels = load_source(lr, src, role, r.model.data_inputs())
            data[role] = freeze(arrays, labels, rb.cache.root / "data", role, src.mode)
    if gen.is_decoder(r):
        data["tokens"] = gen.tokens(rb)
    rb.data = data
    rb.label_sets = set((data["validation"].meta.get("label_sets") or []) if "validation" in data else [])
    check_evaluation(r, lr.where, label_sets=rb.label_sets, base_dir=lr.dir)
    return NodeResult("ok", data)


_SOURCE_LOCK = threading.Lock()


def source(rb):
    """The recipe's source artifact, made once per build (a text-generation reference asks beside the convert)."""
    from .ingest import source_artifact

    with _SOURCE_LOCK:
        if rb.source is None:
            rb.source = source_artifact(rb.lr.recipe.model, rb.lr, rb.cache)
        return rb.source


def _convert_work(rb, res) -> Work:
    from .ingest import ConvertStage

    lr, r = rb.lr, rb.lr.recipe
    data = res[rb.node_id("data")].outputs
    inputs = {"source": source(rb)}
    samples = data.get("validation") or data.get("calibration")
    if samples is not None:
        inputs["samples"] = samples
    program = any(t.type.value == "executorch" for t in r.targets)  # hf sources: the torch program ExecuTorch compiles
    return Work("convert", ConvertStage(r.model, lr.dir, lr.where("model"), torch_program=program), inputs)


def _convert_done(rb, out: NodeResult, res) -> NodeResult:
    from .validate_plan import check_evaluation, effective_metrics

    r = rb.lr.recipe
    rb.out_shapes = {t.name: t.shape for t in out.outputs["model"].outputs}
    if "program" in out.outputs:  # an hf source: later PyTorch consumers (ExecuTorch) read its torch.export program
        rb.torch_source = out.outputs["program"]
    if "tokenizer" in out.outputs:  # ships in the bundle as tokenizer/
        rb.bundle_files["tokenizer"] = out.outputs["tokenizer"]
    check_evaluation(r, rb.lr.where, outputs=rb.out_shapes or None, label_sets=rb.label_sets, base_dir=rb.lr.dir)
    rb.metric_specs = effective_metrics(r, rb.out_shapes, rb.label_sets)
    return out


def _reference_work(rb, res) -> Work:
    from .validate import ReferenceStage

    r = rb.lr.recipe
    inputs = {"model": res[rb.node_id("convert")].outputs["model"], "validation": res[rb.node_id("data")].outputs["validation"]}
    return Work("reference fp32", ReferenceStage(r.model, rb.lr.dir, rb.stream), inputs)


def _reference_done(rb, out: NodeResult, res) -> NodeResult:
    from .pipeline import fp32_evaluation

    validation = res[rb.node_id("data")].outputs["validation"]
    out.value = fp32_evaluation(rb.metric_specs, out.outputs["outputs"], validation, rb.lr.dir, declared=bool(rb.lr.recipe.evaluate))
    return out


def _pass_work(rb, res, i, cfg, prev) -> Work:
    from .optimize import PassContext, make_pass

    lr, r = rb.lr, rb.lr.recipe
    ctx = PassContext(i, lr.where("optimize", i), lr.dir.absolute(), r.model, r.gates, tuple(r.evaluate))
    inputs = {"model": res[rb.node_id(prev)].outputs["model"], "source": rb.source, **res[rb.node_id("data")].outputs}
    return Work(f"optimize[{i}] {cfg.pass_}", make_pass(cfg, ctx), inputs)


def _compile_inputs(rb, res, model_node) -> dict:
    return {"model": res[rb.node_id(model_node)].outputs["model"], "source": rb.torch_source or rb.source,
            "fp32": res[rb.node_id("convert")].outputs["model"], **res[rb.node_id("data")].outputs}


_COVERAGE_LOCK = threading.Lock()


def coverage(rb, tid, res, model_node) -> dict:
    """The op-coverage pre-flight of one target (memoized per build; build_checks.target_coverage)."""
    from .build_checks import target_coverage

    with _COVERAGE_LOCK:
        if tid not in rb.coverage:
            stage = rb.target_stages[tid]
            inputs = _compile_inputs(rb, res, model_node)
            rb.coverage[tid] = target_coverage(rb.engine, stage, inputs["model"], inputs["fp32"], {"source": inputs["source"], **res[rb.node_id("data")].outputs})
        return rb.coverage[tid]


def _compile_ready(rb, res, tid, model_node) -> dict:
    """The compile's inputs, or StageError when the target cannot compile (its model is missing, unsupported ops)."""
    from .targets.coverage import summary

    if not res[rb.node_id(model_node)].ok:  # its optimized model does not exist: the pass's own error
        raise StageError(rb.pass_error(res) or f"{model_node} {res[rb.node_id(model_node)].status}")
    cov = coverage(rb, tid, res, model_node)
    if cov["unsupported"]:
        raise StageError(f"compile {tid}: {summary(tid, cov)}",
                         hint="replace those ops in the model, or drop this target; report.json targets.<id>.coverage lists them all")
    stage = rb.target_stages[tid]
    inputs = _compile_inputs(rb, res, model_node)
    if stage.prerequisites():
        from .errors import EdgepackError

        try:  # the compile's own input contract first: no conversion for a target that cannot compile
            stage.check_inputs({k: a for k, a in inputs.items() if stage.uses is None or k in stage.uses})
        except EdgepackError as e:
            raise e.in_stage(f"compile {tid}") from e
    return inputs


def _prerequisite_work(rb, res, name, pre, model_node) -> Work | NodeResult:
    from .errors import EdgepackError

    ready = None
    for tid in rb.served[rb.node_id(name)]:
        try:
            ready = _compile_ready(rb, res, tid, model_node)
        except EdgepackError:
            continue  # that target fails on its own, with its own line
    if ready is None:
        return NodeResult("skipped", error="no target can use this conversion")
    return Work(name, pre, ready)


def _compile_work(rb, res, tid, model_node, pres) -> Work:
    import shutil

    inputs = _compile_ready(rb, res, tid, model_node)
    for out_name, pre_name in pres.items():
        pre = res[rb.node_id(pre_name)]
        if not pre.ok:  # the shared conversion failed: every target that needs it fails with its line and log
            log, dest = rb.engine.log_path(pre_name), rb.engine.log_path(f"compile {tid}")
            if log is not None and dest is not None and log.exists() and log != dest:
                shutil.copyfile(log, dest)
            raise pre.exc if pre.exc is not None else StageError(f"{pre.error}", where=pre_name)
        inputs[out_name] = pre.outputs[out_name]
    return Work(f"compile {tid}", rb.target_stages[tid], inputs)


def _validate_work(rb, res, tid, dev, n, vname) -> Work | NodeResult:
    from .validate import ValidateStage

    r = rb.lr.recipe
    art = res[rb.node_id(f"compile {tid}")].outputs["artifact"]
    if art.meta.get("runtime") not in dev.runtimes:
        return NodeResult("skipped", value={"status": "skipped", "reason": f"device has no {art.meta.get('runtime')} runtime"})
    if art.meta.get("validate") is False:
        return NodeResult("skipped", value={"status": "skipped", "reason": art.meta.get("validate_reason", "not runnable here")})
    inputs = {"artifact": art, "validation": res[rb.node_id("data")].outputs["validation"]}
    ref = res.get(rb.node_id("reference fp32"))
    if ref is not None and ref.ok:
        inputs["reference"] = ref.outputs["outputs"]
    stage = ValidateStage(dev.at_threads(n), r.benchmark, [i.name for i in r.model.inputs], metrics=rb.metric_specs,
                          base_dir=rb.lr.dir, output_names=list(rb.out_shapes) or None, cosine=r.gates.cosine, stream=rb.stream)
    return Work(vname, stage, inputs, deadline_s=dev.transport.run_timeout_s)
