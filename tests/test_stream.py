"""Stateful and sequence models: constant inputs, batch axes, int64 inputs, state carried in stream mode.

A tiny stateful ONNX model built here with onnx.helper (x [batch, 4], state [2, batch, 4] with its
batch on axis 1, k an int64 scalar):
    out    = x + 0.5 * state[0] + k
    stateN = 0.5 * state + x
is built with ``edgepack build`` and ``data.validation.mode: stream``; every target's device outputs
(and the FP32 reference) must equal a plain Python loop that carries the state.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edgepack.cli import main

sys.path.insert(0, str(Path(__file__).parent))

RECIPE = """\
name: tiny-stateful
version: "1"
model:
  format: onnx
  path: m.onnx
  inputs:
    - {{name: x, shape: [batch, 4]}}
    - {{name: state, shape: [2, batch, 4], batch_axis: 1}}
    - {{name: k, shape: [], dtype: int64{k}}}
  outputs: [out, stateN]
  state:
    - {{input: state, output: stateN, init: {init}}}
data:
  validation: {{path: val.npz, mode: {mode}}}
targets:
{targets}
devices: [{devices}]
benchmark: {{warmup_runs: 1, warmup_seconds: 0, runs: 3, min_seconds: 0}}
publish: {{enabled: false}}
"""


def stateful_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    nodes = [
        h.make_node("Gather", ["state", "zero"], ["s0"], axis=0),
        h.make_node("Mul", ["s0", "half"], ["s0h"]),
        h.make_node("Cast", ["k"], ["kf"], to=T.FLOAT),
        h.make_node("Add", ["x", "s0h"], ["a"]),
        h.make_node("Add", ["a", "kf"], ["out"]),
        h.make_node("Mul", ["state", "half"], ["sh"]),
        h.make_node("Add", ["sh", "x"], ["stateN"]),
    ]
    graph = h.make_graph(
        nodes, "stateful",
        [h.make_tensor_value_info("x", T.FLOAT, ["batch", 4]), h.make_tensor_value_info("state", T.FLOAT, [2, "batch", 4]),
         h.make_tensor_value_info("k", T.INT64, [])],
        [h.make_tensor_value_info("out", T.FLOAT, ["batch", 4]), h.make_tensor_value_info("stateN", T.FLOAT, [2, "batch", 4])],
        [h.make_tensor("zero", T.INT64, [], [0]), h.make_tensor("half", T.FLOAT, [], [0.5])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def python_loop(x: np.ndarray, k: int, init: np.ndarray | None = None):
    """The model stepped by hand over x [S, T, 4], the state carried: out [S, T, 4], stateN [S, T, 2, 4]."""
    S, T, _ = x.shape
    out, states = np.zeros((S, T, 4), np.float32), np.zeros((S, T, 2, 4), np.float32)
    for s in range(S):
        st = np.zeros((2, 4), np.float32) if init is None else init.copy()
        for t in range(T):
            out[s, t] = x[s, t] + 0.5 * st[0] + k
            st = 0.5 * st + x[s, t]
            states[s, t] = st
    return out, states


def write_case(d: Path, *, mode="stream", k=": 3", init="zeros", targets=("onnxruntime",), devices="local") -> Path:
    stateful_onnx(d / "m.onnx")
    x = np.random.default_rng(1).standard_normal((3, 5, 4) if mode == "stream" else (6, 4)).astype(np.float32)
    np.savez(d / "val.npz", x=x)
    k = f", value{k}" if k.startswith(":") else k
    text = RECIPE.format(k=k, init=init, mode=mode, devices=devices,
                         targets="\n".join(f"  - {{type: {t}}}" for t in targets))
    (d / "recipe.yaml").write_text(text)
    return d / "recipe.yaml"


def build(recipe: Path, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(["build", str(recipe), "-o", str(recipe.parent / "dist")])
    return e.value.code, capsys.readouterr().err


def stage_npz(home: Path, report: dict, name: str) -> dict[str, np.ndarray]:
    key = next(s["key"] for s in report["stages"] if s["name"] == name)
    with np.load(home / "cache" / key[:2] / key / ("reference.npz" if name.startswith("reference") else "outputs.npz")) as z:
        return {k: z[k] for k in z.files}


def targets_here() -> list[str]:
    out = ["onnxruntime"]
    if importlib.util.find_spec("openvino"):
        out.append("openvino")
    if importlib.util.find_spec("onnx2tf") and importlib.util.find_spec("tensorflow"):
        out.append("tflite")
    return out


def check_streamed(d: Path, home: Path, tids: list[str], device: str = "local"):
    report = json.loads((d / "dist" / "report.json").read_text())
    x = np.load(d / "val.npz")["x"]
    out, states = python_loop(x, 3)
    for name in ["reference fp32"] + [f"validate {t} @ {device}" for t in tids]:
        got = stage_npz(home, report, name)
        assert list(got) == ["out", "stateN"], name  # keyed by output name
        assert got["out"].shape == (3, 5, 4) and got["stateN"].shape == (3, 5, 2, 4), name  # [S, T, per-step]
        np.testing.assert_allclose(got["out"], out, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(got["stateN"], states, atol=1e-5, err_msg=name)
    for t in tids:
        dev = report["targets"][t]["devices"][device]
        assert dev["status"] == "ok" and dev["mode"] == "stream" and dev["latency"]["count"] >= 3  # per step
    return report


def test_stream_mode_carries_the_state_on_every_runtime(tmp_path, edgepack_home, capsys):
    tids = targets_here()
    recipe = write_case(tmp_path, targets=tids)
    code, err = build(recipe, capsys)
    assert code == 0, err
    check_streamed(tmp_path, edgepack_home, tids)
    manifest = json.loads((tmp_path / "dist" / "edgepack.json").read_text())
    for t in tids:  # the typed runner contract, in the manifest
        c = manifest["targets"][t]["runner"]
        ins = {i["source"]: i for i in c["inputs"]}
        assert ins["state"]["batch_axis"] == 1 and ins["x"]["batch_axis"] == 0
        assert ins["k"]["value"] == 3 and ins["k"]["dtype"] in ("int64", "int32") and ins["k"]["batch_axis"] is None
        assert c["state"] == [{"input": "state", "output": "stateN", "shape": [2, 1, 4], "dtype": "float32", "init": None}]
        assert {o["name"] for o in c["outputs"]} == {"out", "stateN"}
    if "tflite" in tids:  # a recurrent state is no image: kept in its layout, not made channels-last
        assert {i["source"]: i["perm"] for i in manifest["targets"]["tflite"]["runner"]["inputs"]}["state"] is None


@pytest.fixture
def server(tmp_path_factory):
    import sshd

    why = sshd.available()
    if why:
        pytest.skip(why)
    srv = sshd.SSHServer.start(tmp_path_factory.mktemp("sshd"))
    yield srv
    srv.stop()


def test_stream_mode_over_ssh(tmp_path, edgepack_home, server, capsys):
    remote = tmp_path / "remote"
    remote.mkdir()
    prof = server.profile(tmp_path / "dev.yaml", remote_dir=remote)
    recipe = write_case(tmp_path, devices=str(prof))
    code, err = build(recipe, capsys)
    assert code == 0, err
    report = check_streamed(tmp_path, edgepack_home, ["onnxruntime"], device="loopback")
    assert report["targets"]["onnxruntime"]["devices"]["loopback"]["transport"]["type"] == "ssh"
    assert sorted(p.name for p in remote.iterdir()) == []


def test_batch_mode_scalar_int64_data_input_and_npy_init(tmp_path, edgepack_home, capsys):
    """k fed from the data ([N] for a 0-d input), the state from a .npy init at every sample."""
    recipe = write_case(tmp_path, mode="batch", k="", init="init.npy")
    init = np.arange(8, dtype=np.float32).reshape(2, 4)  # one step's state without its batch axis
    np.save(tmp_path / "init.npy", init)
    x = np.load(tmp_path / "val.npz")["x"]
    k = np.arange(6, dtype=np.int64)
    np.savez(tmp_path / "val.npz", x=x, k=k)
    code, err = build(recipe, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "dist" / "report.json").read_text())
    got = stage_npz(edgepack_home, report, "validate onnxruntime @ local")
    assert got["out"].shape == (6, 4) and got["stateN"].shape == (6, 2, 4)
    np.testing.assert_allclose(got["out"], x + 0.5 * init[0] + k[:, None], atol=1e-6)
    np.testing.assert_allclose(got["stateN"], 0.5 * init[None] + x[:, None, :], atol=1e-6)


# ------------------------------------------------------------------ recipe and data mistakes: exit 2, one line


def _fails(recipe: Path, capsys, *needles):
    code, err = build(recipe, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    assert not (recipe.parent / "dist").exists()


@pytest.mark.parametrize("old,new,needles", [
    ("{name: k, shape: [], dtype: int64, value: 3}", "{name: k, shape: [2], dtype: int64, value: 3}",
     ["model.inputs[2]", "value has shape [], but shape is [2]"]),
    ("{name: k, shape: [], dtype: int64, value: 3}", "{name: k, shape: [], dtype: int64, value: 3, batch_axis: 0}",
     ["model.inputs[2]", "constant", "batch_axis"]),
    ("{name: k, shape: [], dtype: int64, value: 3}", "{name: k, shape: [], dtype: int64, value: x}",
     ["model.inputs[2].value", "must be a number, a bool or a (nested) list of them, got 'x'"]),
    ("{name: k, shape: [], dtype: int64, value: 3}", "{name: k, shape: [2], dtype: int64, value: [1, a]}",
     ["model.inputs[2]", "value is not an array of int64"]),
    ("batch_axis: 1}", "batch_axis: 3}", ["model.inputs[1]", "batch_axis 3 is out of range for shape [2, 'batch', 4]"]),
    ("{input: state, output: stateN", "{input: states, output: stateN", ["model:", "state[0].input 'states' is not a model input"]),
    ("{input: state, output: stateN", "{input: state, output: stateM", ["model:", "state[0].output 'stateM' is not a model output"]),
    ("{input: state, output: stateN", "{input: k, output: stateN", ["model:", "state[0].input 'k' is a constant input"]),
    ("init: zeros", "init: zeros.txt", ["model.state[0].init", "must be 'zeros' or a .npy file"]),
    ("mode: stream", "mode: streaming", ["data.validation.mode", "did you mean 'stream'?"]),
    ("[2, batch, 4], batch_axis: 1", "[2, batch, h], batch_axis: 1", ["model.state[0]", "input 'state' has dynamic dimension(s) ['h']"]),
])
def test_recipe_mistakes(tmp_path, capsys, old, new, needles):
    recipe = write_case(tmp_path)
    text = recipe.read_text()
    assert old in text
    recipe.write_text(text.replace(old, new))
    _fails(recipe, capsys, *needles)


@pytest.mark.parametrize("arrays,mode,needles", [
    ({"x": np.float32(1.0)}, "stream", ["input 'x' is a 0-d array", "expected [S, T, 4]", "model.inputs[].value"]),
    ({"x": np.zeros((6, 4), np.float32)}, "stream", ["input 'x' has shape [6, 4], expected [S, T, 4]"]),
    ({"x": np.zeros((3, 5, 4), np.float32)}, "batch", ["input 'x' has shape [3, 5, 4], expected [N, 4]"]),
    ({"x": np.zeros((6, 4), np.float32), "k": np.zeros((5,), np.int64)}, "batch", ["different sample counts [(5,), (6,)]"]),
    ({"x": np.zeros((6, 4), np.float32), "k": np.full((6,), 0.5)}, "batch", ["'k' holds fractional values", "int64"]),
    ({"x": np.zeros((6, 4), np.float32), "k": np.zeros((6, 1), np.int64)}, "batch", ["input 'k' has shape [6, 1], expected [N]"]),
])
def test_data_mistakes(tmp_path, capsys, arrays, mode, needles):
    recipe = write_case(tmp_path, mode=mode, k="" if "k" in arrays else ": 3")
    np.savez(tmp_path / "val.npz", **arrays)
    _fails(recipe, capsys, "val.npz (data.validation.path)", *needles)


# ------------------------------------------------------------------ the contract itself


def test_contract_round_trip_and_old_bundles():
    from edgepack.contract import InputBinding, OutputBinding, RunnerContract, StateBinding

    c = RunnerContract((InputBinding("x", "x_nhwc", "float32", (0, 2, 3, 1)), InputBinding("sr", "sr", "int64", None, None, 16000)),
                       (OutputBinding("out", 1, (0, 3, 1, 2)), OutputBinding("stateN", 0, batch_axis=1)),
                       (StateBinding("state", "stateN", (2, 1, 128), "float32"),), {"xnnpack": True})
    j = json.loads(json.dumps(c.to_json()))
    assert RunnerContract.from_json(j) == c and RunnerContract.from_entry({"runner": j}) == c
    old = RunnerContract.from_entry({  # a manifest written before the contract existed
        "inputs": [{"name": "x_nhwc", "shape": [1, 8, 8, 3], "dtype": "int8"}], "outputs": [{"name": "a"}, {"name": "b"}],
        "runner": {"input_map": [{"source": "x", "name": "x_nhwc", "perm": [0, 2, 3, 1],
                                  "quantization": {"scale": 0.1, "zero_point": 0, "dtype": "int8"}}],
                   "output_order": [1, 0], "output_perms": [None, [0, 3, 1, 2]], "runner_options": {"xnnpack": False}}})
    assert old.inputs[0].perm == (0, 2, 3, 1) and old.inputs[0].dtype == "int8" and old.inputs[0].quantization["scale"] == 0.1
    assert [(o.index, o.perm) for o in old.outputs] == [(1, None), (0, (0, 3, 1, 2))] and old.options == {"xnnpack": False}
