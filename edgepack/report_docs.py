"""The report files a build writes: report.json (summary first), timings.json, report.html, MODEL_CARD.md.

In a bundle they are ordinary bundle files (listed with their sha256 in edgepack.json and signed, so
`edgepack verify` covers them); a build that failed its gates writes the same files beside the bundle folder
(``NAME.report.json``, ``NAME.timings.json``, ``NAME.report.html``), unsigned.
"""

from __future__ import annotations

import json
from pathlib import Path

from .model_card import CARD_NAME
from .report_html import HTML_NAME
from .report_summary import TIMINGS_NAME, finalize

DOC_NAMES = (TIMINGS_NAME, HTML_NAME, CARD_NAME)  # bundle files next to report.json (reserved names)


def dump_compact(obj) -> bytes:
    """timings.json: every raw sample, for programs (one line; indented it was 4x larger and 10x slower to write)."""
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def bundle_docs(report: dict, manifest: dict, provenance: Path | None = None) -> tuple[dict, dict[str, bytes]]:
    """(the report as written to report.json, {bundle path: bytes} of timings.json, report.html, MODEL_CARD.md)."""
    from . import model_card, report_html

    final, timings = finalize(report)
    return final, {
        TIMINGS_NAME: dump_compact(timings),
        HTML_NAME: report_html.render(final, timings, manifest, _statement(provenance)).encode(),
        CARD_NAME: model_card.render(final, manifest).encode(),
    }


def _statement(provenance: Path | None) -> dict | None:
    """The in-toto statement inside provenance.json's DSSE envelope (None: absent or unreadable)."""
    import base64

    if provenance is None:
        return None
    try:
        doc = json.loads(base64.b64decode(json.loads(Path(provenance).read_text())["payload"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return doc if isinstance(doc, dict) else None


def write_beside(report_path: Path, report: dict) -> dict:
    """A failed build's report files beside its (absent) bundle: NAME.report.json, NAME.timings.json, NAME.report.html."""
    from . import report_html
    from .bundle.fsutil import atomic_write_bytes
    from .paths import write_json_atomic

    report_path = Path(report_path)
    stem = report_path.name.removesuffix(".report.json")
    final, timings = finalize(report, f"{stem}.timings.json")
    write_json_atomic(report_path.with_name(f"{stem}.timings.json"), timings)
    atomic_write_bytes(report_path.with_name(f"{stem}.report.html"), report_html.render(final, timings).encode())
    write_json_atomic(report_path, final)
    return final
