"""Shared fixtures. Backend markers and skips live here, each with its reason (never faked)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "recipes" / "digits"


def pytest_collection_modifyitems(config, items):
    import platform

    has_gpu = shutil.which("nvidia-smi") is not None and subprocess.run(["nvidia-smi"], capture_output=True).returncode == 0
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU with TensorRT (none on this machine)"))
        if "macos" in item.keywords and platform.system() != "Darwin":
            item.add_marker(pytest.mark.skip(reason="Core ML prediction needs macOS"))


@pytest.fixture(autouse=True)
def edgepack_home(tmp_path, monkeypatch):
    """Every test gets its own EDGEPACK_HOME (keys, registry); the stage cache is per test too."""
    home = tmp_path / "edgepack-home"
    monkeypatch.setenv("EDGEPACK_HOME", str(home))
    monkeypatch.delenv("EDGEPACK_CACHE", raising=False)
    # managed toolchain environments are shared and cached (tests/testenvs.py), not per test
    from testenvs import TOOLCHAINS_DIR

    monkeypatch.setenv("EDGEPACK_TOOLCHAINS_DIR", str(TOOLCHAINS_DIR))
    return home


def run_cli(*args, cwd=None, env=None, timeout=900) -> subprocess.CompletedProcess:
    """Run the real `edgepack` command in a child process (exit code, stdout, stderr as a user sees them)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "edgepack.cli", *map(str, args)],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def digits_recipe(tmp_path) -> Path:
    """A private copy of recipes/digits (so tests can edit it)."""
    dest = tmp_path / "digits"
    shutil.copytree(DIGITS, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest / "recipe.yaml"


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def tiny_cnn(seed: int = 0):
    """A 3-layer CNN (random weights) for 1x8x8 inputs, built inline."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10),
    ).eval()


def tiny_onnx(path: Path, seed: int = 0) -> Path:
    """Export tiny_cnn to ONNX (input 'input' [batch,1,8,8], output 'logits')."""
    import torch

    model = tiny_cnn(seed)
    torch.onnx.export(model, (torch.randn(1, 1, 8, 8),), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}}, opset_version=17, dynamo=False)
    return path


def digits_arrays(n: int = 64):
    sys.path.insert(0, str(DIGITS))
    import digits_data

    x, y = digits_data.validation()
    return x["input"][:n], y[:n]


TINY_RECIPE = """\
name: tiny
version: 0.1.0
model:
  format: onnx
  path: model.onnx
  inputs:
    - name: input
      shape: [batch, 1, 8, 8]
  outputs: [logits]
data:
  calibration:
    path: calib.npz
  validation:
    path: val.npz
    labels: labels.npy
optimize:
  - pass: quantize
    mode: static
targets:
  - type: onnxruntime
    name: ort
gates:
  min_cosine: 0.9
benchmark:
  warmup_runs: 2
  warmup_seconds: 0
  runs: 10
  min_seconds: 0
"""


def make_tiny_recipe(d: Path, text: str = TINY_RECIPE) -> Path:
    """Write the tiny ONNX model, its .npz data and labels and ``text`` as recipe.yaml into a new folder ``d``."""
    d.mkdir()
    tiny_onnx(d / "model.onnx")
    x, y = digits_arrays(64)
    np.savez(d / "calib.npz", input=x[:32])
    np.savez(d / "val.npz", input=x)
    np.save(d / "labels.npy", y)
    return write_recipe(d / "recipe.yaml", text)


@pytest.fixture
def tiny_recipe(tmp_path) -> Path:
    """An ONNX-source recipe (fast: no exporter) with .npz calibration/validation data and labels."""
    return make_tiny_recipe(tmp_path / "tiny")


def make_pki(d: Path, name: str):
    """A CA and a leaf signing certificate (digitalSignature) as PEM files."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)

    def cert(subject, issuer, key, signer, ca):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                                          encipher_only=False, decipher_only=False), critical=True))
        return b.sign(signer, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert(f"{name} CA", f"{name} CA", ca_key, ca_key, True)
    leaf = cert(f"{name} signer", f"{name} CA", leaf_key, ca_key, False)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"ca": d / f"{name}-ca.pem", "leaf": d / f"{name}-leaf.pem", "key": d / f"{name}-leaf-key.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["leaf"].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return paths
