"""Hugging Face folders as a source (model.format: hf, edgepack/ingest/hf.py): a tiny random 2-layer
BERT-style encoder (hidden 64) built here from a transformers config, with a WordPiece tokenizer
trained here with `tokenizers`, saved as an HF folder (tests/hfmodels.py, cached on disk).

Text data files (one example per line) are tokenized by edgepack with the folder's tokenizer. The
feature-extraction build is checked against the PyTorch model through edgepack's own metrics
(embedding_cosine against label embeddings computed here with transformers) and by running the
artifacts here at another batch and sequence length; the text-classification build's labels are the
PyTorch model's own predictions, so FP32 top-1 is 1.0 only when edgepack tokenizes exactly as
transformers does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import hfmodels
import numpy as np
import pytest
from realmodels import harness

pytest.importorskip("transformers")

MAX_LEN = 16
_sentences = hfmodels.bert_sentences


@pytest.fixture(scope="session")
def hf_folder() -> Path:
    """config.json + model.safetensors + tokenizer files of a random BertForSequenceClassification (3 labels)."""
    return hfmodels.bert_folder()


def _torch_outputs(folder: Path, lines: list[str], task: str) -> np.ndarray:
    """The PyTorch model's embeddings (mean-pooled) or logits, straight from transformers."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    enc = tok(lines, padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="pt")
    enc.pop("token_type_ids", None)
    cls = AutoModelForSequenceClassification if task == "text-classification" else AutoModel
    model = cls.from_pretrained(str(folder), local_files_only=True).eval()
    with torch.no_grad():
        out = model(**enc)
    if task == "text-classification":
        return out.logits.numpy()
    m = enc["attention_mask"].unsqueeze(-1).float()
    return ((out.last_hidden_state * m).sum(1) / m.sum(1)).numpy()


RECIPE = """name: tiny-bert-{task_short}
version: "1"
model:
  format: hf
  path: {folder}
  task: {task}
  tokenizer: {{max_length: {max_len}}}
data:
  calibration: {{text: calib.txt}}
  validation: {{text: valid.txt, labels: labels.npy}}
evaluate:
{evaluate}
optimize:
  - {{pass: quantize, mode: dynamic}}
targets:
{targets}
"""

FE_EVALUATE = """  - {name: cosine_torch, type: embedding_cosine, against: labels}
  - {name: cosine_fp32, type: embedding_cosine}"""
TC_EVALUATE = """  - {name: accuracy, type: top1}"""
TC_TARGETS = """  - {type: onnxruntime, name: ort-fp32, input: fp32}
  - {type: onnxruntime, name: ort-int8}"""
TARGETS = """  - {type: onnxruntime, name: ort-fp32, input: fp32}
  - {type: onnxruntime, name: ort-int8}
  - {type: openvino, name: ov-fp32, input: fp32}"""


def _workspace(tmp_path: Path, labels) -> Path:
    d = tmp_path / "recipe"
    d.mkdir(parents=True)
    (d / "calib.txt").write_text("\n".join(_sentences(8, 2)) + "\n")
    (d / "valid.txt").write_text("\n".join(VALID) + "\n")
    np.save(d / "labels.npy", labels)
    return d


VALID = _sentences(12, 3)


def _recipe(folder, task, evaluate, targets=TARGETS):
    return RECIPE.format(folder=folder, task=task, task_short=task.split("-")[-1], max_len=MAX_LEN,
                         evaluate=evaluate, targets=targets) + harness.BENCH


def _feeds(folder: Path, lines: list[str], length: int) -> list[dict]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    enc = tok(lines, padding="max_length", truncation=True, max_length=length, return_tensors="np")
    return [{k: enc[k][i : i + 1].astype(np.int64) for k in ("input_ids", "attention_mask")} for i in range(len(lines))]


@pytest.fixture(scope="module")
def builds(hf_folder, tmp_path_factory) -> dict[str, harness.Build]:
    """The feature-extraction build (ORT fp32 + int8, OpenVINO, TFLite; labels: the PyTorch model's embeddings)
    and the text-classification build (ORT fp32 + int8; labels: the PyTorch model's predictions), both in ONE
    `edgepack build` (one plan: their stages run side by side), by task."""
    root = tmp_path_factory.mktemp("builds")
    fe = _workspace(root / "fe", _torch_outputs(hf_folder, VALID, "feature-extraction").astype(np.float32))
    tc = _workspace(root / "tc", _torch_outputs(hf_folder, VALID, "text-classification").argmax(-1).astype(np.int64))
    targets = TARGETS + "\n  - {type: tflite, name: tflite-fp32, input: fp32}"
    recipes = {fe: _recipe(hf_folder, "feature-extraction", FE_EVALUATE, targets),
               tc: _recipe(hf_folder, "text-classification", TC_EVALUATE, TC_TARGETS) + "gates: {max_accuracy_drop: 0.34}\n"}
    fe_build, tc_build = harness.build_many(recipes, root / "home")
    return {"feature-extraction": fe_build, "text-classification": tc_build}


def test_feature_extraction_text_data_ort_int8_openvino_tflite(hf_folder, builds):
    b = builds["feature-extraction"]
    assert b.rc == 0, b.why()
    conv = b.report["conversion"]["record"]
    assert conv["hf"]["task"] == "feature-extraction" and conv["hf"]["pooling"] == "mean"
    assert conv["dynamic_check"]["shape"] == [3, MAX_LEN // 2] and conv["dynamic_check"]["max_abs_diff"] < 1e-4
    # the FP32 reference against the PyTorch model, through edgepack's own text tokenization
    assert b.reference("cosine_torch") > 0.9999
    for tid, floor in (("ort-fp32", 0.9999), ("ov-fp32", 0.9999), ("tflite-fp32", 0.9999), ("ort-int8", 0.999)):
        assert b.target(tid)["status"] == "ok", b.why()
        assert b.metric(tid, "cosine_torch") > floor, (tid, b.device(tid))
    # dynamic batch and sequence with int64 inputs: the artifact runs here at another length, matching PyTorch
    import onnxruntime as ort

    sess = ort.InferenceSession(b.artifact("ort-fp32")["path"], providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape) for i in sess.get_inputs()] == [
        ("input_ids", "tensor(int64)", ["batch", "sequence"]), ("attention_mask", "tensor(int64)", ["batch", "sequence"])]
    feeds = _feeds(hf_folder, VALID[:5], 10)
    batch = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
    (emb,) = sess.run(None, batch)
    want = _torch_at(hf_folder, VALID[:5], 10)
    assert emb.shape == (5, 64) and np.abs(emb - want).max() < 1e-4
    # the tokenizer ships in the signed bundle
    manifest = json.loads((b.bundle / "edgepack.json").read_text())
    assert manifest["tokenizer"] == "tokenizer/" and manifest["hf"]["task"] == "feature-extraction"
    assert (b.bundle / "tokenizer" / "tokenizer.json").is_file()
    # TFLite: exact GELU's Erf has no builtin; onnx2tf's pseudo-Erf keeps it on builtin ops (no Flex op)
    tfl = b.target("tflite-fp32")["compile"]
    assert "select_tf_ops" not in tfl and any("pseudo-Erf" in n for n in tfl["notes"]), tfl


def _torch_at(folder: Path, lines: list[str], length: int) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    enc = tok(lines, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    with torch.no_grad():
        h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    return ((h * m).sum(1) / m.sum(1)).numpy()


def test_text_classification_accuracy(builds):
    b = builds["text-classification"]
    assert b.rc == 0, b.why()
    assert b.reference("accuracy") == 1.0  # edgepack's tokenization and export give PyTorch's predictions
    assert b.metric("ort-fp32", "accuracy") == 1.0
    assert 0.66 <= b.metric("ort-int8", "accuracy") <= 1.0
    manifest = json.loads((b.bundle / "edgepack.json").read_text())
    assert manifest["hf"]["labels"] == {"0": "a", "1": "b", "2": "c"}
    assert b.report["conversion"]["record"]["dynamic_check"]["max_abs_diff"] < 1e-4


@pytest.mark.parametrize("remove, says", [
    (("tokenizer.json", "tokenizer_config.json"), "no tokenizer files"),
    (("model.safetensors",), "model.safetensors: missing"),
    (("config.json",), "config.json: missing"),
])
def test_folder_missing_files_fails_at_load(hf_folder, tmp_path, remove, says):
    folder = tmp_path / "broken"
    shutil.copytree(hf_folder, folder)
    for name in remove:
        (folder / name).unlink(missing_ok=True)
    d = _workspace(tmp_path, np.zeros((len(VALID), 64), np.float32))
    b = harness.build(d, _recipe(folder, "feature-extraction", FE_EVALUATE), tmp_path / "home")
    assert b.rc == 2, b.why()
    line = harness.error_line(b)
    assert says in line and str(folder) in line and "model.path" in line, line
    assert not (d / "out").exists()


def test_recipe_errors_name_the_field(tmp_path):
    from edgepack.errors import RecipeError
    from edgepack.recipe import load_recipe

    cases = {
        "model: {format: hf, path: m}\n": "model.task: format 'hf' needs a task",
        "model: {format: hf, path: m, task: summarize}\n": "model.task",
        "model: {format: onnx, path: m.onnx, inputs: [{name: x, shape: [1]}]}\ndata: {validation: {text: v.txt}}\n": "data.validation.text",
        "model: {format: hf, path: m, task: text-classification, pooling: mean}\n": "model.pooling",
        "model: {format: hf, path: m, task: feature-extraction, tokenizer: {max_length: 1}}\n": "model.tokenizer.max_length",
        "model: {format: hf, path: m, task: feature-extraction}\ndata: {validation: {text: v.txt, path: v.npz}}\n": "data.validation",
        "model: {format: hf, path: m, task: feature-extraction, tokenizer: {padding: longest}}\ntargets: [{type: executorch}]\n":
            "model.tokenizer.padding",
    }
    for body, where in cases.items():
        p = tmp_path / "r.yaml"
        p.write_text('name: x\nversion: "1"\n' + body)
        with pytest.raises(RecipeError) as e:
            load_recipe(p)
        assert where in str(e.value) and f"{p}:" in str(e.value), (body, str(e.value))
    p.write_text('name: x\nversion: "1"\nmodel: {format: hf, path: m, task: feature-extraction}\n')
    m = load_recipe(p).recipe.model
    assert [i.name for i in m.inputs] == ["input_ids", "attention_mask"] and m.outputs == ["embedding"]
    assert all(i.dtype.value == "int64" and i.shape == ["batch", "sequence"] for i in m.inputs)


def test_text_file_errors_name_the_line(hf_folder, tmp_path):
    from edgepack.errors import BadInputError
    from edgepack.ingest.hf import load_tokenizer
    from edgepack.ingest.hf_text import read_lines, tokenize
    from edgepack.recipe_hf import TokenizerSettings

    p = tmp_path / "t.txt"
    p.write_text("one line\n\nthird\n")
    with pytest.raises(BadInputError, match=rf"{p}:2: empty line"):
        read_lines(p, "w")
    p.write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(BadInputError, match=rf"{p}:2: not UTF-8"):
        read_lines(p, "w")
    tok = load_tokenizer(hf_folder, "w")
    long = " ".join(hfmodels.BERT_WORDS)
    with pytest.raises(BadInputError, match=rf"{p}:2: \d+ tokens, more than model.tokenizer.max_length \(8\)"):
        tokenize(tok, ["the red", long], ["input_ids"], TokenizerSettings(max_length=8, truncation=False), p, "w")
    out = tokenize(tok, ["the red", "a b"], ["input_ids", "attention_mask", "token_type_ids"],
                   TokenizerSettings(max_length=8, padding="longest"), p, "w")
    assert all(a.dtype == np.int64 and a.shape[0] == 2 and a.shape[1] <= 8 for a in out.values())


def test_executorch_program_has_the_same_outputs(hf_folder, tmp_path):
    """The torch.export program the ExecuTorch target compiles (ingest/hf.py): the additive 4-D mask gives the
    model's own outputs, and the saved program loads with torch alone and gives them too. (The ExecuTorch
    build itself, fp32 and int8, is measured in docs/results.md: ~5 min here, over this test's budget.)"""
    import torch

    from edgepack.ingest import hf

    model = hf.load_model(hf_folder, "feature-extraction", "w")
    feeds = _feeds(hf_folder, VALID[:3], MAX_LEN)
    names = ["input_ids", "attention_mask"]
    plain = hf.wrap(model, names, "feature-extraction", "mean", False)
    m4 = hf.wrap(model, names, "feature-extraction", "mean", False, mask4d=True)
    from edgepack.ingest.torch import _run_source

    want = _run_source(plain, feeds, names)
    assert hf._same_outputs(m4, want, feeds, names, 1e-5)
    assert not hf._same_outputs(m4, [[w[0] + 1] for w in want], feeds, names, 1e-5)
    path = hf._save_program(m4, feeds[0], names, tmp_path / "program.pt2")
    ep = torch.export.load(str(path))
    assert not [n for n in ep.graph.nodes if n.op == "call_function" and "index.Tensor" in str(n.target)]
    got = ep.module()(*(torch.from_numpy(feeds[0][n]) for n in names)).detach().numpy()
    assert np.abs(got - want[0][0]).max() < 1e-5


def test_classification_folder_without_its_head_is_refused(hf_folder, tmp_path):
    """transformers would give a missing classification head random weights; the loader refuses the folder."""
    from transformers import AutoModel

    from edgepack.errors import BadInputError
    from edgepack.ingest import hf

    base = tmp_path / "base"
    AutoModel.from_pretrained(str(hf_folder), local_files_only=True).save_pretrained(base)
    for f in hf.tokenizer_files(hf_folder):
        shutil.copyfile(f, base / f.name)
    hf.load_model(base, "feature-extraction", "w")  # the encoder itself is complete
    with pytest.raises(BadInputError, match=r"the weights lack 2 tensor\(s\) a text-classification model needs \(classifier\."):
        hf.load_model(base, "text-classification", "w")
