"""silero-vad 6.2.3: a stateful streaming voice-activity detector (input chunk, state [2, batch, 128] with
its batch on axis 1, sr a 0-d int64), validated in stream mode on speech made with espeak-ng between
stretches of silence. The per-chunk accuracy is recomputed here from the compiled artifacts, streaming
with the state carried; fed chunk by chunk with a fresh state it is much lower (0.76 vs 0.96 here).
"""

from __future__ import annotations

import numpy as np
import pytest
from realmodels import data, harness, metrics_fns, wheels

pytestmark = pytest.mark.slow
MAX_DROP = 0.03


@pytest.fixture(scope="session")
def silero():
    return wheels.wheel_files("silero-vad", "6.2.3") / "silero_vad.onnx"


def _step(artifact: dict):
    """One streaming step through a compiled ONNX Runtime / OpenVINO artifact."""
    sr = np.array(16000, np.int64)
    model = harness.runner(artifact)

    def run(chunk, state):
        prob, new = model({"input": chunk, "state": state, "sr": sr})
        return prob, new

    return run


RECIPE = """name: silero-vad
version: "6.2.3"
model:
  format: onnx
  path: {model}
  inputs:
    - {{name: input, shape: [batch, 576]}}
    - {{name: state, shape: [2, batch, 128], batch_axis: 1}}
    - {{name: sr, shape: [], dtype: int64, value: 16000}}
  outputs: [output, stateN]
  state:
    - {{input: state, output: stateN, init: zeros}}
data:
  calibration: {{path: calib.npz}}
  validation: {{path: speech.npz, labels: speech_labels.npy, mode: stream}}
evaluate:
  - {{name: vad_accuracy, fn: "metrics_fns:vad_accuracy", output: output, higher_is_better: true}}
optimize:
  - pass: quantize
targets:
  - {{type: onnxruntime, name: ort-int8}}
  - {{type: onnxruntime, name: ort-fp32, input: fp32}}
  - {{type: openvino, name: ov-fp32, input: fp32}}
gates:
  metrics: {{vad_accuracy: {{max_drop: {drop}}}}}
"""


def test_streaming_vad(silero, tmp_path, edgepack_home):
    d = harness.recipe_dir(tmp_path, "metrics_fns.py")
    chunks, labels = data.speech_streams(6)
    np.savez(d / "speech.npz", input=chunks)
    np.save(d / "speech_labels.npy", labels)
    np.savez(d / "calib.npz", input=chunks[:2, ::4].reshape(-1, chunks.shape[-1]))
    b = harness.build(d, RECIPE.format(model=silero, drop=MAX_DROP) + harness.BENCH, edgepack_home)
    assert b.report, b.why()
    fp32_art = b.artifact("ort-fp32")
    streamed = metrics_fns.stream_vad(_step(fp32_art), chunks)
    fp32 = metrics_fns.vad_accuracy({"output": streamed}, labels)
    stateless = metrics_fns.vad_accuracy({"output": metrics_fns.stream_vad(_step(fp32_art), chunks, carry=False)}, labels)
    assert fp32 >= 0.9 and stateless < fp32 - 0.1, (fp32, stateless)
    assert b.reference("vad_accuracy") == pytest.approx(fp32, abs=1e-6)  # the FP32 reference streamed too
    for tid in ("ort-fp32", "ort-int8"):
        t = b.report["targets"].get(tid, {})
        if "artifact" not in t:  # the quantize pass may fail alone (exit 5)
            assert tid == "ort-int8" and b.rc == 5, b.why()
            continue
        acc = metrics_fns.vad_accuracy({"output": metrics_fns.stream_vad(_step(b.artifact(tid)), chunks)}, labels)
        # edgepack's number is the streamed one (state carried on the device), not the stateless one
        assert b.metric(tid, "vad_accuracy") == pytest.approx(acc, abs=1e-6), (tid, acc, b.device(tid)["accuracy"].get("metrics"))
        assert b.gate_failed(tid) == (fp32 - acc > MAX_DROP), tid
    # OpenVINO cannot convert the Conv inside the model's If branch (its input rank is dynamic there):
    # that target fails alone, naming the ONNX node; the wheel's silero_vad_16k_op15.onnx is the If-free variant
    ov = b.target("ov-fp32")
    assert ov["status"] == "failed" and "If_0" in ov.get("error", "") and "Conv" in ov["error"], ov.get("error")
    assert b.rc == 5, b.why()
    assert "ort-fp32" in b.signed() and "ov-fp32" not in b.signed(), b.why()
