"""Recipe text shared by the tests and benchmarks that build the same real model."""

from __future__ import annotations

from pathlib import Path


def rnet_head(name: str, weights: Path, extra_metrics: str = "") -> str:
    """MTCNN RNet (facenet-pytorch 2.6.0's rnet.pt, module tests/realmodels/nets.py) up to its targets:
    model, data (crops.npz / face.npy written beside the recipe, realmodels.data.face_crops) and the
    face/non-face accuracy read from `prob` (top-1 on output 0, the bbox regression, is meaningless)."""
    return f"""name: {name}
version: "2.6.0"
model:
  format: pytorch
  entrypoint: nets:rnet
  weights: {weights}
  inputs: [{{name: input, shape: [batch, 3, 24, 24], layout: NCHW}}]
  outputs: [bbox, prob]
data:
  calibration: {{path: crops.npz}}
  validation: {{path: crops.npz, labels: face.npy}}
evaluate:
  - {{name: face_accuracy, type: binary_accuracy, output: prob, positive: 1}}
{extra_metrics}"""
