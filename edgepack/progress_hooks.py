"""Build progress for library users: every stage event goes to the ``edgepack`` logger and an optional callback.

``edgepack.build(recipe, progress=fn)`` calls ``fn(event)`` with a dict:
``{"event": "start", "stage": NAME}``, ``{"event": "done", "stage": NAME, "status": STATUS, "seconds": S, "note": TEXT}``
or ``{"event": "note", "line": TEXT}``. Terminal output (engine.Progress) is unchanged.
"""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger("edgepack")

ProgressCallback = Callable[[dict], None]


def attach(progress, callback: ProgressCallback | None = None) -> None:
    """Make ``progress`` (an engine.Progress) also log each event and pass it to ``callback``."""
    start, done, note = progress.start, progress.done, progress.note

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

    progress.start, progress.done, progress.note = on_start, on_done, on_note
