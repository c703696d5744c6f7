"""The local executor (default): independent plan nodes run at once, up to ``jobs``, in threads of this process.

Heavy stages still run in their own spawned workers (``Stage.isolated``, edgepack/worker.py); a thread
here only waits for them. Honest timings: a node with ``resources.exclusive`` (validation on the build
host) starts only when nothing else runs and nothing starts while it runs; two nodes on one device never
overlap. Order (only wall time changes, never a result): ready nodes start longest remaining chain first (the
onnx2tf conversion before a quick compile), and an exclusive node waits while other work is ready or running, so
the host's timed validations run back to back once the cores have nothing else to do instead of idling a core.
With ``jobs > 1`` stages that change process-wide state (``Stage.process_global``: the quantize pass sets
the cwd for ONNX Runtime's temp files) run in a worker, so threads never share a changed cwd.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from ..errors import BadInputError, EdgepackError
from ..plan import Node, NodeResult, Plan, Results, Work, run_work


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def run_node(node: Node, results: Results, run=run_work) -> NodeResult:
    """prepare -> work -> finish for one node; errors become its result (BadInputError: fatal)."""
    try:
        item = node.prepare(results)
        if isinstance(item, Work):
            res = run(node.engine, item)  # the Ray executor passes its own
            item = NodeResult("ok", res.outputs, res.record, res.cached, res.key)
            if node.finish is not None:
                item = node.finish(item, results)
        return item
    except BadInputError as e:
        return NodeResult("fatal", error=e.one_line(), exc=e)
    except EdgepackError as e:
        return NodeResult("failed", error=e.one_line(), exc=e)
    except Exception as e:  # noqa: BLE001 - a bug in one node fails that node, named
        return NodeResult("failed", error=f"{node.id}: {e.__class__.__name__}: {e}", exc=e)


def chain_heights(plan: Plan) -> dict[str, int]:
    """Per node, the number of nodes on its longest chain of dependents (itself included): the start priority."""
    height: dict[str, int] = {}
    children: dict[str, list[str]] = {nid: [] for nid in plan.nodes}
    for nid, n in plan.nodes.items():
        for d in n.deps:
            children[d].append(nid)
    for nid in reversed(list(plan.nodes)):  # insertion order is a topological order
        height[nid] = 1 + max((height[c] for c in children[nid]), default=0)
    return height


class LocalExecutor:
    name = "local"

    def __init__(self, jobs: int | None = None):
        self.jobs = max(1, int(jobs)) if jobs else default_jobs()

    def run(self, plan: Plan) -> Results:
        for n in plan.nodes.values():
            n.engine.isolate_process_global = self.jobs > 1
        results: Results = {}
        running: dict[Future, Node] = {}
        stopped: dict[str, str] = {}  # recipe -> the fatal error that stopped it
        t0 = time.monotonic()
        lock = threading.Lock()
        height = chain_heights(plan)
        pending = sorted(plan.nodes.values(), key=lambda n: -height[n.id])  # stable: plan order among equals
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="edgepack-node") as pool:
            while pending or running:
                progressed = True
                while progressed:
                    progressed = False
                    shared_work = any(not o.resources.exclusive for o in running.values()) or any(
                        not n.resources.exclusive and all(d in results for d in n.deps) for n in pending)
                    for node in list(pending):
                        done = self._resolve_without_running(node, results, stopped)
                        if done is not None:
                            results[node.id] = done
                            pending.remove(node)
                            progressed = True
                        elif not (node.resources.exclusive and shared_work) and self._can_start(node, results, running):
                            pending.remove(node)
                            start = time.monotonic() - t0
                            fut = pool.submit(self._timed, node, dict(results), start, t0, lock)
                            running[fut] = node
                            progressed = True
                if not running:
                    if pending:  # cannot happen with a well-formed plan: say so rather than hang
                        raise RuntimeError(f"plan stalled at {[n.id for n in pending]}")
                    break
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    node = running.pop(fut)
                    res = fut.result()
                    results[node.id] = res
                    if res.status == "fatal":
                        stopped.setdefault(node.recipe, res.error or "stopped")
        return results

    @staticmethod
    def _timed(node: Node, results: Results, start: float, t0: float, lock) -> NodeResult:
        res = run_node(node, results)
        res.start_s, res.end_s, res.ran = start, time.monotonic() - t0, True
        return res

    @staticmethod
    def _resolve_without_running(node: Node, results: Results, stopped: dict[str, str]) -> NodeResult | None:
        if node.recipe in stopped:
            return NodeResult("skipped", error=f"not run: {stopped[node.recipe]}")
        if any(d not in results for d in node.deps):
            return None
        bad = next((d for d in node.deps if not results[d].ok), None)
        if bad is not None and not node.after_failure:
            return NodeResult("skipped", error=f"{bad} {results[bad].status}")
        return None

    def _can_start(self, node: Node, results: Results, running: dict[Future, Node]) -> bool:
        if any(d not in results for d in node.deps) or len(running) >= self.jobs:
            return False
        others = list(running.values())
        if any(o.resources.exclusive for o in others):
            return False
        if node.resources.exclusive:
            return not others
        dev = node.resources.device
        return dev is None or all(o.resources.device != dev for o in others)
