"""Build progress for library users: every stage event goes to the ``edgepack`` logger and an optional callback.

``edgepack.build(recipe, progress=fn)`` calls ``fn(event)`` with a dict:
``{"event": "start", "stage": NAME}``, ``{"event": "done", "stage": NAME, "status": STATUS, "seconds": S, "note": TEXT}``,
``{"event": "note", "line": TEXT}`` or, while a stage runs,
``{"event": "update", "stage": NAME, "task": TASK, "completed": N, "total": M, "unit": UNIT, "fields": {...}}``
(calibration samples, training epochs with loss and metric, candidates, runs, converter phases, bytes).

Code inside a stage reports with :func:`report`; it needs no handle on the build. In the build process the
event goes to the sink the running build registered (edgepack/console.py: it names the stage started in
this thread); inside an isolated worker (edgepack/worker.py) it goes up the worker's result pipe to the
parent, which reports it again in the thread that waits for the worker, and a line goes to the worker's log.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger("edgepack")

ProgressCallback = Callable[[dict], None]
Sink = Callable[[dict], None]

_sink: Sink | None = None  # the process's fallback receiver (a worker's pipe; a build's "the one running stage")
_local = threading.local()  # per thread: a stack of sinks, one per stage started in this thread
_last_sent: dict[str, float] = {}  # thread:task -> time of the last event passed on (throttle)
_lock = threading.Lock()
MIN_INTERVAL_S = 0.1  # at most ten updates a second per task; first, last and changes of total always pass


def set_sink(sink: Sink | None) -> None:
    """The process-wide receiver for reports from threads that run no stage of their own."""
    global _sink
    with _lock:
        _sink = sink
        _last_sent.clear()


def set_fallback(sink: Sink) -> None:
    """Like set_sink, for a build's display: never replaces a worker's pipe (``set_sink(..., worker=True)``)."""
    if not getattr(_sink, "edgepack_worker", False) and _sink != sink:
        set_sink(sink)


def enter(sink: Sink) -> None:
    """A stage starts in this thread: its reports go to ``sink`` until :func:`leave`."""
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(sink)


def leave(sink: Sink) -> None:
    stack = getattr(_local, "stack", None) or []
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is sink:
            del stack[i]
            return


def _current() -> Sink | None:
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else _sink


def report(task: str, completed: float | None = None, total: float | None = None, unit: str = "", **fields) -> None:
    """Progress of a long step inside the running stage: ``report("epochs", 3, 10, loss=0.21, top1=0.94)``.

    ``unit`` "bytes" shows a transfer (sizes and rate); other units are counted. No-op without a sink."""
    sink = _current()
    if sink is None:
        return
    now = time.monotonic()
    final = total is not None and completed is not None and completed >= total
    key = f"{threading.get_ident()}:{task}"  # per thread: parallel stages report the same task names
    with _lock:
        last = _last_sent.get(key)
        if last is not None and not final and completed not in (None, 0) and now - last < MIN_INTERVAL_S:
            return
        _last_sent[key] = now
    event = {"task": task, "completed": completed, "total": total, "unit": unit,
             "fields": {k: v for k, v in fields.items() if v is not None}}
    try:
        sink(event)
    except Exception:  # noqa: BLE001 - progress must never break a build
        log.debug("progress sink failed", exc_info=True)


def format_update(event: dict) -> str:
    """One short text for an update event: ``epochs 3/10 loss=0.21 top1=0.94``."""
    done, total, unit = event.get("completed"), event.get("total"), event.get("unit") or ""
    if unit == "bytes":
        count = f"{_mb(done)}/{_mb(total)} MB" if total else f"{_mb(done)} MB"
    elif done is None:
        count = ""
    else:
        count = f"{_num(done)}/{_num(total)}" if total else _num(done)
    fields = " ".join(f"{k}={_num(v)}" for k, v in (event.get("fields") or {}).items())
    return " ".join(p for p in (event.get("task", ""), count, fields) if p)


def _num(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _mb(n) -> str:
    return f"{(n or 0) / 1e6:.1f}"


def attach(progress, callback: ProgressCallback | None = None) -> None:
    """Make ``progress`` (a console.Progress) also log each event and pass it to ``callback``."""
    start, done, note, update = progress.start, progress.done, progress.note, progress.update

    def emit(event: dict) -> None:
        if callback is not None:
            callback(event)

    def on_start(name: str, *a, **kw) -> None:
        start(name, *a, **kw)
        log.info("stage %s started", name)
        emit({"event": "start", "stage": name})

    def on_done(name: str, status: str, seconds: float, note: str = "", *a, **kw) -> None:
        done(name, status, seconds, note, *a, **kw)
        log.info("stage %s %s in %.1fs%s", name, status, seconds, f" ({note})" if note else "")
        emit({"event": "done", "stage": name, "status": status, "seconds": seconds, "note": note})

    def on_note(line: str, *a, **kw) -> None:
        note(line, *a, **kw)
        log.info("%s", line)
        emit({"event": "note", "line": line})

    def on_update(name: str, event: dict) -> None:
        update(name, event)
        log.debug("stage %s: %s", name, format_update(event))
        emit({"event": "update", "stage": name, **event})

    progress.start, progress.done, progress.note, progress.update = on_start, on_done, on_note, on_update
