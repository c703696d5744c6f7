"""What a build shows while it runs (docs/cli.md "Progress").

On a terminal: every running stage on its own line with a spinner and its elapsed time (several run at
once under a parallel executor), and under it a bar per long step the stage reports
(edgepack/progress_hooks.py ``report``: calibration samples, epochs with loss and metric, candidates,
runs, converter phases, bytes) with counts and ETA; a finished stage leaves one line above them.
Elsewhere (CI, ``| tee``): one line per finished stage and, every ``EDGEPACK_HEARTBEAT_S`` seconds
(30), a heartbeat line per running stage with its last reported step. ``quiet`` prints nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import time
from dataclasses import dataclass, field

from . import progress_hooks

HEARTBEAT_ENV = "EDGEPACK_HEARTBEAT_S"


def heartbeat_seconds() -> float:
    try:
        value = float(os.environ.get(HEARTBEAT_ENV, "30"))
    except ValueError:
        value = 30.0
    return value if value > 0 else 30.0


@dataclass
class _Running:
    t0: float
    sink: progress_hooks.Sink
    next_beat: float
    task_id: object = None
    bars: dict = field(default_factory=dict)  # task -> rich task id
    last: dict | None = None  # the last update event


class Progress:
    """Stage start/done/note/update events rendered for a person (thread-safe)."""

    def __init__(self, quiet: bool = False, stream=None, heartbeat_s: float | None = None):
        self.quiet = quiet
        self.stream = stream or sys.stdout
        self.live = not quiet and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.heartbeat_s = heartbeat_s or heartbeat_seconds()
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._running: dict[str, _Running] = {}
        self._bars = None  # rich.progress.Progress while a stage runs on a terminal
        self._beating = False

    # -- events ---------------------------------------------------------------------------------------
    def start(self, name: str) -> None:
        sink = lambda event, name=name: self.update(name, event)  # noqa: E731 - looked up late: attach() wraps update
        progress_hooks.enter(sink)
        progress_hooks.set_fallback(self._orphan)  # reports from threads that started no stage
        now = time.monotonic()
        with self._lock:
            run = self._running[name] = _Running(now, sink, now + self.heartbeat_s)
            if self.quiet:
                return
            if self.live:
                run.task_id = self._ensure_bars().add_task(name, total=None, kind="stage", info="")
            else:
                self._start_heartbeat()
            self._wake.notify_all()

    def done(self, name: str, status: str, seconds: float, note: str = "") -> None:
        with self._lock:
            run = self._running.pop(name, None)
            if run is not None:
                progress_hooks.leave(run.sink)
            if self.quiet:
                return
            extra = f"  {note}" if note else ""
            self._line(f"  {name:<34} {status:<7} {seconds:6.1f}s{extra}", "red" if status == "failed" else None)
            if self._bars is not None and run is not None:
                for tid in [run.task_id, *run.bars.values()]:
                    if tid is not None:
                        self._bars.remove_task(tid)
            if not self._running:
                self._stop_bars()
            self._wake.notify_all()

    def note(self, line: str) -> None:
        """A line about what the build did on its own (e.g. evicted a cache entry)."""
        if not self.quiet:
            with self._lock:
                self._line(f"  {line}")

    def update(self, name: str, event: dict) -> None:
        """A step inside a running stage (progress_hooks.report); shown as a bar on a terminal."""
        with self._lock:
            run = self._running.get(name)
            if run is None:
                return
            run.last = event
            if self.quiet or self._bars is None:
                return
            task = event.get("task", "")
            info = " ".join(f"{k} {progress_hooks._num(v)}" for k, v in (event.get("fields") or {}).items())
            kind = "bytes" if event.get("unit") == "bytes" else "count"
            if task not in run.bars:
                run.bars[task] = self._bars.add_task(f"  {task}", total=event.get("total"), kind=kind, info=info)
            self._bars.update(run.bars[task], completed=event.get("completed") or 0, total=event.get("total"), info=info,
                              refresh=True)  # reports are throttled (progress_hooks): each one is a frame

    @contextlib.contextmanager
    def running(self, name: str):
        """``with progress.running("publish") as step:`` start, then done ok (``step["note"]``) or failed."""
        self.start(name)
        t0, step = time.perf_counter(), {"note": ""}
        try:
            yield step
        except BaseException:
            self.done(name, "failed", time.perf_counter() - t0)
            raise
        self.done(name, "ok", time.perf_counter() - t0, note=step["note"])

    def _orphan(self, event: dict) -> None:
        """A report from a thread that started no stage: it belongs to the one running stage, if only one runs."""
        with self._lock:
            names = list(self._running)
        if len(names) == 1:
            self.update(names[0], event)

    # -- output ---------------------------------------------------------------------------------------
    def _line(self, text: str, style: str | None = None) -> None:
        if self._bars is not None:  # above the live bars
            from rich.text import Text

            self._bars.console.print(Text(text, style=style or ""), soft_wrap=True)
        else:
            print(text, file=self.stream, flush=True)

    def _ensure_bars(self):
        if self._bars is None:
            from rich.console import Console

            from .console_columns import bars

            self._bars = bars(Console(file=self.stream, highlight=False))
            self._bars.start()
            atexit.register(self._stop_bars)
        return self._bars

    def _stop_bars(self) -> None:
        with self._lock:
            bars, self._bars = self._bars, None
        if bars is not None:
            bars.stop()

    def _start_heartbeat(self) -> None:
        if not self._beating:
            self._beating = True
            threading.Thread(target=self._heartbeat, name="edgepack-heartbeat", daemon=True).start()

    def _heartbeat(self) -> None:
        """Non-terminal output: every heartbeat_s, one line per stage still running."""
        with self._lock:
            while self._running:
                now = time.monotonic()
                due = [(n, r) for n, r in self._running.items() if r.next_beat <= now]
                for name, run in due:
                    step = f"  ({progress_hooks.format_update(run.last)})" if run.last else ""
                    self._line(f"  {name:<34} running {now - run.t0:6.0f}s{step}")
                    run.next_beat = now + self.heartbeat_s
                wait = min(r.next_beat for r in self._running.values()) - time.monotonic()
                self._wake.wait(timeout=max(wait, 0.05))
            self._beating = False


@contextlib.contextmanager
def transfer(name: str):
    """A registry command's live bars (bytes up or down) on a terminal; nothing elsewhere (its result line says it)."""
    progress = Progress(quiet=not (hasattr(sys.stdout, "isatty") and sys.stdout.isatty()))
    progress.start(name)
    t0, status = time.monotonic(), "failed"
    try:
        yield progress
        status = "ok"
    finally:
        progress.done(name, status, time.monotonic() - t0)
