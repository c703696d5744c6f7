"""The rich columns of the live progress display (edgepack/console.py).

One rich Progress holds two kinds of rows, told apart by the task's ``kind`` field: a running stage
(spinner, name, elapsed) and a step inside it (name, bar, counts or bytes, ETA, fields such as loss)."""

from __future__ import annotations

from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column
from rich.text import Text


class _ByKind(ProgressColumn):
    """Render with the column given for the task's kind ("stage", "count", "bytes"); blank otherwise."""

    def __init__(self, **by_kind: ProgressColumn | None):
        super().__init__()
        self.by_kind = by_kind

    def render(self, task):
        col = self.by_kind.get(task.fields.get("kind", "stage"))
        return col.render(task) if col is not None else Text("")


class _Eta(TimeRemainingColumn):
    def render(self, task):
        if task.total is None or task.finished:
            return Text("")
        return Text("eta ") + super().render(task)


def bars(console) -> Progress:
    count = MofNCompleteColumn()
    return Progress(
        _ByKind(stage=SpinnerColumn()),
        TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis", min_width=12, max_width=48)),
        _ByKind(count=BarColumn(bar_width=20), bytes=BarColumn(bar_width=20)),
        _ByKind(stage=TimeElapsedColumn(), count=count, bytes=DownloadColumn()),
        _ByKind(count=_Eta(), bytes=_Eta()),
        TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis")),
        console=console, transient=True, refresh_per_second=8,
    )
