"""Each bad input: one line naming the file or field, exit code 2, no traceback, nothing half-written."""

from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli


def _fails_cleanly(res, *needles, code=2):
    assert res.returncode == code, res.stderr + res.stdout
    err = res.stderr.strip().splitlines()
    assert len(err) == 1, res.stderr
    assert err[0].startswith("error: ")
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def _build(recipe: Path, *extra):
    out = recipe.parent / "out"
    res = run_cli("build", recipe, "-o", out, *extra, cwd=recipe.parent)
    return res, out


def _edit(recipe: Path, old: str, new: str):
    text = recipe.read_text()
    assert old in text
    recipe.write_text(text.replace(old, new))


def test_malformed_yaml(tiny_recipe):
    _edit(tiny_recipe, "  format: onnx", "  format: [onnx")
    res, out = _build(tiny_recipe)
    _fails_cleanly(res, "recipe.yaml:5:7", "malformed YAML")
    assert not out.exists()


def test_unknown_key(tiny_recipe):
    _edit(tiny_recipe, "    mode: static", "    mode: static\n    calibrate: minmax")
    res, _ = _build(tiny_recipe)
    _fails_cleanly(res, "recipe.yaml:19:5 optimize[0].calibrate: unknown key", "did you mean 'calibration'")


def test_wrong_type(tiny_recipe):
    _edit(tiny_recipe, "  min_cosine: 0.9", "  min_cosine: high")
    res, _ = _build(tiny_recipe)
    _fails_cleanly(res, "gates.min_cosine")


def test_missing_model_file(tiny_recipe):
    (tiny_recipe.parent / "model.onnx").unlink()
    res, out = _build(tiny_recipe)
    _fails_cleanly(res, "model.onnx (model.path): model file not found")
    assert not out.exists()


def test_missing_data_file(tiny_recipe):
    (tiny_recipe.parent / "val.npz").unlink()
    res, _ = _build(tiny_recipe)
    _fails_cleanly(res, "val.npz (data.validation.path): data file not found")


def test_entrypoint_does_not_import(digits_recipe):
    _edit(digits_recipe, "digits_data:validation", "no_such_module:validation")
    res, _ = _build(digits_recipe)
    _fails_cleanly(res, "data.validation.loader", "cannot import module 'no_such_module'")


def test_model_entrypoint_does_not_import(digits_recipe):
    _edit(digits_recipe, "entrypoint: digits_model:build", "entrypoint: digits_modle:build")
    res, _ = _build(digits_recipe)
    _fails_cleanly(res, "model.entrypoint", "digits_modle")


def test_input_shape_the_model_rejects(tiny_recipe):
    d = tiny_recipe.parent
    _edit(tiny_recipe, "[batch, 1, 8, 8]", "[batch, 1, 6, 6]")
    x = np.load(d / "val.npz")["input"][:, :, :6, :6]
    np.savez(d / "val.npz", input=x)
    np.savez(d / "calib.npz", input=x[:8])
    res, out = _build(tiny_recipe)
    _fails_cleanly(res, "model.inputs", "rejected inputs of shape")
    assert not out.exists()


def test_pytorch_input_shape_the_model_rejects(digits_recipe, tmp_path):
    _edit(digits_recipe, "shape: [batch, 1, 8, 8]", "shape: [batch, 1, 5, 5]")
    _edit(digits_recipe, "data:\n  calibration:\n    loader: digits_data:calibration\n  validation:\n    loader: digits_data:validation     # returns (inputs, labels)\n", "")
    _edit(digits_recipe, "optimize:\n  - pass: quantize\n    mode: static", "optimize:\n  - pass: quantize\n    mode: dynamic")
    res, _ = _build(digits_recipe)
    _fails_cleanly(res, "model.inputs", "rejected inputs of shape {'input': [1, 1, 5, 5]}")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_onnx(tiny_recipe, damage):
    p = tiny_recipe.parent / "model.onnx"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not an onnx model at all" * 10)
    res, out = _build(tiny_recipe)
    _fails_cleanly(res, "model.onnx", "not a valid ONNX model")
    assert not out.exists()


def test_calibration_with_nan(tiny_recipe):
    d = tiny_recipe.parent
    x = np.load(d / "calib.npz")["input"].copy()
    x[3, 0, 2, 2] = np.nan
    np.savez(d / "calib.npz", input=x)
    res, _ = _build(tiny_recipe)
    _fails_cleanly(res, "calib.npz (data.calibration.path)", "NaN")


def test_calibration_with_wrong_shape(tiny_recipe):
    d = tiny_recipe.parent
    np.savez(d / "calib.npz", input=np.zeros((4, 3, 8, 8), np.float32))
    res, _ = _build(tiny_recipe)
    _fails_cleanly(res, "calib.npz (data.calibration.path)", "shape [4, 3, 8, 8], expected [N, 1, 8, 8]")


def test_labels_count_mismatch(tiny_recipe):
    np.save(tiny_recipe.parent / "labels.npy", np.zeros(10, np.int64))
    res, _ = _build(tiny_recipe)
    _fails_cleanly(res, "data.validation", "10 labels for 64 samples")


def test_signing_key_missing(tiny_recipe):
    res, out = _build(tiny_recipe, "--key", tiny_recipe.parent / "nokey.pem")
    _fails_cleanly(res, "nokey.pem", "not found")
    assert not out.exists()


def test_signing_key_wrong_type(tiny_recipe):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    p = tiny_recipe.parent / "ed.pem"
    p.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    res, out = _build(tiny_recipe, "--key", p)
    _fails_cleanly(res, "ed.pem", "Ed25519", "EC P-256")
    assert not out.exists()


def test_output_path_not_writable(tiny_recipe):
    blocker = tiny_recipe.parent / "afile"
    blocker.write_text("x")
    res = run_cli("build", tiny_recipe, "-o", blocker / "out", cwd=tiny_recipe.parent)
    _fails_cleanly(res, "afile/out (package.output)")


def test_registry_path_not_writable(tiny_recipe):
    blocker = tiny_recipe.parent / "afile"
    blocker.write_text("x")
    res, out = _build(tiny_recipe, "--registry", f"layout:{blocker}/reg")
    _fails_cleanly(res, "afile/reg (publish.registry)")
    assert not out.exists()


def test_verbose_shows_the_traceback(tiny_recipe):
    (tiny_recipe.parent / "model.onnx").unlink()
    res = run_cli("--verbose", "build", tiny_recipe, cwd=tiny_recipe.parent)
    assert res.returncode == 2
    assert "Traceback" in res.stderr and "model file not found" in res.stderr
