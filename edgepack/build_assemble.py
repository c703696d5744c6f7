"""From plan results to report, gates and bundle: the coordinator-side nodes ``gates``, ``package + sign``
and ``publish`` of one recipe (edgepack/build_nodes.py makes them)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import GateFailedError, StageError
from .plan import NodeResult, overlaps, plan_rows


def optimize_records(rb, res) -> list[dict]:
    """report.json "optimize": each pass's effect in recipe order; a failed pass keeps what it measured."""
    records, failed = [], None
    for i, cfg in enumerate(rb.lr.recipe.optimize):
        out = res.get(rb.pass_nodes[i])
        if failed is not None or out is None or out.status == "skipped":
            records.append({"index": i, "pass": cfg.pass_, "status": "skipped", "reason": f"{failed or 'an earlier stage'} failed"})
        elif out.ok:
            records.append({"index": i, "pass": cfg.pass_, "status": "ok", "cached": out.cached, **out.record})
        else:
            failed = f"optimize[{i}] {cfg.pass_}"
            records.append({"index": i, "pass": cfg.pass_, "status": "failed", "error": out.error, **out.detail(), **(getattr(out.exc, "record", None) or {})})
    return records


def _device_entry(rb, res, tid, art, dev, vids, over, failures, gate_failures, entry) -> str:
    """The device's record for one target (gates evaluated); returns its status."""
    from .validate.gates import evaluate
    from .validate.threads import gates_at_threads
    from .validate_plan import accuracy_gate_metric

    r = rb.lr.recipe
    outs = [res[v] for v in vids]
    bad = next((o for o in outs if o.status not in ("ok", "skipped")), None)
    if outs[0].status == "skipped" and outs[0].value:
        entry["devices"][dev] = outs[0].value
        return "skipped"
    if bad is not None:
        entry["devices"][dev] = {"status": "failed", "seconds": round(sum(o.end_s - o.start_s for o in outs), 3), "error": bad.error, **bad.detail()}
        failures.append(bad.error)
        return "failed"
    record = dict(outs[0].record)
    if len(outs) > 1:
        counts = [v.rsplit("threads=", 1)[1] for v in vids]
        record["threads_runs"] = {n: o.record for n, o in zip(counts, outs)}
    acc_metric = accuracy_gate_metric(r, rb.metric_specs)
    gates = gates_at_threads(lambda rec, where: evaluate(r.gates, tid, where, rec, art.size, acc_metric), record, dev)
    others = sorted({o for v in vids for o in over.get(v, [])})
    conc = {"jobs": rb.jobs, "exclusive": rb.plan_nodes_exclusive(vids[0]), "overlapped": others, "cached": all(o.cached for o in outs)}
    entry["devices"][dev] = {"status": "ok" if gates["passed"] else "gates-failed", **record, "gates": gates, "concurrency": conc}
    gate_failures.extend(gates["failures"])
    if not gates["passed"]:
        entry["status"] = "gates-failed"
    return "ok"


def _target_entry(rb, res, tid, over, failures, gate_failures, artifacts) -> dict:
    from .worker import log_tail

    t = rb.target_stages[tid].target
    entry: dict = {"type": t.type.value, "input": t.input.value, "status": "ok", "devices": {}}
    if tid in rb.coverage:
        entry["coverage"] = rb.coverage[tid]
    out = res.get(rb.node_id(f"compile {tid}"))
    if out is None or not out.ok:
        err = out.error if out is not None else "not run"
        entry.update(status="failed", error=err, **(out.detail() if out is not None else {}))
        if err != rb.pass_error(res):  # a failed pass is listed once in failures
            failures.append(err)
        log = rb.engine.log_path(f"compile {tid}")
        if log is not None and log.exists() and out is not None and out.exc is not None:
            entry.update(log=str(log), log_tail=log_tail(log))
        return entry
    art = out.outputs["artifact"]
    artifacts[tid] = art
    entry.update(compile=out.record, artifact=art.to_json(), size_bytes=art.size, precision=art.meta.get("precision"))
    if rb.lr.recipe.data.validation is None and getattr(rb.lr.recipe, "generation", None) is None:
        entry["validation"] = "skipped: the recipe has no data.validation"
        return entry
    statuses = {dev: _device_entry(rb, res, tid, art, dev, vids, over, failures, gate_failures, entry)
                for dev, vids in rb.validations.get(tid, {}).items()}
    runnable = [d for d, s in statuses.items() if s != "skipped"]
    failed = [d for d in runnable if statuses[d] == "failed"]
    if failed and len(failed) == len(runnable):
        entry["status"] = "failed"  # validated nowhere: not shipped
    elif failed:  # shipped, validated on the others; the build is PARTIAL and the report says where
        entry["unvalidated_devices"] = failed
    return entry


def gates_node(rb, res) -> NodeResult:
    """Per target: compile, validation on each device, gates; honest labels vs FP32. Raises the first
    stop (bad input, a failed convert or reference) as the build did before the plan."""
    from .validate.vs_fp32 import label_and_gate

    for nid in rb.own_nodes():
        o = res.get(nid)
        if o is not None and o.status == "fatal":
            raise o.exc
    for name in ("data", "convert", "reference fp32"):
        o = res.get(rb.node_id(name))
        if o is not None and not o.ok:
            raise o.exc if o.exc is not None else StageError(f"{o.error}", where=name)
    records = optimize_records(rb, res)
    failures = [rb.pass_error(res)] if rb.pass_error(res) else []
    gate_failures: list[dict] = []
    artifacts: dict = {}
    over = overlaps(res)
    targets = {tid: _target_entry(rb, res, tid, over, failures, gate_failures, artifacts) for tid in rb.target_stages}
    fp32 = res[rb.node_id("convert")].outputs["model"]
    label_and_gate(rb.lr.recipe.gates, targets, records, fp32.size,
                   {d.name for d in rb.devices if d.transport.type.value == "local"}, gate_failures)
    ref = res.get(rb.node_id("reference fp32"))
    return NodeResult("ok", value={"targets": targets, "artifacts": artifacts, "failures": failures, "gate_failures": gate_failures,
                                   "optimize": records, "evaluation": ref.value if ref is not None else None})


def make_report(rb, res, plan) -> dict:
    from .build_checks import host_prefixes
    from .paths import scrub_host_paths
    from .pipeline import _now, _toolchain
    from .report_summary import size_split

    r, lr, g = rb.lr.recipe, rb.lr, res[rb.node_id("gates")].value
    order = {n.split("/", 1)[-1] if rb.prefix else n: i for i, n in enumerate(rb.own_nodes())}
    rb.engine.lineage.sort(key=lambda s: order.get(s["name"], len(order)))  # plan order: the same for every --jobs
    lineage = rb.engine.lineage
    report = {
        "schema_version": 1, "name": r.name, "version": r.version, "recipe": lr.path.name,
        "recipe_sha256": hashlib.sha256(lr.text.encode()).hexdigest(), "started": rb.started, "finished": _now(),
        "source": {"format": r.model.format.value, "sha256": rb.source.digest},
        "conversion": {**next((s for s in lineage if s["name"] == "convert"), {}), "record": res[rb.node_id("convert")].record},
        "stages": lineage, "optimize": g["optimize"], "evaluate": g["evaluation"], "targets": g["targets"],
        "gates": {"config": r.gates.model_dump(mode="json"), "passed": not g["gate_failures"], "failures": g["gate_failures"]},
        "failures": g["failures"], "toolchain": _toolchain(),
        "card": r.card.model_dump(mode="json") if r.card else None,  # MODEL_CARD.md (edgepack/model_card.py)
        "plan": {"executor": rb.executor_name, "jobs": rb.jobs,
                 "nodes": [row for row in plan_rows(plan, res) if row["id"] in set(rb.own_nodes())]},
    }
    for tid, art in g["artifacts"].items():  # where it lies in the bundle, not in the build host's cache
        g["targets"][tid]["artifact"]["path"] = f"targets/{tid}/{art.path.name}"
        g["targets"][tid]["size"] = size_split(art)  # the model file(s) apart from the folder's extras
    return scrub_host_paths(report, host_prefixes(lr, rb.out_dir, rb.cache.root))  # issue 11: no build-host paths


def package_node(rb, res, plan) -> NodeResult:
    from .report_docs import write_beside

    g = res[rb.node_id("gates")].value
    report = make_report(rb, res, plan)
    built_ok = [tid for tid, e in g["targets"].items() if e["status"] == "ok"]
    if g["gate_failures"] or not built_ok:
        report_path = rb.out_dir.parent / f"{rb.out_dir.name}.report.json"
        report = write_beside(report_path, report)  # + NAME.timings.json, NAME.report.html (edgepack/report_docs.py)
        if g["gate_failures"]:
            msgs = [f["message"] for f in g["gate_failures"]]
            err = GateFailedError(f"{len(msgs)} gate(s) failed: " + "; ".join(msgs),
                                  hint=f"report written to {report_path}; nothing was signed or published")
            err.report = report  # type: ignore[attr-defined]  # the CLI prints the summary table before the error line
            raise err
        raise StageError("no target was built: " + "; ".join(g["failures"]), hint=f"report written to {report_path}")
    from .build_package import write_signed_bundle

    with rb.progress.running("package + sign"):  # done "failed" if it raises (console.Progress)
        bundle = write_signed_bundle(rb, report, {tid: g["artifacts"][tid] for tid in built_ok})
    return NodeResult("ok", value={"bundle": bundle, "report": report})


def publish_node(rb, res) -> NodeResult:
    from .pipeline import _publish, partial_refusal

    failures = res[rb.node_id("gates")].value["failures"]
    bundle = res[rb.node_id("package + sign")].value["bundle"]
    not_published = partial_refusal(failures, rb.opts.allow_partial or rb.lr.recipe.publish.allow_partial) if rb.publish else None
    published = None
    if not_published:
        rb.progress.note(f"not published: {not_published}")
    elif rb.publish:
        with rb.progress.running("publish") as step:
            published = _publish(Path(bundle), rb.ref, rb.opts.force)
            step["note"] = published.get("ref", "")
    return NodeResult("ok", value={"published": published, "not_published": not_published})
