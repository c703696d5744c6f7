"""Errors carry structured fields (where, stage, hint), composed into one line only at the edge."""

import json
import pickle

import numpy as np

from edgepack.errors import BadInputError, EdgepackError, PassFailedError, StageError, VerificationError
from edgepack.ingest import ExportCheckError


def test_fields_compose_into_one_line_in_a_fixed_order():
    e = BadInputError("input 'x' has shape [3]", hint="give [N, 4]", where="data/val.npz")
    assert e.message == "input 'x' has shape [3]" and e.where == "data/val.npz" and e.stage is None
    assert str(e) == "data/val.npz: input 'x' has shape [3]"
    staged = e.in_stage("validate ort")
    assert staged.one_line() == "validate ort: data/val.npz: input 'x' has shape [3] (give [N, 4])"
    assert staged.in_stage("validate ort").stage == "validate ort"  # not repeated when re-raised by the same stage
    assert staged.in_stage("build").stage == "build: validate ort"  # an outer stage goes first
    assert staged.fields() == {"type": "BadInputError", "exit_code": 2, "stage": "validate ort", "where": "data/val.npz",
                               "message": "input 'x' has shape [3]", "hint": "give [N, 4]"}
    assert isinstance(staged, BadInputError) and e.stage is None  # a copy: the original is unchanged


def test_every_field_and_subclass_extra_crosses_a_process_boundary():
    errors = [
        PassFailedError("budget missed", "raise it", record={"steps": [1, 2]}, where="optimize[0]", stage="optimize[0] quantize"),
        ExportCheckError("outputs differ", check="ONNX Runtime run", where="model.pt"),
        StageError("boom", stage="compile ort"),
    ]
    for e in errors:
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and back.__dict__ == e.__dict__ and back.one_line() == e.one_line()
    assert pickle.loads(pickle.dumps(errors[0])).record == {"steps": [1, 2]}


def test_recast_keeps_where_stage_and_hint():
    e = BadInputError("no manifest", hint="rebuild", where="bundle/edgepack.json", stage="verify")
    v = e.recast(VerificationError)
    assert isinstance(v, VerificationError) and v.exit_code == 4 and v.one_line() == e.one_line()
    p = EdgepackError("x").recast(PassFailedError, record={"a": 1})
    assert isinstance(p, PassFailedError) and p.record == {"a": 1}


def test_json_errors_carry_the_fields(tiny_recipe, tmp_path, cli):
    (tiny_recipe.parent / "val.npz").unlink()
    np.savez(tiny_recipe.parent / "val.npz", input=np.zeros((4, 1, 8, 9), np.float32))  # wrong width
    r = cli("build", tiny_recipe, "-o", tmp_path / "out", "--json")
    assert r.returncode == 2, r.stderr
    doc = json.loads(r.stdout)
    detail = doc["error_detail"]
    assert detail["type"] == "BadInputError" and detail["exit_code"] == 2 and doc["exit_code"] == 2
    assert "val.npz" in detail["where"] and "input 'input' has shape [4, 1, 8, 9]" in detail["message"]
    assert doc["error"] == r.stderr.strip().removeprefix("error: ") and "\n" not in doc["error"]
    assert not (tmp_path / "out").exists()
