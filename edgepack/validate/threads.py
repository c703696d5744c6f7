"""Validation at every thread count a device profile lists (``threads: [1, 4]``).

Each count is its own validate stage (own cache key, own runner jobs, one after the other on the
device); the device's record keeps the first count's numbers at the top level (as a single count
always did) and every count's record under ``threads_runs``. Gates run on every count; a failure at
any of them fails the target, and its message names the count.
"""

from __future__ import annotations

from collections.abc import Callable

from ..engine import StageResult


def validate_at_threads(engine, name: str, dev, make_stage: Callable, inputs: dict) -> StageResult:
    """Run ``make_stage(profile)`` on ``dev`` at each of its thread counts; one merged StageResult."""
    counts = dev.thread_counts()
    if len(counts) == 1:
        return engine.run(name, make_stage(dev.at_threads(counts[0])), inputs)
    runs = {n: engine.run(f"{name} threads={n}", make_stage(dev.at_threads(n)), inputs) for n in counts}
    first = runs[counts[0]]
    record = {**first.record, "threads_runs": {str(n): res.record for n, res in runs.items()}}
    return StageResult(first.outputs, record, cached=all(r.cached for r in runs.values()),
                       seconds=sum(r.seconds for r in runs.values()), key=first.key)


def gates_at_threads(evaluate: Callable[[dict, str], dict], record: dict, device: str) -> dict:
    """``evaluate(record, where)`` on every thread count's record, merged (failures name the count)."""
    runs = record.get("threads_runs")
    if not runs:
        return evaluate(record, device)
    per = {n: evaluate(rec, f"{device} at {n} thread(s)") for n, rec in runs.items()}
    merged = {"passed": all(g["passed"] for g in per.values()), "per_threads": per}
    for k in ("failures", "waived", "checked"):
        merged[k] = [item for g in per.values() for item in g.get(k, [])]
    return merged
