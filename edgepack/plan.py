"""A build as data: nodes with declared inputs, dependencies and resources, run by an executor.

``edgepack/build_nodes.py`` makes the nodes of one recipe (data, convert, reference, each optimize pass,
the shared onnx2tf conversion, compile per target, validate per target x device x thread count, gates,
package + sign, publish); an executor (``edgepack/executors/``) runs them; ``edgepack/build_assemble.py``
turns the results into report, gates and bundle. The interface (what crosses to another process or
machine: a ``Work``, i.e. a picklable Stage and its input artifacts by digest) is in docs/design.md.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .artifact import Artifact
from .engine import Engine, Stage, StageResult


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    memory_mb: int = 1024
    device: str | None = None  # the device a validate node occupies: no other node on it meanwhile
    exclusive: bool = False  # nothing else runs meanwhile (validation on the build host)


@dataclass
class Work:
    """What a node runs: picklable (a remote executor ships it to another process or machine)."""

    name: str  # lineage, progress and log name ("compile ort-int8")
    stage: Stage
    inputs: dict[str, Artifact]
    deadline_s: float | None = None  # validate: the device's transport.run_timeout_s


@dataclass
class NodeResult:
    status: str  # ok | failed | skipped | fatal (bad input: the recipe stops)
    outputs: dict[str, Artifact] = field(default_factory=dict)
    record: dict = field(default_factory=dict)
    cached: bool = False
    key: str | None = None
    error: str | None = None  # one line
    exc: BaseException | None = None  # coordinator only
    value: Any = None  # what a coordinator-side node computed
    start_s: float = 0.0  # seconds since the plan started (set by the executor)
    end_s: float = 0.0
    ran: bool = False  # the executor ran this node (False: skipped because of a dependency, or not reached)

    def detail(self) -> dict:
        """``{"error_detail": stage, where, message, hint, ...}`` when an edgepack error failed the node, else {}."""
        fields = getattr(self.exc, "fields", None)
        return {"error_detail": fields()} if callable(fields) else {}

    @property
    def ok(self) -> bool:
        return self.status == "ok"


Results = dict[str, NodeResult]


@dataclass
class Node:
    id: str
    kind: str  # data|convert|reference|optimize|tf-convert|compile|validate|gates|package|publish
    deps: tuple[str, ...]
    prepare: Callable[[Results], "Work | NodeResult"]  # coordinator side, once every dep finished
    engine: Engine
    recipe: str = ""
    finish: Callable[[NodeResult, Results], NodeResult] | None = None  # coordinator side, after the work ran
    resources: Resources = field(default_factory=Resources)
    target: str | None = None
    device: str | None = None
    after_failure: bool = False  # prepare runs even when a dependency failed (it decides)


class Plan:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}

    def add(self, node: Node) -> Node:
        if node.id in self.nodes:
            raise ValueError(f"two plan nodes named {node.id!r}")
        missing = [d for d in node.deps if d not in self.nodes]
        if missing:  # insertion order stays a topological order
            raise ValueError(f"node {node.id!r} depends on unknown node(s) {missing}")
        self.nodes[node.id] = node
        return node

    def dependents(self, node_id: str) -> set[str]:
        """Every node that (transitively) depends on ``node_id``."""
        out: set[str] = set()
        for nid, n in self.nodes.items():
            if node_id in n.deps or out.intersection(n.deps):
                out.add(nid)
        return out

    def order(self) -> dict[str, int]:
        return {nid: i for i, nid in enumerate(self.nodes)}


def run_work(engine: Engine, work: Work) -> StageResult:
    """Run one node's work in this process (the local executor; a remote task runs the same call)."""
    if work.deadline_s is None:
        return engine.run(work.name, work.stage, work.inputs)
    import time

    from .devices import DEADLINE

    ctx = contextvars.copy_context()
    return ctx.run(_with_deadline, DEADLINE, time.monotonic() + work.deadline_s, engine, work)


def _with_deadline(var, deadline, engine, work):
    var.set(deadline)
    return engine.run(work.name, work.stage, work.inputs)


def record_lineage(engine: Engine, work: Work, res: StageResult) -> None:
    """What ``engine.run`` appends for a stage: a remote executor calls this in the coordinator."""
    inputs = {k: a for k, a in work.inputs.items() if work.stage.uses is None or k in work.stage.uses}
    engine.lineage.append({"name": work.name, "stage": work.stage.kind, "version": work.stage.version, "key": res.key,
                           "cached": res.cached, "seconds": round(res.seconds, 3),
                           "inputs": {k: a.digest for k, a in inputs.items()}, "outputs": {k: a.digest for k, a in res.outputs.items()}})


def overlaps(results: Results) -> dict[str, list[str]]:
    """For every node that ran: the other nodes whose run overlapped it in time."""
    ran = [(nid, r) for nid, r in results.items() if r.ran]
    out: dict[str, list[str]] = {}
    for nid, r in ran:
        out[nid] = [o for o, q in ran if o != nid and q.start_s < r.end_s and r.start_s < q.end_s]
    return out


def plan_rows(plan: Plan, results: Results) -> list[dict]:
    """report.json ``plan.nodes`` (in plan order): what ran, when, with what else."""
    over = overlaps(results)
    rows = []
    for nid, n in plan.nodes.items():
        r = results.get(nid)
        row: dict = {"id": nid, "kind": n.kind, "deps": list(n.deps), "status": r.status if r else "not-run"}
        if r is not None and r.ran:
            row.update(cached=r.cached, start_s=round(r.start_s, 3), end_s=round(r.end_s, 3), overlapped=over.get(nid, []))
        rows.append(row)
    return rows


def dry_run(plan: Plan) -> list[dict]:
    """``edgepack build --plan``: each node, its dependencies and whether it is cached, without running any
    stage. Keys are computed from the cached outputs of the nodes before it (data is read and hashed);
    a node after one that would run is "will run" with an unknown key."""
    results: Results = {}
    rows = []
    for nid, n in plan.nodes.items():
        row: dict = {"id": nid, "kind": n.kind, "deps": list(n.deps), "cached": None, "key": None}
        rows.append(row)
        if n.kind in ("gates", "package", "publish") or any(d not in results for d in n.deps):
            continue
        if not n.after_failure and any(not results[d].ok for d in n.deps):
            continue
        try:
            item = n.prepare(results)
        except Exception as e:  # noqa: BLE001 - shown, not raised: the real build reports it
            row["note"] = str(getattr(e, "message", e))
            continue
        if isinstance(item, NodeResult):
            results[nid] = item  # a coordinator-side step (data): not a cached stage
            continue
        inputs = {k: a for k, a in item.inputs.items() if item.stage.uses is None or k in item.stage.uses}
        key = n.engine.key_for(item.stage, inputs)
        row["key"] = key
        hit = n.engine.cache.get(key) if item.stage.cacheable else None
        row["cached"] = hit is not None
        if hit is not None:
            res = NodeResult("ok", hit[0], hit[1], cached=True, key=key)
            try:
                results[nid] = n.finish(res, results) if n.finish else res
            except Exception as e:  # noqa: BLE001
                row["note"] = str(getattr(e, "message", e))
    return rows
