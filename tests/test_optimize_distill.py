"""Distillation: the digits CNN teaches a student more than 4x smaller (real training in a worker),
and the student's ONNX model carries its PyTorch state so a channel-pruning pass can follow."""

from __future__ import annotations

import pytest

from edgepack.cache import StageCache
from edgepack.engine import Engine
from edgepack.errors import BadInputError, StageError
from edgepack.optimize import PassContext, make_pass
from edgepack.recipe import DistillPass, Gates, PrunePass, Training
from test_optimize_prune import ONE_THREAD, digits_fp32  # noqa: F401 - fixture
from test_optimize_quantize import digits

STUDENT = '''
import torch
from torch import nn


def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 10))
'''


@pytest.fixture(scope="module")
def training(tmp_path_factory):
    from edgepack.data import freeze

    d = tmp_path_factory.mktemp("distill")
    x, y, _, _ = digits()
    return freeze({"input": x}, y, d / "data", "training")


def _stage(cfg: dict, tmp_path, lr, gates=None):
    (tmp_path / "students_mod.py").write_text(STUDENT)
    ctx = PassContext(1, "r.yaml:30:5 optimize[1]", tmp_path, lr.recipe.model, gates or Gates())
    return make_pass(DistillPass.model_validate({"pass": "distill", **cfg}), ctx)


def test_student_4x_smaller_within_3_points(digits_fp32, training, tmp_path, monkeypatch):  # noqa: F811
    for k, v in ONE_THREAD.items():
        monkeypatch.setenv(k, v)
    teacher, val, lr = digits_fp32
    stage = _stage({"student": "students_mod:build", "temperature": 4.0, "kd_weight": 0.7, "ce_weight": 0.3,
                    "training": {"epochs": 25, "learning_rate": 0.005, "batch_size": 64, "seed": 0, "patience": 5}}, tmp_path, lr, Gates(max_accuracy_drop=0.03))
    engine = Engine(StageCache(tmp_path / "cache"))
    res = engine.run("optimize[1] distill", stage, {"model": teacher, "training": training, "validation": val})
    rec = res.record
    t_top1, s_top1 = rec["before"]["accuracy"]["top1"], rec["after"]["accuracy"]["top1"]
    assert rec["params_ratio"] >= 4 and rec["size_ratio"] >= 4, (rec["params_ratio"], rec["size_ratio"])
    assert t_top1 - s_top1 <= 0.03, (t_top1, s_top1)
    assert rec["macs_ratio"] > 4
    assert rec["after"]["latency"]["p50_ms"] > 0
    assert rec["training"]["best_epoch"] >= 1 and rec["training"]["history"][0]["loss"] > rec["training"]["history"][-1]["loss"]
    student = res.outputs["model"]
    assert [t.name for t in student.inputs] == ["input"] and [t.name for t in student.outputs] == ["logits"]
    assert student.inputs[0].shape[0] == "batch"  # dynamic axes kept from the recipe
    assert student.meta["torch"]["entrypoint"] == "students_mod:build" and student.meta["passes"] == ["distill"]

    # the distilled student is what the next pass sees: channel pruning rebuilds it from its state
    prune = make_pass(PrunePass.model_validate({"pass": "prune", "method": "channel", "sparsity": 0.5}), PassContext(2, "r.yaml:40:5 optimize[2]", tmp_path, lr.recipe.model, Gates()))
    pres = engine.run("optimize[2] prune", prune, {"model": student, "validation": val})
    assert pres.record["torch_params"]["before"] == rec["student_torch_params"]
    assert pres.record["layers"]["1"] == [20, 64]  # hidden layer cut from 40 to 20 units
    assert pres.record["finetune"].startswith("not requested")


def test_training_is_deterministic_under_a_seed():
    import torch

    from edgepack.optimize.training import fit

    torch.set_num_threads(1)
    x, y, vx, vy = digits()
    runs = []
    for _ in range(2):
        torch.manual_seed(123)  # a different global state each time must not matter: fit seeds itself
        student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
        teacher = torch.nn.functional.one_hot(torch.from_numpy(y[:300]), 10).float().numpy() * 5
        cfg = Training(epochs=3, learning_rate=0.01, batch_size=32, seed=7)
        hist = fit(student, ({"input": x[:300]}, y[:300]), ({"input": vx[:100]}, vy[:100]), ["input"], cfg, "t", teacher=teacher, temperature=2.0, kd_weight=0.5, ce_weight=0.5)
        runs.append((hist["history"], [p.detach().clone() for p in student.parameters()]))
        torch.manual_seed(len(runs) * 999)
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_diverging_loss_stops_the_pass():
    import torch

    from edgepack.optimize.training import fit

    torch.set_num_threads(1)
    x, y, vx, vy = digits()
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    with pytest.raises(StageError, match=r"optimize\[1\]\.training: training diverged: loss is (nan|inf) at epoch \d+, step \d+") as e:
        fit(student, ({"input": x[:256]}, y[:256]), None, ["input"], Training(epochs=3, learning_rate=1e30), "r.yaml:30:5 optimize[1].training")
    assert "lower learning_rate" in e.value.hint


def test_needs_training_data(digits_fp32, tmp_path):  # noqa: F811
    teacher, val, lr = digits_fp32
    with pytest.raises(BadInputError, match="distillation needs training data"):
        Engine(StageCache(tmp_path / "cache")).run("optimize[1] distill", _stage({"student": "students_mod:build"}, tmp_path, lr), {"model": teacher, "validation": val})
    assert Training().epochs == 10
