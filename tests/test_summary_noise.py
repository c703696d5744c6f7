"""The summary table fits the terminal (80 and 200 columns, long names, failing cells marked), the
timing protocol honours min_seconds and bounds warm-up, `noisy` follows the measured spread, and
`pull --device` breaks ties within the measured noise by precision and size (issue 13 item 2)."""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

import numpy as np
import pytest

from edgepack.devices.runner import is_noisy, stats, time_runs, warm_up
from edgepack.registry.select import choose_target
from edgepack.summary_table import render

LONG_TARGET = "ort-int8-per-channel-qdq"  # 24 characters
LONG_DEVICE = "raspberry-pi-4-model-b-8gb-bookworm"


def _dev(p50, p90, status="ok", gates_failed=(), noise=0.0):
    return {"status": status, "latency": {"p50_ms": p50, "p90_ms": p90, "p50_noise_ms": noise},
            "accuracy": {"top1": 0.97, "fidelity": {"cosine": 0.99912}}, "noisy": False,
            "gates": {"passed": not gates_failed, "failures": [{"gate": g, "message": g} for g in gates_failed]}}


def _report():
    return {"targets": {
        LONG_TARGET: {"status": "gates-failed", "precision": "int8-static", "size_bytes": 1234567,
                      "flags": ["slower than its FP32 counterpart on local: p50 ratio 1.31 (gates.max_latency_ratio_vs_fp32)"],
                      "devices": {"local": _dev(0.031, 0.045, "gates-failed", ("max_p90_ms",)),
                                  LONG_DEVICE: _dev(1.25, 2.5)}},
        "ort-fp32": {"status": "ok", "precision": "fp32", "size_bytes": 4567890, "devices": {"local": _dev(0.025, 0.030)}},
        "broken": {"status": "failed", "precision": None, "error": "compile broken: onnx2tf failed at node /conv3 (Conv): " + "x" * 150,
                   "devices": {}},
    }}


def _columns_of(line: str, values: list[str]) -> list[int]:
    """End positions of each value in a table line (right-aligned numbers end at their column's edge)."""
    pos, out = 0, []
    for v in values:
        i = line.index(v, pos)
        out.append(i + len(v))
        pos = i + len(v)
    return out


@pytest.mark.parametrize("width", [80, 200])
def test_table_fits_the_width_and_keeps_columns_aligned(width):
    text = render(_report(), width=width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, text
    header = next(i for i, line in enumerate(lines) if line.startswith("target"))
    fp32 = next(line for line in lines if line.startswith("ort-fp32"))
    first = next(line for line in lines if line.startswith(LONG_TARGET[:8]))
    # the size, p50 and p90 cells of two rows end in the same columns, whatever their names' length
    assert _columns_of(fp32, ["4.568", "0.025", "0.030"]) == _columns_of(first, ["1.235", "0.031", "0.045"]), text
    assert "! 0.045" in first, text  # the p90 that failed max_p90_ms is marked ...
    assert len(re.findall(r"! \d", text)) == 1 and "gates-failed" in text and "failed !" in text  # ... only it, and the failed status
    if width == 200:
        assert LONG_TARGET in text and LONG_DEVICE in text  # room enough: nothing folded
        assert len(lines[header + 2:]) >= 4
    dev_at, prec_at = lines[header].index("device"), first.index("int8-s")
    body = [line for line in lines[header + 2:] if not re.match(r"  \S", line)]  # the rows, not the notes after them
    assert "".join(line[:dev_at].strip() for line in body).count(LONG_TARGET) == 2, text  # folded in its column, never cut
    assert LONG_DEVICE in "".join(line[dev_at:prec_at].strip() for line in body), text
    flat = re.sub(r"\s+", "", text)
    assert "onnx2tffailedatnode/conv3(Conv)" in flat and "p50ratio1.31" in flat  # errors and flags after the table


def test_table_narrower_than_its_columns_becomes_blocks():
    text = render(_report(), width=40)
    assert max(len(line) for line in text.splitlines()) <= 40
    assert "p90 ms: ! 0.045" in text and f"target: {LONG_TARGET}" in text


def test_timing_honours_min_seconds_and_says_when_max_runs_wins():
    timed, samples = time_runs(lambda feeds: None, None, runs=5, min_seconds=0.05, max_runs=10**7)
    assert timed["elapsed_s"] >= 0.05 and timed["stopped_by"] == "min_seconds" and len(samples) == timed["runs"] > 5
    timed, samples = time_runs(lambda feeds: None, None, runs=5, min_seconds=30, max_runs=200)
    assert timed["stopped_by"] == "max_runs" and len(samples) == 200 and "before min_seconds (30 s)" in timed["note"]
    timed, _ = time_runs(lambda feeds: time.sleep(0.002), None, runs=3, min_seconds=0, max_runs=100)
    assert timed["stopped_by"] == "runs" and timed["runs"] == 3 and "note" not in timed


def test_warm_up_is_bounded_by_count_and_by_time():
    by_time = warm_up(lambda feeds: None, None, max_runs=10**9, max_seconds=0.05)
    assert by_time["stopped_by"] == "warmup_seconds" and by_time["runs"] < 10**9
    slow = warm_up(lambda feeds: time.sleep(0.03), None, max_runs=100, max_seconds=0.05)
    assert slow["stopped_by"] == "warmup_seconds" and slow["runs"] <= 3  # a slow model: not 100 runs
    by_count = warm_up(lambda feeds: None, None, max_runs=7, max_seconds=60)
    assert by_count == {**by_count, "runs": 7, "stopped_by": "warmup_runs"}
    assert warm_up(lambda feeds: None, None, max_runs=0, max_seconds=1)["runs"] == 0


def test_noisy_follows_the_spread_not_outliers():
    steady = np.r_[np.full(990, 1.0), np.full(10, 100.0)]  # rare preemptions: cv far above 1, p50..p90 flat
    s = stats(steady)
    assert s["cv"] > 1 and s["spread"] == 0.0 and not is_noisy(s, 0.25)
    wide = np.linspace(1.0, 2.0, 1000)  # the slowest tenth 80% above the median
    w = stats(wide)
    assert w["spread"] == pytest.approx((1.9 - 1.5) / 1.5, rel=1e-3) and is_noisy(w, 0.25)
    drift = stats(np.r_[np.full(500, 1.0), np.full(500, 1.2)])  # the median moved halfway through
    assert drift["p50_noise_ms"] == pytest.approx(0.1)


def _bundle(lat: dict, precision: dict, size: dict):
    config = {"targets": {t: {"runtime": "onnxruntime", "precision": precision[t], "validated_on": ["pi"]} for t in lat}}
    report = {"targets": {t: {"size_bytes": size[t], "devices": {"pi": {"latency": {"p50_ms": p, "p50_noise_ms": n}}}}
                          for t, (p, n) in lat.items()}}
    return config, report


def test_pull_breaks_ties_within_the_noise_by_precision_then_size():
    device = SimpleNamespace(name="pi", runtimes=["onnxruntime"])
    # fp32 is 1 µs faster, within the noise: the int8 target ships
    config, report = _bundle({"fp32": (0.030, 0.002), "int8": (0.031, 0.002)}, {"fp32": "fp32", "int8": "int8"},
                             {"fp32": 400, "int8": 100})
    tid, why = choose_target(config, report, device, "pull")
    assert tid == "int8" and set(why["tied_within_noise"]) == {"fp32", "int8"}
    # clearly faster (beyond the noise and the 2% floor): speed wins
    config, report = _bundle({"fp32": (0.020, 0.0005), "int8": (0.031, 0.0005)}, {"fp32": "fp32", "int8": "int8"},
                             {"fp32": 400, "int8": 100})
    assert choose_target(config, report, device, "pull")[0] == "fp32"
    # same precision, tied: the smaller file
    config, report = _bundle({"a": (1.00, 0.0), "b": (1.01, 0.0)}, {"a": "int8", "b": "int8"}, {"a": 900, "b": 300})
    tid, why = choose_target(config, report, device, "pull")
    assert tid == "b" and why["p50_ms"] == 1.01
