"""The build as a plan (edgepack/plan.py) run by the local executor (edgepack/executors/local.py):
nodes and edges, `--plan`, failures reaching only dependents, parallel compiles, validations that
overlap nothing, identical artifacts for every --jobs, several recipes in one command."""

from __future__ import annotations

import json
import threading
import time

from conftest import TINY_RECIPE, run_cli

from edgepack.engine import Engine
from edgepack.plan import Node, NodeResult, Plan, Resources

TWO_PASSES = """optimize:
  - pass: prune
    method: magnitude
    sparsity: 0.2
  - pass: quantize
    mode: static
"""
THREE_TARGETS = """targets:
  - type: onnxruntime
    name: ort
  - type: onnxruntime
    name: ort-fp32
    input: fp32
  - type: tflite
    name: tfl-int8
    precision: int8
"""
PARALLEL_TARGETS = """targets:
  - type: onnxruntime
    name: ort-a
    input: fp32
  - type: onnxruntime
    name: ort-b
    input: fp32
    precision: fp32-label
"""


def _with(recipe, optimize=None, targets=None, name=None):
    text = TINY_RECIPE
    if optimize is not None:
        text = text.replace("optimize:\n  - pass: quantize\n    mode: static\n", optimize)
    if targets is not None:
        text = text.replace("targets:\n  - type: onnxruntime\n    name: ort\n", targets)
    if name is not None:
        text = text.replace("name: tiny\n", f"name: {name}\n", 1)
    recipe.write_text(text)
    return recipe


def test_nodes_and_edges_for_two_passes_and_three_targets(tiny_recipe):
    from edgepack.engine import Progress
    from edgepack.pipeline import BuildOptions, make_build_plan
    from edgepack.recipe import load_recipe

    _with(tiny_recipe, TWO_PASSES, THREE_TARGETS)
    plan, _ = make_build_plan([load_recipe(tiny_recipe)], BuildOptions(publish=False, jobs=2), Progress(quiet=True))
    deps = {nid: set(n.deps) for nid, n in plan.nodes.items()}
    last = "optimize[1] quantize"
    assert deps["convert"] == {"data"} and deps["optimize[0] prune"] == {"convert", "data"}
    assert deps[last] == {"optimize[0] prune", "convert", "data"}
    assert deps["compile ort"] == {last, "data", "convert"}
    assert deps["compile ort-fp32"] == {"convert", "data"}  # input: fp32 does not wait for the passes
    assert plan.nodes["compile tfl-int8 [saved_model]"].kind == "tf-convert"  # the shared onnx2tf conversion is a node
    assert deps["compile tfl-int8"] == {last, "data", "convert", "compile tfl-int8 [saved_model]"}
    for t in ("ort", "ort-fp32", "tfl-int8"):
        assert deps[f"validate {t} @ local"] == {f"compile {t}", "convert", "reference fp32"}
        assert plan.nodes[f"validate {t} @ local"].resources.exclusive  # the build host: runs alone
    assert deps["package + sign"] == {"gates"} and deps["publish"] == {"package + sign"}
    assert plan.dependents("optimize[0] prune") >= {last, "compile ort", "compile tfl-int8", "validate ort @ local", "gates"}
    assert "compile ort-fp32" not in plan.dependents("optimize[0] prune")
    assert list(plan.nodes).index("convert") < list(plan.nodes).index(last) < list(plan.nodes).index("compile ort")


def _executor_plan(log: list):
    """a -> b (fails) -> c ; a -> d ; e alone. Real executor, nodes whose work is plain Python."""
    eng = Engine.__new__(Engine)

    def step(name, fail=False, seconds=0.0):
        def prepare(res):
            log.append((name, "start", time.monotonic()))
            time.sleep(seconds)
            log.append((name, "end", time.monotonic()))
            if fail:
                from edgepack.errors import StageError

                raise StageError(f"{name}: broken")
            return NodeResult("ok", value=name)
        return prepare

    plan = Plan()
    plan.add(Node("a", "data", (), step("a"), eng))
    plan.add(Node("b", "compile", ("a",), step("b", fail=True), eng))
    plan.add(Node("c", "validate", ("b",), step("c"), eng))
    plan.add(Node("d", "compile", ("a",), step("d", seconds=0.3), eng))
    plan.add(Node("v", "validate", ("a",), step("v"), eng, resources=Resources(device="local", exclusive=True)))
    plan.add(Node("e", "compile", (), step("e", seconds=0.3), eng))
    return plan


def test_a_failing_node_fails_only_its_dependents_and_exclusive_nodes_run_alone():
    from edgepack.executors.local import LocalExecutor

    log: list = []
    res = LocalExecutor(jobs=3).run(_executor_plan(log))
    assert res["b"].status == "failed" and res["b"].error == "b: broken"
    assert res["c"].status == "skipped" and not res["c"].ran and "b failed" in res["c"].error
    assert all(res[n].ok for n in ("a", "d", "e", "v"))
    started = [n for n, what, _ in log if what == "start"]
    assert "c" not in started
    spans = {n: [t for m, _, t in log if m == n] for n in started}
    v0, v1 = spans["v"]
    assert all(e1 <= v0 or e0 >= v1 for n, (e0, e1) in spans.items() if n != "v")  # nothing overlaps the local validation


def test_longest_chain_starts_first_and_host_validation_waits_for_shared_work():
    """Start order on one job: the head of the longest chain first (an onnx2tf conversion before a quick compile);
    an exclusive node (timed validation on the build host) only once no other work is ready or running."""
    from edgepack.executors.local import LocalExecutor, chain_heights

    eng = Engine.__new__(Engine)
    order: list = []

    def step(name):
        return lambda res: order.append(name) or NodeResult("ok")

    plan = Plan()
    plan.add(Node("q", "compile", (), step("q"), eng))
    plan.add(Node("v", "validate", (), step("v"), eng, resources=Resources(device="local", exclusive=True)))
    plan.add(Node("l1", "tf-convert", (), step("l1"), eng))
    plan.add(Node("l2", "compile", ("l1",), step("l2"), eng))
    plan.add(Node("l3", "validate", ("l2",), step("l3"), eng))
    assert chain_heights(plan) == {"q": 1, "v": 1, "l1": 3, "l2": 2, "l3": 1}
    res = LocalExecutor(jobs=1).run(plan)
    assert all(r.ok for r in res.values()) and order == ["l1", "l2", "q", "l3", "v"]


def test_failed_node_error_in_thread_does_not_stop_others():
    from edgepack.executors.local import LocalExecutor

    eng = Engine.__new__(Engine)
    seen = threading.Event()

    def boom(res):
        raise RuntimeError("bug")

    def fine(res):
        seen.set()
        return NodeResult("ok")

    plan = Plan()
    plan.add(Node("x", "compile", (), boom, eng))
    plan.add(Node("y", "compile", (), fine, eng))
    res = LocalExecutor(jobs=2).run(plan)
    assert res["x"].status == "failed" and "RuntimeError: bug" in res["x"].error and seen.is_set()


def test_plan_flag_prints_nodes_and_cache_state_without_running(tiny_recipe, tmp_path):
    _with(tiny_recipe, TWO_PASSES, PARALLEL_TARGETS)
    res = run_cli("build", tiny_recipe, "--plan", "--no-publish", "--json", cwd=tiny_recipe.parent)
    assert res.returncode == 0, res.stderr
    rows = {r["id"]: r for r in json.loads(res.stdout)["nodes"]}
    assert rows["convert"]["cached"] is False and rows["convert"]["key"]  # the first stage's key is known
    assert rows["optimize[0] prune"]["cached"] is None  # after a stage that would run: decided when it runs
    assert rows["compile ort-b"]["deps"] == ["convert", "data"]
    assert not (tmp_path / "dist").exists() and not list(tiny_recipe.parent.glob("dist"))
    text = run_cli("build", tiny_recipe, "--plan", cwd=tiny_recipe.parent)
    assert text.returncode == 0 and "validate ort-b @ local" in text.stdout and "nothing was run" in text.stdout


def _digests(bundle):
    """Target file digests and lineage keys. (Not with ort_format: ONNX Runtime's .ort converter writes one of
    two byte layouts depending on PYTHONHASHSEED, seen with seeds 0-5, whatever --jobs is.)"""
    manifest = json.loads((bundle / "edgepack.json").read_text())
    return {f["path"]: f["sha256"] for f in manifest["files"] if f["path"].startswith("targets/")}, \
        [(s["name"], s["key"]) for s in manifest["lineage"]]


def test_parallel_build_matches_jobs_1_and_several_recipes_run_in_one_command(tiny_recipe, tmp_path):
    """--jobs 4: the two compiles overlap, local validations overlap nothing; --jobs 1 in another cache gives
    identical artifacts; then three recipes (one broken) in one command: the worst exit code wins."""
    a = _with(tiny_recipe, None, PARALLEL_TARGETS)
    res = run_cli("build", a, "--jobs", "4", "--no-publish", "-o", tmp_path / "j4", "--cache-dir", tmp_path / "c4", cwd=a.parent)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((tmp_path / "j4" / "report.json").read_text())
    nodes = {n["id"]: n for n in report["plan"]["nodes"]}
    assert report["plan"]["jobs"] == 4
    ca, cb = nodes["compile ort-a"], nodes["compile ort-b"]
    assert ca["start_s"] < cb["end_s"] and cb["start_s"] < ca["end_s"]  # ran at the same time
    assert "compile ort-b" in ca["overlapped"]
    validations = [n for n in nodes.values() if n["kind"] == "validate"]
    assert len(validations) == 2 and all(n["overlapped"] == [] for n in validations)
    for v in validations:
        others = [n for n in nodes.values() if n is not v and "start_s" in n]
        assert all(o["end_s"] <= v["start_s"] or o["start_s"] >= v["end_s"] for o in others)
    dev = report["targets"]["ort-a"]["devices"]["local"]["concurrency"]
    assert dev == {"jobs": 4, "exclusive": True, "overlapped": [], "cached": False}

    one = run_cli("build", a, "--jobs", "1", "--no-publish", "-o", tmp_path / "j1", "--cache-dir", tmp_path / "c1", cwd=a.parent)
    assert one.returncode == 0, one.stderr[-2000:]
    assert _digests(tmp_path / "j1") == _digests(tmp_path / "j4")  # same artifact bytes, cache keys, lineage order

    b = a.with_name("b.yaml")
    b.write_text(a.read_text().replace("name: tiny\n", "name: tiny-b\n", 1))
    bad = a.with_name("bad.yaml")
    bad.write_text(a.read_text().replace("min_cosine: 0.9", "min_cosine: high"))
    res = run_cli("build", a, b, bad, "--jobs", "2", "--no-publish", "--json", "--cache-dir", tmp_path / "c1", cwd=a.parent)
    assert res.returncode == 2, res.stderr[-2000:]  # bad input is the worst of (0, 0, 2)
    out = json.loads(res.stdout)
    assert [r["exit_code"] for r in out["recipes"]] == [0, 0, 2] and "min_cosine" in out["recipes"][2]["error"]
    for name in ("tiny-0.1.0", "tiny-b-0.1.0"):
        report = json.loads((a.parent / "dist" / name / "report.json").read_text())
        assert report["plan"]["nodes"][0]["id"] == f"{name}/data" and report["targets"]["ort-b"]["status"] == "ok"
    assert _digests(a.parent / "dist" / "tiny-0.1.0") == _digests(tmp_path / "j1")


def test_parallel_ort_format_conversions_leave_stdout_alone(tmp_path):
    """ORT's .ort converter runs under redirect_stdout (process-wide): two at once in threads used to leave
    sys.stdout pointing at one's captured log (the build's summary then vanished)."""
    import shutil
    import sys

    from conftest import tiny_onnx
    from edgepack.targets.onnxruntime import _to_ort

    tiny_onnx(tmp_path / "m.onnx")
    real = sys.stdout

    def one(i):
        d = tmp_path / f"r{i}"
        d.mkdir()
        shutil.copyfile(tmp_path / "m.onnx", d / "model.onnx")
        _to_ort(d / "model.onnx", "fixed")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sys.stdout is real and all((tmp_path / f"r{i}" / "model.ort").is_file() for i in range(4))
