"""`edgepack build`: recipe -> plan -> stages -> gates -> signed bundle -> registry.

The plan is linear with a fan-out per target and per device:
  data -> convert -> optimize[...] -> compile[target] x N -> validate[target x device] -> package -> sign -> publish
A target that fails to compile or validate fails alone; the others go on (exit code PARTIAL).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, failpoints
from . import build_checks as pre_build
from .artifact import Artifact
from .cache import StageCache, edgepack_home
from .data import freeze, load_source
from .devices.fleet import run_fleet
from .engine import Engine, Progress, package_versions
from .errors import BadInputError, EdgepackError, GateFailedError, StageError
from .ingest import ConvertStage, source_artifact
from .optimize import PassContext, make_pass
from .paths import check_writable, scrub_host_paths
from .recipe import LoadedRecipe, TargetInput
from .report_docs import bundle_docs, write_beside
from .report_summary import size_split
from .targets import TargetContext, make_target, run_compile
from .validate import ReferenceStage, ValidateStage, artifact_contract
from .validate.gates import evaluate
from .validate.threads import gates_at_threads, validate_at_threads
from .validate_plan import accuracy_gate_metric, check_evaluation, effective_metrics, onnx_outputs

DEFAULT_KEY = "keys/signing-key.pem"


@dataclass
class BuildOptions:
    output: Path | None = None
    registry: str | None = None
    publish: bool = True
    cache_dir: Path | None = None
    use_cache: bool = True
    cache_store: str | None = None  # shared store URL (oci://HOST/REPO, file:///PATH); default $EDGEPACK_CACHE_STORE
    key: Path | None = None
    quiet: bool = False
    targets: list[str] | None = None  # build only these target ids
    force: bool = False  # publish over an existing tag of this version (release tags are immutable)
    allow_partial: bool = False  # publish even when some targets failed (else a partial build is not published)
    progress: object = None  # a callable taking one event dict per stage start/done/note (edgepack/progress_hooks.py)


@dataclass
class BuildResult:
    status: str  # ok | gates-failed | partial
    exit_code: int
    bundle: Path | None
    report_path: Path
    report: dict
    published: dict | None = None
    failures: list[str] = field(default_factory=list)
    not_published: str | None = None  # why a build that would have published did not


def default_registry(name: str) -> str:
    return f"layout:{edgepack_home() / 'registry' / name}"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _resolve_key(lr: LoadedRecipe, opts: BuildOptions, progress: Progress) -> Path:
    from .bundle.sign import keygen

    if opts.key:
        return Path(opts.key).expanduser()
    if lr.recipe.package.key:
        return lr.resolve(lr.recipe.package.key)
    key = edgepack_home() / DEFAULT_KEY
    from .locks import flocked

    try:
        with flocked(key.with_name(".signing-key.lock")):  # concurrent first builds create one key, not two
            created = not key.exists()
            if created:
                keygen(key)
    except OSError as e:
        from .errors import BadInputError

        raise BadInputError(f"cannot create the signing key {key}: {e.strerror or e}", hint="set EDGEPACK_HOME to a folder you can write to") from e
    if created:
        if not progress.quiet:
            print(f"  created signing key {key} (public key {_public_key_for(key)})", file=progress.stream)
    return key


def build(lr: LoadedRecipe, opts: BuildOptions | None = None) -> BuildResult:
    opts = opts or BuildOptions()
    r = lr.recipe
    progress = Progress(quiet=opts.quiet)
    from .progress_hooks import attach

    attach(progress, opts.progress)  # also to the "edgepack" logger and the caller's callback
    started = _now()
    out_dir = Path(opts.output) if opts.output else (lr.resolve(r.package.output) if r.package.output else Path("dist") / f"{r.name}-{r.version}")
    out_dir = out_dir.expanduser().absolute()
    registry = opts.registry or (r.publish.registry) or default_registry(r.name)
    publish = opts.publish and r.publish.enabled

    # Pre-flight: everything that can be checked cheaply is checked before any long stage.
    check_writable(out_dir, "package.output")
    pre_build.check_target_names(lr, opts.targets)
    from .preflight import preflight

    preflight(lr, [t for t in r.targets if not opts.targets or t.id in opts.targets])  # extras, pass data, ONNX inputs
    from .registry.refs import parse_ref

    ref = parse_ref(f"{registry}:{r.version}")
    if publish and ref.kind == "layout":
        check_writable(Path(ref.path), "publish.registry")
    if publish:  # reachable, TLS and credentials; this version not published yet: fail now, not after the build
        from .registry.remote import check_release

        check_release(ref, r.name, force=opts.force)
    key = _resolve_key(lr, opts, progress)
    from .bundle.sign import load_private_key

    load_private_key(key)
    from .devices import load_profile

    devices = [load_profile(d, lr.dir)[0] for d in r.devices]
    check_evaluation(r, lr.where, outputs=onnx_outputs(r.model, lr), base_dir=lr.dir)  # ONNX sources: names/shapes from the file
    selected = [t for t in r.targets if not opts.targets or t.id in opts.targets]
    target_stages = {t.id: make_target(t, TargetContext(lr.where("targets", i), lr.dir, r.model)) for i, t in enumerate(r.targets) if t in selected}

    from .cache_store import default_store_url, store_for

    cache = StageCache(opts.cache_dir, enabled=opts.use_cache, store=store_for(opts.cache_store or default_store_url(),
                                                                          "--cache-store" if opts.cache_store else "EDGEPACK_CACHE_STORE"))
    pre_build.check_space(lr, out_dir, cache.root, len(selected), "--cache-dir" if opts.cache_dir else None)
    engine = Engine(cache, progress, log_dir=out_dir.parent / f".{out_dir.name}.logs")
    if not opts.quiet:
        print(f"edgepack build {lr.path} -> {out_dir}", file=progress.stream)

    # Data
    data: dict[str, Artifact] = {}
    data_dir = cache.root / "data"
    for role in ("calibration", "validation", "training"):
        src = getattr(r.data, role)
        if src is not None:
            arrays, labels = load_source(lr, src, role, r.model.data_inputs())
            data[role] = freeze(arrays, labels, data_dir, role, src.mode)
    label_sets = set((data["validation"].meta.get("label_sets") or []) if "validation" in data else [])
    check_evaluation(r, lr.where, label_sets=label_sets, base_dir=lr.dir)

    # Convert
    source = source_artifact(r.model, lr)
    conv_inputs = {"source": source}
    samples = data.get("validation") or data.get("calibration")
    if samples is not None:
        conv_inputs["samples"] = samples
    conversion = engine.run("convert", ConvertStage(r.model, lr.dir, lr.where("model")), conv_inputs)
    converted = conversion.outputs["model"]
    fp32 = converted
    out_shapes = {t.name: t.shape for t in converted.outputs}
    check_evaluation(r, lr.where, outputs=out_shapes or None, label_sets=label_sets, base_dir=lr.dir)
    metric_specs = effective_metrics(r, out_shapes, label_sets)
    evaluation, reference = None, None
    stream = r.data.validation is not None and r.data.validation.mode == "stream"  # outputs [S, T, ...]
    if "validation" in data:  # FP32 outputs and metrics first: a metric that cannot be computed fails before any long stage
        reference = engine.run("reference fp32", ReferenceStage(r.model, lr.dir, stream), {"model": fp32, "validation": data["validation"]}).outputs["outputs"]
        evaluation = fp32_evaluation(metric_specs, reference, data["validation"], lr.dir, declared=bool(r.evaluate))

    # Optimize (a failing pass fails alone: the targets that need its model fail, `input: fp32` ones go on)
    model, optimize_records, pass_error = _optimize(engine, lr, fp32, source, data)

    # Pre-flight op coverage: per target, the nodes it cannot convert, before any conversion starts
    from .targets.coverage import summary as coverage_summary

    coverage = {tid: pre_build.target_coverage(engine, stage, _target_model(stage.target, fp32, model), fp32, {"source": source, **data})
                for tid, stage in target_stages.items() if _target_model(stage.target, fp32, model) is not None}

    # Compile, then validate each target on each device
    targets: dict[str, dict] = {}
    artifacts: dict[str, Artifact] = {}
    failures: list[str] = [pass_error] if pass_error else []  # a failed pass makes the build partial at best
    gate_failures: list[dict] = []
    for tid, stage in target_stages.items():
        t = stage.target
        entry: dict = {"type": t.type.value, "input": t.input.value, "status": "ok", "devices": {}}
        targets[tid] = entry
        src_model = _target_model(t, fp32, model)
        if src_model is None:  # its optimized model does not exist: the pass's own error, once per target
            entry.update(status="failed", error=pass_error)  # listed once in failures (below)
            continue
        entry["coverage"] = coverage[tid]
        if coverage[tid]["unsupported"]:
            err = StageError(f"compile {tid}: {coverage_summary(tid, coverage[tid])}",
                             hint="replace those ops in the model, or drop this target; report.json targets.<id>.coverage lists them all")
            entry.update(status="failed", error=err.one_line())
            failures.append(err.one_line())
            continue
        try:
            res = run_compile(engine, f"compile {tid}", stage, {"model": src_model, "source": source, "fp32": fp32, **data})
        except EdgepackError as e:
            entry.update(status="failed", error=e.one_line())
            failures.append(e.one_line())
            log = engine.log_path(f"compile {tid}")
            if log is not None and log.exists():  # an isolated stage's log: kept beside the bundle, its tail in the report
                from .worker import log_tail

                entry.update(log=str(log), log_tail=log_tail(log))
            continue
        art = res.outputs["artifact"]
        artifacts[tid] = art
        entry.update(compile=res.record, artifact=art.to_json(), size_bytes=art.size, precision=art.meta.get("precision"))
        if "validation" not in data:
            entry["validation"] = "skipped: the recipe has no data.validation"
            continue
        runnable = []
        for dev in devices:
            if art.meta.get("runtime") not in dev.runtimes:
                entry["devices"][dev.name] = {"status": "skipped", "reason": f"device has no {art.meta.get('runtime')} runtime"}
            elif art.meta.get("validate") is False:
                entry["devices"][dev.name] = {"status": "skipped", "reason": art.meta.get("validate_reason", "not runnable here")}
            else:
                runnable.append(dev)
        vinputs = {"artifact": art, "validation": data["validation"]}
        if reference is not None:
            vinputs["reference"] = reference

        def validate_on(dev, tid=tid, vinputs=vinputs):  # at each of the device's thread counts (validate/threads.py)
            make = lambda profile: ValidateStage(profile, r.benchmark, [i.name for i in r.model.inputs],  # noqa: E731
                                                 metrics=metric_specs, base_dir=lr.dir, output_names=list(out_shapes) or None,
                                                 cosine=r.gates.cosine, stream=stream)
            return validate_at_threads(engine, f"validate {tid} @ {dev.name}", dev, make, vinputs)

        # Devices in parallel (fleet run, per-device timeout); a failing device fails alone.
        outcomes = run_fleet(runnable, validate_on)
        for dev in runnable:
            out = outcomes[dev.name]
            if out.status != "ok":
                entry["devices"][dev.name] = out.to_json()
                failures.append(out.error)
                continue
            vres = out.value
            acc_metric = accuracy_gate_metric(r, metric_specs)
            gates = gates_at_threads(lambda rec, where, tid=tid, art=art, acc_metric=acc_metric: evaluate(r.gates, tid, where, rec, art.size, acc_metric),
                                     vres.record, dev.name)
            entry["devices"][dev.name] = {"status": "ok" if gates["passed"] else "gates-failed", **vres.record, "gates": gates}
            gate_failures.extend(gates["failures"])
            if not gates["passed"]:
                entry["status"] = "gates-failed"
        failed_devices = [d.name for d in runnable if outcomes[d.name].status != "ok"]
        if failed_devices and len(failed_devices) == len(runnable):
            entry["status"] = "failed"  # validated nowhere: not shipped
        elif failed_devices:  # shipped, validated on the others; the build is PARTIAL and the report says where
            entry["unvalidated_devices"] = failed_devices

    # Honest labels: what quantization changed, and whether each non-fp32 target pays against FP32
    from .validate.vs_fp32 import label_and_gate

    label_and_gate(r.gates, targets, optimize_records, fp32.size, {d.name for d in devices if d.transport.type.value == "local"}, gate_failures)

    report = {
        "schema_version": 1,
        "name": r.name,
        "version": r.version,
        "recipe": lr.path.name,
        "recipe_sha256": hashlib.sha256(lr.text.encode()).hexdigest(),
        "started": started,
        "finished": _now(),
        "source": {"format": r.model.format.value, "sha256": source.digest},
        "conversion": {**next((s for s in engine.lineage if s["name"] == "convert"), {}), "record": conversion.record},
        "stages": engine.lineage,
        "optimize": optimize_records,
        "evaluate": evaluation,
        "targets": targets,
        "gates": {"config": r.gates.model_dump(mode="json"), "passed": not gate_failures, "failures": gate_failures},
        "failures": failures,
        "toolchain": _toolchain(),
        "card": r.card.model_dump(mode="json") if r.card else None,  # MODEL_CARD.md (edgepack/model_card.py)
    }
    for tid, art in artifacts.items():  # where it lies in the bundle, not in the build host's cache
        targets[tid]["artifact"]["path"] = f"targets/{tid}/{art.path.name}"
        targets[tid]["size"] = size_split(art)  # the model file(s) apart from the folder's extras
    report = scrub_host_paths(report, pre_build.host_prefixes(lr, out_dir, cache.root))  # issue 11: no build-host paths
    built_ok = [tid for tid, e in targets.items() if e["status"] == "ok"]
    if gate_failures or not built_ok:
        report_path = out_dir.parent / f"{out_dir.name}.report.json"
        report = write_beside(report_path, report)  # + NAME.timings.json, NAME.report.html (edgepack/report_docs.py)
        if gate_failures:
            msgs = [f["message"] for f in gate_failures]
            raise GateFailedError(
                f"{len(msgs)} gate(s) failed: " + "; ".join(msgs),
                hint=f"report written to {report_path}; nothing was signed or published",
            )
        raise StageError("no target was built: " + "; ".join(failures), hint=f"report written to {report_path}")

    # Package, sign, publish
    from .bundle.manifest import write_bundle
    from .bundle.sign import sign_bundle, verify_bundle

    files = {}
    for tid in built_ok:
        art = artifacts[tid]
        files[f"targets/{tid}/{art.path.name}"] = art.path
    manifest = {
        "name": r.name,
        "version": r.version,
        "created": report["finished"],
        "recipe_sha256": report["recipe_sha256"],
        "source": report["source"],
        "calibration_sha256": data["calibration"].digest if "calibration" in data else None,
        "validation_sha256": data["validation"].digest if "validation" in data else None,
        "targets": {
            tid: {
                "type": targets[tid]["type"],
                "path": f"targets/{tid}/{artifacts[tid].path.name}",
                "format": artifacts[tid].format,
                "runtime": artifacts[tid].meta.get("runtime"),
                "precision": artifacts[tid].meta.get("precision"),
                "inputs": [s.to_json() for s in artifacts[tid].inputs],
                "outputs": [s.to_json() for s in artifacts[tid].outputs],
                "runner": artifact_contract(artifacts[tid], [i.name for i in r.model.inputs]).to_json(),  # edgepack/contract.py
                "toolchain": target_stages[tid].toolchain(),  # converters/runtimes this target's compile stage used
                **({"toolchain_env": targets[tid]["compile"]["environment"]} if "environment" in targets[tid].get("compile", {}) else {}),
                "validated_on": [d for d, v in targets[tid]["devices"].items() if v.get("status") == "ok"],
            }
            for tid in built_ok
        },
        "toolchain": report["toolchain"],
        "lineage": [{k: s[k] for k in ("name", "stage", "version", "key", "inputs", "outputs")} for s in engine.lineage],
    }
    manifest = scrub_host_paths(manifest, pre_build.host_prefixes(lr, out_dir, cache.root))
    progress.start("package + sign")
    t0 = time.perf_counter()
    from .bundle.fsutil import owned_temp_path
    from .bundle.provenance import PROVENANCE_NAME, write_provenance

    manifest["provenance"] = PROVENANCE_NAME  # signed in-toto SLSA statement, covered by the bundle signature too
    pkg = r.package
    cert = lr.resolve(pkg.certificate) if pkg.certificate else None
    chain = [lr.resolve(c) for c in pkg.certificate_chain]

    def sign_staged(staged: Path) -> None:  # sign and verify in the staging folder: only a signed bundle is swapped in
        sign_bundle(staged, key, certificate=cert, certificate_chain=chain, files_checked=True)  # write_bundle just hashed them
        failpoints.hit("sign.after_write")
        if cert is not None and chain:
            verify_bundle(staged, cert_chain=chain)  # the certificate must chain to the recipe's CA
        else:
            with tempfile.TemporaryDirectory(prefix="edgepack-pub-") as d:  # the public half of the key just used
                verify_bundle(staged, _public_pem(key, Path(d)))

    prov = write_provenance(owned_temp_path(out_dir, PROVENANCE_NAME), files, manifest, key,  # unique per build
                            started, report["finished"], lr.path.name)
    try:
        report, docs = bundle_docs(report, manifest, prov)  # summary first; timings.json, report.html, MODEL_CARD.md
        bundle = write_bundle(out_dir, {**files, PROVENANCE_NAME: prov}, manifest, report, before_swap=sign_staged, docs=docs)
    finally:
        prov.unlink(missing_ok=True)
    progress.done("package + sign", "ok", time.perf_counter() - t0)
    published = None
    not_published = partial_refusal(failures, opts.allow_partial or r.publish.allow_partial) if publish else None
    if not_published:
        progress.note(f"not published: {not_published}")
    elif publish:
        progress.start("publish")
        t0 = time.perf_counter()
        published = _publish(bundle, ref, opts.force)
        progress.done("publish", "ok", time.perf_counter() - t0, note=published.get("ref", ""))
    report_path = bundle / "report.json"
    status = "partial" if failures else "ok"
    return BuildResult(status, 5 if failures else 0, bundle, report_path, report, published, failures, not_published)


def partial_refusal(failures: list[str], allowed: bool) -> str | None:
    """Why a build with failed targets does not publish its version tag (None: publish)."""
    if not failures or allowed:
        return None
    return (f"{len(failures)} target(s)/stage(s) failed, so the version tag was not published "
            "(the bundle is written and signed; publish.allow_partial: true or --allow-partial publishes it)")


def _optimize(engine: Engine, lr: LoadedRecipe, fp32: Artifact, source: Artifact, data: dict) -> tuple[Artifact | None, list[dict], str | None]:
    """Run the recipe's passes in order: (optimized model or None when a pass failed, records, that pass's error).

    A pass that fails (an error inside it, a missed budget) stops the chain; its record (what it had
    measured, accuracy-aware sensitivities included) is kept. Bad input (a recipe problem) still stops the build.
    """
    r = lr.recipe
    model = fp32
    records: list[dict] = []  # each pass's effect, in recipe order (report.json "optimize")
    for i, cfg in enumerate(r.optimize):
        ctx = PassContext(i, lr.where("optimize", i), lr.dir.absolute(), r.model, r.gates, tuple(r.evaluate))
        try:
            pres = engine.run(f"optimize[{i}] {cfg.pass_}", make_pass(cfg, ctx), {"model": model, "source": source, **data})
        except BadInputError:
            raise
        except EdgepackError as e:
            records.append({"index": i, "pass": cfg.pass_, "status": "failed", "error": e.one_line(), **(getattr(e, "record", None) or {})})
            records.extend({"index": j, "pass": c.pass_, "status": "skipped", "reason": f"optimize[{i}] {cfg.pass_} failed"}
                           for j, c in enumerate(r.optimize) if j > i)
            return None, records, e.one_line()
        model = pres.outputs["model"]
        records.append({"index": i, "pass": cfg.pass_, "status": "ok", "cached": pres.cached, **pres.record})
    return model, records, None


def _target_model(target, fp32: Artifact, optimized: Artifact | None) -> Artifact | None:
    """The model a target compiles: the FP32 conversion for `input: fp32`, else the optimized one (None: a pass failed)."""
    return fp32 if target.input is TargetInput.FP32 else optimized


def fp32_evaluation(specs, reference: Artifact, validation: Artifact, base_dir: Path, declared: bool) -> dict | None:
    """report.json "evaluate": the primary metric and every metric on the FP32 reference (declared: from the
    recipe's evaluate:, else only the implicit top-1)."""
    from .data import read_data
    from .validate import read_outputs
    from .validate.metrics import primary_name
    from .validate.scoring import reference_metrics, report_entry

    if not specs:
        return None
    res = reference_metrics(specs, read_outputs(reference.path), read_data(validation.path)[1], base_dir)
    return {"primary": primary_name(specs), "declared": declared, "reference": {k: report_entry(v, None) for k, v in res.items()}}


def _public_key_for(private: Path) -> Path:
    return private.with_name(private.stem + ".pub.pem")


def _public_pem(private: Path, folder: Path) -> Path:
    """Write the public half of ``private`` to ``folder`` (a user's key may have no .pub.pem beside it)."""
    from cryptography.hazmat.primitives import serialization

    from .bundle.sign import load_private_key

    pem = load_private_key(private).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = folder / "public.pem"
    path.write_bytes(pem)
    return path


def _publish(bundle: Path, ref, force: bool = False) -> dict:
    from .registry import push

    return push(bundle, ref, force=force)


def _toolchain() -> dict:
    versions = package_versions(
        "onnx", "onnxruntime", "numpy", "torch", "onnxscript", "tensorflow", "tf2onnx", "onnx2tf",
        "ai-edge-litert", "openvino", "nncf", "coremltools", "model-signing",
    )
    versions = {k: v for k, v in versions.items() if v != "not-installed"}
    versions["edgepack"] = __version__
    versions["python"] = platform.python_version()
    versions["platform"] = f"{platform.system()}-{platform.machine()}"
    return versions
