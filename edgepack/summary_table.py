"""The build summary a person reads on a terminal (rich): one row per target and device.

It fits the width it is given (the terminal's; 80 columns included): long target, device and status
texts fold inside their cells, so the columns stay aligned; a cell whose gate failed is marked ``!``
(red on a colour terminal); errors and flags follow the table, wrapped to the same width.
The rows come from report.summary_rows (also ``--json``'s ``summary``)."""

from __future__ import annotations

import io
import shutil
from typing import Any

# which column shows the value a gate judged (others mark the status cell)
GATE_COLUMN = {"min_cosine": "cosine", "max_p90_ms": "p90_ms", "max_p50_ms": "p50_ms", "max_size_mb": "size_mb",
               "max_accuracy_drop": "metric"}


TEXT_MIN = {"target": 8, "device": 6, "precision": 6, "status": 12}  # text columns fold down to this many characters


LEFT = {"target", "device", "precision", "status"}


def _cell(value: str, failed: bool, left: bool):
    """A cell; a failing one marked ``!`` on the side away from its alignment (numbers stay aligned)."""
    from rich.text import Text

    if not failed:
        return Text(value)
    return Text(f"{value} !" if left else f"! {value}", style="bold red")


def terminal_width(default: int = 120) -> int:
    """The terminal's width ($COLUMNS first); ``default`` when output is not a terminal."""
    return shutil.get_terminal_size((default, 24)).columns


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _failed_columns(report: dict, target: str, device: str) -> set[str]:
    dev = (((report.get("targets") or {}).get(target) or {}).get("devices") or {}).get(device) or {}
    cols = set()
    for f in (dev.get("gates") or {}).get("failures") or []:
        gate = str(f.get("gate", ""))
        cols.add("metric" if gate.startswith("metrics.") else GATE_COLUMN.get(gate, "status"))
    return cols


def render(report: dict, width: int | None = None, color: bool = False) -> str:
    """The summary as text ``width`` columns wide at most (default: the terminal's)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .report import primary_metric, summary_rows

    width = width or terminal_width()
    primary = primary_metric(report)
    col, key = (primary, "value") if primary else ("top-1", "top1")
    table: Any = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1, 0, 0))
    for name, justify in (("target", "left"), ("device", "left"), ("precision", "left"), ("size\nMB", "right"),
                          ("p50\nms", "right"), ("p90\nms", "right"), (col, "right"), ("cosine", "right"), ("status", "left")):
        left = justify == "left"
        table.add_column(name, justify="left" if left else "right", overflow="fold", no_wrap=not left,
                         min_width=TEXT_MIN.get(name) if left else None)
    notes: list[tuple[str, str]] = []
    flagged: set[str] = set()
    for r in summary_rows(report):
        bad = _failed_columns(report, r["target"], r["device"]) if r.get("status") != "ok" else set()
        status = str(r.get("status")) + (" (noisy)" if r.get("noisy") else "")
        if r.get("status") not in ("ok", None) and not bad:
            bad.add("status")
        cells = {"target": r["target"], "device": r["device"], "precision": str(r.get("precision") or "-"),
                 "size_mb": _fmt(r.get("size_mb"), ".3f"), "p50_ms": _fmt(r.get("p50_ms"), ".3f"),
                 "p90_ms": _fmt(r.get("p90_ms"), ".3f"), "metric": _fmt(r.get(key), ".4f"), "cosine": _fmt(r.get("cosine"), ".4f"),
                 "status": status}
        table.add_row(*(_cell(v, k in bad, k in LEFT) for k, v in cells.items()))
        if r.get("error") and r.get("status") != "ok":
            notes.append((r["target"] if r["device"] == "-" else f"{r['target']} @ {r['device']}", str(r["error"])))
        if r["target"] not in flagged:  # targets.<id>.flags: unchanged by its pass, slower/larger than FP32
            flagged.add(r["target"])
            notes.extend((r["target"], f"! {flag}") for flag in r.get("flags") or [])
    out = io.StringIO()
    console = Console(file=out, width=width, color_system="standard" if color else None, force_terminal=color,
                      highlight=False, emoji=False, legacy_windows=False)
    if not _fit(table, width):  # too narrow for the columns: one block per row
        table = _stacked(table)
    console.print(table)
    for where, note in notes:
        console.print(Text(f"  {where}: {note}"), overflow="fold")
    return "\n".join(line.rstrip() for line in out.getvalue().rstrip("\n").splitlines())


def _fit(table, width: int) -> bool:
    """Set each column's width so the table is at most ``width`` wide: numbers keep their widest cell,
    text columns share the rest (folding down to TEXT_MIN). False: too narrow even so."""
    def natural(c) -> int:
        return max([len(str(x)) for x in c.cells] + [len(h) for h in str(c.header).split("\n")])

    numbers = [c for c in table.columns if c.no_wrap]
    texts = [c for c in table.columns if not c.no_wrap]
    avail = width - 2 * (len(table.columns) - 1) - sum(natural(c) for c in numbers)
    need = [natural(c) for c in texts]
    low = [min(n, TEXT_MIN.get(str(c.header), 6)) for c, n in zip(texts, need)]
    if avail < sum(low):
        return False
    for c in numbers:
        c.width = natural(c)
    if sum(need) <= avail:
        widths = need
    else:  # every text column gets its floor, then a share of what is left in proportion to what it lacks
        spare, lack = avail - sum(low), [n - lo for n, lo in zip(need, low)]
        widths = [lo + spare * la // max(sum(lack), 1) for lo, la in zip(low, lack)]
    for c, w in zip(texts, widths):
        c.width = w
    return True


def _stacked(table):
    """The same cells as ``name: value`` lines, one block per row (for widths too narrow for the columns)."""
    from rich.console import Group
    from rich.text import Text

    heads = [c.header.replace("\n", " ") for c in table.columns]
    blocks = []
    for i in range(table.row_count):
        for h, c in zip(heads, table.columns):
            cell = list(c.cells)[i]
            blocks.append(Text(f"{h}: ") + cell)
        blocks.append(Text(""))
    return Group(*blocks)
