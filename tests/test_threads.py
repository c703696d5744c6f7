"""Device profiles listing thread counts: validation and gates at every count; a single count still works."""

from __future__ import annotations

import json

import pytest

from conftest import TINY_RECIPE, run_cli
from edgepack.devices import load_profile
from edgepack.errors import BadInputError
from edgepack.recipe import Gates
from edgepack.validate.gates import evaluate
from edgepack.validate.threads import gates_at_threads

PROFILE = "name: {name}\ntransport: {{type: local}}\nthreads: {threads}\n"


def test_every_listed_count_is_validated_and_gated(tiny_recipe, tmp_path):
    d = tiny_recipe.parent
    (d / "t12.yaml").write_text(PROFILE.format(name="t12", threads="[1, 2]"))
    (d / "t2.yaml").write_text(PROFILE.format(name="t2", threads="2"))
    tiny_recipe.write_text(TINY_RECIPE.replace("gates:\n  min_cosine: 0.9\n", "devices: [t12.yaml, t2.yaml]\ngates:\n  min_cosine: 0.9\n  max_p90_ms: 0.000001\n"))
    res = run_cli("build", tiny_recipe, "-o", tmp_path / "b", "--no-publish", cwd=d)
    assert res.returncode == 3, res.stderr[-2000:]
    report = json.loads((tmp_path / "b.report.json").read_text())
    t12 = report["targets"]["ort"]["devices"]["t12"]
    runs = t12["threads_runs"]
    assert sorted(runs) == ["1", "2"] and t12["threads"] == 1
    for n, rec in runs.items():
        assert rec["threads"] == int(n) and rec["protocol"]["threads"] == int(n)
        assert rec["latency"]["p50_ms"] > 0 and rec["accuracy"]["fidelity"]["cosine"] > 0.9
    assert sorted(t12["gates"]["per_threads"]) == ["1", "2"]
    msgs = [f["message"] for f in report["gates"]["failures"]]
    assert any(m.startswith("ort on t12 at 1 thread(s): p90 latency") for m in msgs)
    assert any(m.startswith("ort on t12 at 2 thread(s): p90 latency") for m in msgs)
    # a single count: one run at that count, no per-count section
    t2 = report["targets"]["ort"]["devices"]["t2"]
    assert t2["threads"] == 2 and "threads_runs" not in t2 and any(m.startswith("ort on t2: p90") for m in msgs)
    assert {s["name"] for s in report["stages"] if s["name"].startswith("validate")} == {
        "validate ort @ t12 threads=1", "validate ort @ t12 threads=2", "validate ort @ t2"}


def test_a_failure_at_one_count_fails_the_target():
    good = {"latency": {"p90_ms": 5.0}, "accuracy": {"fidelity": {"cosine": 0.999}}}
    bad = {"latency": {"p90_ms": 5.0}, "accuracy": {"fidelity": {"cosine": 0.5}}}
    record = {**good, "threads_runs": {"1": good, "4": bad}}
    g = gates_at_threads(lambda rec, where: evaluate(Gates(min_cosine=0.9), "ort", where, rec, 1000), record, "pi")
    assert not g["passed"] and g["per_threads"]["1"]["passed"] and not g["per_threads"]["4"]["passed"]
    assert len(g["failures"]) == 1 and g["failures"][0]["message"].startswith("ort on pi at 4 thread(s): ")


@pytest.mark.parametrize("bad", ["[]", "[0, 2]", "[2, 2]"])
def test_bad_thread_lists_name_the_field(tmp_path, bad):
    p = tmp_path / "dev.yaml"
    p.write_text(PROFILE.format(name="dev", threads=bad))
    with pytest.raises(BadInputError, match=r"dev.yaml: threads"):
        load_profile(str(p))


def test_single_count_pins_the_protocol(tmp_path):
    p = tmp_path / "dev.yaml"
    p.write_text(PROFILE.format(name="dev", threads="2"))
    prof = load_profile(str(p))[0]
    assert prof.thread_counts() == [2] and prof.at_threads(2).benchmark["threads"] == 2
    assert load_profile("local")[0].thread_counts() == [None]


def test_bench_runs_every_listed_count_unless_threads_is_given(tmp_path):
    from sshd import tiny_bundle

    from edgepack.bench import run_bench

    bundle = tiny_bundle(tmp_path / "b")
    prof = tmp_path / "t12.yaml"
    prof.write_text(PROFILE.format(name="t12", threads="[1, 2]"))
    quick = {"runs": 5, "min_seconds": 0, "warmup_runs": 1}
    t = run_bench(str(bundle), [str(prof)], overrides=quick)["devices"]["t12"]["targets"]["ort"]
    assert t["threads"] == 1 and {n: r["threads"] for n, r in t["threads_runs"].items()} == {"1": 1, "2": 2}
    t = run_bench(str(bundle), [str(prof)], overrides={**quick, "threads": 2})["devices"]["t12"]["targets"]["ort"]
    assert t["threads"] == 2 and "threads_runs" not in t
