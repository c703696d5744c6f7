"""The Ray executor: the nodes of one or many recipes as Ray tasks, artifacts through the shared cache store.

``edgepack build A.yaml B.yaml --executor ray`` (cluster from ``RAY_ADDRESS``, or a local one) or
``--executor ray://HOST:PORT`` (Ray Client). The scheduling loop is the local executor's (dependencies,
skips, honest-timing rules); only where a node's work runs differs:

- *remote* nodes (reference, optimize passes, the shared TFLite conversion, compile: cacheable stages
  that occupy no device) become Ray tasks with the node's resource request (``num_cpus``, ``memory``).
  The coordinator first looks the key up (local cache, then store: a warm build sends no task), then
  publishes each input to the store as an input entry (its files by digest). The task, on whichever
  node Ray picks, fetches the inputs from the store into that node's own cache (verified by digest),
  runs the same ``Engine.run`` (same stage code, same key), and the commit pushes the outputs to the
  store; the coordinator then fetches the entry by key (verified again) and records the lineage.
- everything else (data, convert: they read the recipe folder; validation: it occupies a device;
  gates, package, sign, publish) runs in the coordinator as with the local executor. A node with
  ``resources.exclusive`` (validation on this host) still waits until no other node, local or a Ray
  task, is running, and none starts while it runs; two nodes on one device never overlap.

A task whose worker or node dies is re-run by Ray elsewhere (``max_retries``); a stage's own error comes
back as that stage's one-line error. Entries are committed atomically on each node and verified on
every read, so a lost node never leaves a corrupted entry anywhere. A Hugging Face source is an input
entry like any other (``cache.put_input``), re-hashed on the node after the fetch (``CONTENT_ADDRESSED``).

Progress: the task's stage reports (``progress_hooks.report``) and engine notes are kept by a
``Recorder`` and returned with the result (or on the stage's error); the coordinator replays them into
the node's running stage before its ``done`` (not live: docs/design.md says why).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..artifact import Artifact, digest_path
from ..cache import put_input
from ..engine import Engine, Progress, StageResult, _identity
from ..errors import BadInputError, EdgepackError, StageError
from ..plan import Node, Results, Work, record_lineage, run_work
from .local import LocalExecutor, run_node

REMOTE_KINDS = ("reference", "optimize", "tf-convert", "compile")
CONTENT_ADDRESSED = ("hf",)  # inputs whose digest is their files' (digest_path): re-hashed on the worker after the fetch
RETRIES = 3  # re-runs of a task whose worker process or node died
_HINT = "pip install 'edgepack[ray]'; see docs/scale-out.md"


class RayExecutor(LocalExecutor):
    name = "ray"

    def __init__(self, address: str | None = None, jobs: int | None = None):
        # threads here mostly wait for Ray tasks; the cluster's resources bound the real work
        super().__init__(jobs or 64)
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self._published: dict[tuple, str] = {}
        self._fetchers: dict[Path, object] = {}
        self._task: Any = None  # the remote function, once connected

    def run(self, plan) -> Results:
        missing = sorted({n.recipe for n in plan.nodes.values() if n.engine.cache.store is None})
        if missing:
            raise BadInputError(f"--executor ray: no shared cache store for {', '.join(missing)} (artifacts move between nodes through it)",
                                hint="pass --cache-store oci://HOST[:PORT]/REPO (or file:///SHARED/PATH), or set EDGEPACK_CACHE_STORE")
        ray = _connect(self.address)
        self._task = ray.remote(run_ray_work)
        try:
            return super().run(plan)
        finally:
            ray.shutdown()

    def _timed(self, node: Node, results: Results, start: float, t0: float, lock):  # type: ignore[override]
        import time

        res = run_node(node, results, run=lambda engine, work: self._run_work(node, engine, work))
        res.start_s, res.end_s, res.ran = start, time.monotonic() - t0, True
        return res

    @staticmethod
    def remote(node: Node, work: Work) -> bool:
        r = node.resources
        return node.kind in REMOTE_KINDS and work.stage.cacheable and not r.exclusive and r.device is None

    def _run_work(self, node: Node, engine: Engine, work: Work) -> StageResult:
        if not self.remote(node, work):
            return run_work(engine, work)
        import time

        import ray

        cache, stage = self._fetcher(engine.cache), work.stage
        inputs = {k: a for k, a in work.inputs.items() if stage.uses is None or k in stage.uses}
        key = engine.key_for(stage, inputs)
        engine.progress.start(work.name)
        t0 = time.perf_counter()
        hit, source = None, "local"
        if engine.cache.enabled:
            with cache.locked(key):
                hit, _, source = cache.lookup_from(key)
        if hit is None:
            refs = {k: self._publish(cache, a) for k, a in inputs.items()}
            opts = {"num_cpus": node.resources.cpus, "memory": int(node.resources.memory_mb) << 20, "max_retries": RETRIES,
                    "retry_exceptions": False, "name": f"edgepack {node.id}"}
            try:
                out: dict = ray.get(self._task.options(**opts).remote(Work(work.name, stage, {}, work.deadline_s), refs,
                                                                 cache.store.url, engine.cache.enabled))
            except ray.exceptions.RayTaskError as e:  # the stage's own error, raised on the worker
                cause = getattr(e, "cause", None)
                replay(engine.progress, work.name, getattr(cause, "__dict__", {}).pop("events", None))
                engine.progress.done(work.name, "failed", time.perf_counter() - t0)
                if isinstance(cause, EdgepackError):
                    raise cause from None
                raise StageError(f"{type(cause or e).__name__}: {cause or e}", hint="rerun with --verbose", where=work.name) from e
            except ray.exceptions.RayError as e:  # worker or node lost more than RETRIES times, or unschedulable
                engine.progress.done(work.name, "failed", time.perf_counter() - t0)
                raise StageError(f"the Ray task was lost ({type(e).__name__}) after {RETRIES} re-runs",
                                 hint="check the cluster (ray status); nothing partial was cached, rerun the build", where=work.name) from e
            replay(engine.progress, work.name, out.get("events"))
            problem = None
            if out["key"] != key:
                problem = StageError(f"the Ray worker computed cache key {out['key'][:12]}, this host {key[:12]}",
                                     hint="the worker's edgepack or toolchain versions differ from this host's; use one image", where=work.name)
            else:
                with cache.locked(key):
                    hit, why, source = cache.lookup_from(key)  # fetched from the store, verified by digest
                if hit is None:
                    problem = StageError(f"no verified entry {key[:12]} in {cache.store.url} after its Ray task ({why or 'missing'})",
                                         hint="the store lost or changed the entry; rerun the build", where=work.name)
            if problem is not None:
                engine.progress.done(work.name, "failed", time.perf_counter() - t0)
                raise problem
            cached, where = out["cached"], "on Ray"
        else:
            cached, where = True, "from the shared store" if source == "store" else ""
        assert hit is not None  # a miss after the task raised above
        res = StageResult(hit[0], hit[1], cached=cached, seconds=time.perf_counter() - t0, key=key)
        engine.progress.done(work.name, "cached" if cached else "ok", res.seconds, note=where)
        record_lineage(engine, work, res)
        if cached and source == "store":
            engine.lineage[-1]["from_store"] = True
        elif where == "on Ray":
            engine.lineage[-1]["executor"] = "ray"
        return res

    def _fetcher(self, cache):
        """``cache`` with lookups on (``--no-cache`` re-runs stages, but their entries still come back through it)."""
        if cache.enabled:
            return cache
        if cache.root not in self._fetchers:
            from ..cache import StageCache

            self._fetchers[cache.root] = StageCache(cache.root, store=cache.store)
        return self._fetchers[cache.root]

    def _publish(self, cache, a: Artifact):
        """The store key of an input entry holding ``a``'s files (once per build), or the artifact
        itself when it has no files (nothing to move)."""
        if not a.path.exists():
            return a
        memo = (_identity(a), str(a.path), a.format)
        if memo not in self._published:
            self._published[memo] = put_input(cache, a)[0]
        return self._published[memo]


def run_ray_work(work: Work, refs: dict, store_url: str, use_cache: bool) -> dict:
    """The Ray task: inputs from the store (verified) into this node's cache, the stage, outputs pushed."""
    from ..cache import StageCache
    from ..cache_store import store_for
    from ..plan import run_work as _run

    store = store_for(store_url)
    fetch = StageCache(None, store=store)  # this node's own $EDGEPACK_CACHE
    inputs = {}
    for name, ref in refs.items():
        if isinstance(ref, Artifact):
            inputs[name] = ref
            continue
        with fetch.locked(ref):
            hit, problem, _ = fetch.lookup_from(ref)
        if hit is None:
            raise StageError(f"input '{name}' is not in {store_url} ({problem or 'missing'})",
                             hint="the store lost the entry, or this node cannot reach it", where=work.name)
        art = inputs[name] = hit[0]["artifact"]
        if art.format in CONTENT_ADDRESSED and digest_path(art.path) != art.digest:
            raise StageError(f"input '{name}' fetched from {store_url} does not hash to its digest {art.digest[:12]}",
                             hint="the store's entry was changed; delete it there and rerun the build", where=work.name)
    cache = StageCache(None, enabled=use_cache, store=store)
    progress = Recorder()
    try:
        res = _run(Engine(cache, progress), Work(work.name, work.stage, inputs, work.deadline_s))
    except EdgepackError as e:
        e.events = progress.events  # type: ignore[attr-defined]  # pickled with the error: replayed before its line
        raise
    if res.cached:
        cache.push(res.key)  # a hit from this node's own directory may predate the store
    return {"key": res.key, "cached": res.cached, "seconds": res.seconds, "events": progress.events}


class Recorder(Progress):
    """The task's progress: shows nothing, keeps the stage's events (progress_hooks.report updates, the
    engine's notes) for the coordinator, which replays them in order between the node's start and done."""

    def __init__(self):
        super().__init__(quiet=True)
        self.events: list[tuple[str, object]] = []

    def update(self, name: str, event: dict) -> None:
        super().update(name, event)
        self.events.append(("update", dict(event)))

    def note(self, line: str) -> None:
        self.events.append(("note", line))


def replay(progress, name: str, events) -> None:
    """A finished task's events into the coordinator's progress (display, ``edgepack`` logger, callback)."""
    for kind, event in events or ():
        if kind == "update" and isinstance(event, dict):
            progress.update(name, event)
        elif kind == "note":
            progress.note(str(event))


def _connect(address: str | None):
    try:
        import ray
    except ImportError as e:
        raise BadInputError(f"--executor ray: Ray is not installed ({e})", hint=_HINT) from e
    try:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, logging_level=logging.ERROR,
                 include_dashboard=False if address is None else None)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or "a local cluster"
        raise EdgepackError(f"--executor ray: cannot connect to {where}: {e}",
                            hint="start it (ray start --head) or set RAY_ADDRESS / --executor ray://HOST:PORT") from e
    return ray
