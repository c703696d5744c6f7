"""`edgepack build`: recipes -> pre-flight -> one plan (edgepack/plan.py, build_nodes.py) -> an executor runs it
(edgepack/executors/) -> per recipe: report, gates, signed bundle, registry (build_assemble.py).

A target that fails to compile or validate fails alone; the others go on (exit code PARTIAL).
"""

from __future__ import annotations

import datetime as _dt
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from . import build_checks as pre_build
from .artifact import Artifact
from .cache import StageCache, edgepack_home
from .engine import Engine, Progress, package_versions
from .errors import BadInputError, EdgepackError, StageError
from .paths import check_writable
from .recipe import LoadedRecipe
from .targets import TargetContext, make_target
from .validate_plan import check_evaluation, onnx_outputs

if TYPE_CHECKING:
    from .plan import Plan

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
    jobs: int | None = None  # nodes at once (default: the number of cores); --jobs
    executor: str | None = None  # local (default), ray or ray://HOST:PORT; --executor
    progress: Callable[[dict], None] | None = None  # a callable taking one event dict per stage start/done/note (edgepack/progress_hooks.py)


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


@dataclass
class RecipeBuild:
    """One recipe's build: what the pre-flight resolved, and the state its plan nodes share."""

    lr: LoadedRecipe
    opts: BuildOptions
    out_dir: Path
    ref: object
    publish: bool
    key_path: Path
    devices: list
    target_stages: dict
    cache: StageCache
    engine: Engine
    progress: Progress
    started: str
    prefix: str = ""  # node id prefix when a plan holds several recipes ("NAME/")
    key: str = ""
    jobs: int = 1
    executor_name: str = "local"
    ids: list = field(default_factory=list)  # this recipe's node ids, in plan order
    pass_nodes: list = field(default_factory=list)
    served: dict = field(default_factory=dict)  # shared conversion node -> the targets it serves
    validations: dict = field(default_factory=dict)  # target -> device -> validate node ids (one per thread count)
    coverage: dict = field(default_factory=dict)
    source: Artifact | None = None
    torch_source: Artifact | None = None  # an hf source's torch.export program (the convert's 'program' output)
    bundle_files: dict = field(default_factory=dict)  # bundle folder -> artifact beside the targets (an hf source's tokenizer/)
    data: dict = field(default_factory=dict)  # role -> frozen data artifact
    label_sets: set = field(default_factory=set)
    out_shapes: dict = field(default_factory=dict)
    metric_specs: list = field(default_factory=list)
    plan: Plan | None = None

    @property
    def stream(self) -> bool:  # outputs [S, T, ...]
        v = self.lr.recipe.data.validation
        return v is not None and v.mode == "stream"

    def node_id(self, name: str) -> str:
        return self.prefix + name

    def own_nodes(self) -> list[str]:
        return list(self.ids)

    def plan_nodes_exclusive(self, node_id: str) -> bool:
        return bool(self.plan and self.plan.nodes[node_id].resources.exclusive)

    def pass_error(self, res) -> str | None:
        """The failed optimize pass's error line (None: no pass failed)."""
        return next((res[n].error for n in self.pass_nodes if n in res and res[n].status == "failed"), None)


def _preflight(lr: LoadedRecipe, opts: BuildOptions, out_dir: Path):
    """Everything that can be checked cheaply, before any long stage: (registry ref, publish?)."""
    r = lr.recipe
    registry = opts.registry or (r.publish.registry) or default_registry(r.name)
    publish = opts.publish and r.publish.enabled
    check_writable(out_dir, "package.output")
    pre_build.check_target_names(lr, opts.targets)
    from .preflight import preflight

    preflight(lr, [t for t in r.targets if not opts.targets or t.id in opts.targets])  # extras, pass data, ONNX inputs
    from .registry.refs import parse_ref

    ref = parse_ref(f"{registry}:{r.version}")
    if publish and ref.kind == "layout" and ref.path is not None:
        check_writable(Path(ref.path), "publish.registry")
    if publish:  # reachable, TLS and credentials; this version not published yet: fail now, not after the build
        from .registry.remote import check_release

        check_release(ref, r.name, force=opts.force)
    return ref, publish


def prepare_recipe(lr: LoadedRecipe, opts: BuildOptions, progress: Progress) -> RecipeBuild:
    """Pre-flight one recipe and set up its engine; raises EdgepackError (bad input) before any stage."""
    r = lr.recipe
    started = _now()
    out_dir = Path(opts.output) if opts.output else (lr.resolve(r.package.output) if r.package.output else Path("dist") / f"{r.name}-{r.version}")
    out_dir = out_dir.expanduser().absolute()
    ref, publish = _preflight(lr, opts, out_dir)
    key = _resolve_key(lr, opts, progress)
    from .bundle.sign import load_private_key

    load_private_key(key)
    from .devices import check_ready, load_profile

    devices = [load_profile(d, lr.dir)[0] for d in r.devices]
    for dev in devices:
        check_ready(dev)  # a browser device: Chromium and the onnxruntime-web files are here
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise BadInputError(f"two devices share a name in {names}", hint="give each device profile a distinct 'name'")
    check_evaluation(r, lr.where, outputs=onnx_outputs(r.model, lr), base_dir=lr.dir)  # ONNX sources: names/shapes from the file
    selected = [t for t in r.targets if not opts.targets or t.id in opts.targets]
    target_stages = {t.id: make_target(t, TargetContext(lr.where("targets", i), lr.dir, r.model)) for i, t in enumerate(r.targets) if t in selected}
    from .cache_store import default_store_url, store_for

    cache = StageCache(opts.cache_dir, enabled=opts.use_cache, store=store_for(opts.cache_store or default_store_url(),
                                                                          "--cache-store" if opts.cache_store else "EDGEPACK_CACHE_STORE"))
    pre_build.check_space(lr, out_dir, cache.root, len(selected), "--cache-dir" if opts.cache_dir else None)
    engine = Engine(cache, progress, log_dir=out_dir.parent / f".{out_dir.name}.logs")
    return RecipeBuild(lr, opts, out_dir, ref, publish, key, devices, target_stages, cache, engine, progress, started)


def make_build_plan(lrs: list[LoadedRecipe], opts: BuildOptions, progress: Progress):
    """Pre-flight every recipe and put their nodes into one plan: (plan, [RecipeBuild or the EdgepackError that stopped it])."""
    from .build_nodes import add_recipe_nodes
    from .executors.local import default_jobs
    from .plan import Plan

    if len(lrs) > 1 and opts.output:
        raise BadInputError("--output names one bundle folder; with several recipes each goes to its package.output (or dist/NAME-VERSION)",
                            hint="drop --output, or build one recipe at a time")
    plan = Plan()
    builds: list[RecipeBuild | EdgepackError] = []  # an error in place of a recipe that could not be planned
    for i, lr in enumerate(lrs):
        try:
            rb = prepare_recipe(lr, opts, progress)
        except EdgepackError as e:
            if len(lrs) == 1:
                raise
            builds.append(e)
            continue
        rb.key = f"{i}:{lr.recipe.name}"
        rb.prefix = f"{lr.recipe.name}-{lr.recipe.version}/" if len(lrs) > 1 else ""
        if len(lrs) > 1 and any(isinstance(b, RecipeBuild) and b.prefix == rb.prefix for b in builds):
            rb.prefix = f"{lr.recipe.name}-{lr.recipe.version}.{i}/"
        rb.jobs, rb.executor_name, rb.plan = opts.jobs or default_jobs(), opts.executor or "local", plan
        add_recipe_nodes(plan, rb)
        builds.append(rb)
    return plan, builds


def build(lr: LoadedRecipe, opts: BuildOptions | None = None) -> BuildResult:
    """Build one recipe (raises its EdgepackError: bad input, failed gates, a build error)."""
    out = build_many([lr], opts)[0]
    if isinstance(out, EdgepackError):
        raise out
    return out


def build_many(lrs: list[LoadedRecipe], opts: BuildOptions | None = None) -> list:
    """Build several recipes as one plan; per recipe a BuildResult or the EdgepackError that stopped it."""
    from .executors import get_executor

    opts = opts or BuildOptions()
    progress = Progress(quiet=opts.quiet)
    from .progress_hooks import attach

    attach(progress, opts.progress)  # also to the "edgepack" logger and the caller's callback
    executor = get_executor(opts.executor, opts.jobs)
    plan, builds = make_build_plan(lrs, opts, progress)
    for rb in builds:
        if isinstance(rb, RecipeBuild) and not opts.quiet:
            print(f"edgepack build {rb.lr.path} -> {rb.out_dir}", file=progress.stream)
    results = executor.run(plan)
    outs = []
    for rb in builds:
        try:
            outs.append(rb if isinstance(rb, EdgepackError) else _outcome(rb, results))
        except EdgepackError as e:
            if len(builds) == 1:
                raise
            outs.append(e)
    return outs


def _outcome(rb: RecipeBuild, results) -> BuildResult:
    fatal = next((results[n] for n in rb.ids if n in results and results[n].status == "fatal"), None)
    if fatal is not None:  # bad input found while running (a recipe problem): the recipe stopped there
        raise fatal.exc
    for name in ("gates", "package + sign", "publish"):
        o = results.get(rb.node_id(name))
        if o is None or o.status == "skipped":
            continue
        if not o.ok:
            raise o.exc if o.exc is not None else StageError(f"{o.error}", where=name)
    pkg, pub = results[rb.node_id("package + sign")].value, results[rb.node_id("publish")].value
    failures = results[rb.node_id("gates")].value["failures"]
    bundle = pkg["bundle"]
    return BuildResult("partial" if failures else "ok", 5 if failures else 0, bundle, bundle / "report.json", pkg["report"],
                       pub["published"], failures, pub["not_published"])


def partial_refusal(failures: list[str], allowed: bool) -> str | None:
    """Why a build with failed targets does not publish its version tag (None: publish)."""
    if not failures or allowed:
        return None
    return (f"{len(failures)} target(s)/stage(s) failed, so the version tag was not published "
            "(the bundle is written and signed; publish.allow_partial: true or --allow-partial publishes it)")


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
