"""Every builtin metric against numbers worked out by hand (in the comments), the CTC greedy decode, a user
function, and the centred cosine on a bias-dominated output."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import TypeAdapter

from edgepack.errors import BadInputError
from edgepack.recipe_evaluate import Metric
from edgepack.validate.metrics import compute_metrics, fidelity
from edgepack.validate.text import ctc_greedy, edit_distance

SPECS = TypeAdapter(list[Metric])


def run(spec: dict, outputs, labels=None, reference=None, base_dir=None):
    specs = SPECS.validate_python([spec])
    res = compute_metrics(specs, outputs, labels, reference=reference, base_dir=base_dir)
    return res[specs[0].id]


# ---------------------------------------------------------------- classification

CLS = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], np.float32)


def test_top1():
    # argmax = [1, 0, 1, 0] vs labels [1, 0, 0, 0]: 3 of 4
    r = run({"type": "top1"}, {"logits": CLS}, np.array([1, 0, 0, 0]))
    assert r["value"] == pytest.approx(0.75) and r["per_sample"] == [1, 1, 0, 1] and r["higher_is_better"]


def test_topk():
    o = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.3, 0.4, 0.3]])
    # top-2 sets {0,1}, {2,1}, {1,0}; labels 2, 1, 0: miss, hit, hit
    r = run({"type": "topk", "k": 2}, {"y": o}, {"labels": np.array([2, 1, 0])})
    assert r["value"] == pytest.approx(2 / 3) and r["per_sample"] == [0, 1, 1]


PROBS = np.array([0.9, 0.4, 0.6, 0.2, 0.8])
TRUTH = np.array([1, 1, 0, 0, 1])


def test_binary_accuracy_threshold_and_shapes():
    # pred at 0.5 = [1,0,1,0,1] vs [1,1,0,0,1]: 3/5; at 0.7 = [1,0,0,0,1]: 4/5
    assert run({"type": "binary_accuracy"}, {"p": PROBS}, TRUTH)["value"] == pytest.approx(0.6)
    assert run({"type": "binary_accuracy", "threshold": 0.7}, {"p": PROBS[:, None]}, TRUTH)["value"] == pytest.approx(0.8)
    # [N,1] logits: sigmoid > 0.5 iff logit > 0: pred [1,0,1] vs [1,1,0]: 1/3
    logits = np.array([[2.0], [-1.0], [0.5]])
    assert run({"type": "binary_accuracy", "scores": "logit"}, {"p": logits}, np.array([1, 1, 0]))["value"] == pytest.approx(1 / 3)
    # [N,2] logits, positive column 0: softmax p0 = [0.88, 0.12] -> pred [T, F]; labels == 0 -> [T, F]: 1.0
    two = np.array([[2.0, 0.0], [0.0, 2.0]])
    assert run({"type": "binary_accuracy", "scores": "logit", "positive": 0}, {"p": two}, np.array([0, 1]))["value"] == 1.0


def test_f1():
    # tp=2 (0.9, 0.8), fp=1 (0.6), fn=1 (0.4): F1 = 2*2 / (2*2 + 1 + 1) = 4/6
    r = run({"type": "f1"}, {"p": PROBS}, TRUTH)
    assert r["value"] == pytest.approx(4 / 6) and (r["tp"], r["fp"], r["fn"]) == (2, 1, 1)


def test_roc_auc():
    # positives {0.9, 0.4, 0.8}, negatives {0.6, 0.2}: 5 of the 6 pairs ranked right
    assert run({"type": "roc_auc"}, {"p": PROBS}, TRUTH)["value"] == pytest.approx(5 / 6)
    # a tie counts half: pos {0.5}, neg {0.5, 0.1} -> (0.5 + 1) / 2
    assert run({"type": "roc_auc"}, {"p": np.array([0.5, 0.5, 0.1])}, np.array([1, 0, 0]))["value"] == pytest.approx(0.75)


# ---------------------------------------------------------------- text


def one_hot(seq, classes):
    return np.eye(classes, dtype=np.float32)[seq]


def test_ctc_greedy_decode_blank_first_and_last():
    # blank 0, classes 1='a', 2='b': [1,1,0,1,2,2] -> collapse -> a,(blank),a,b -> "aab"
    assert ctc_greedy(one_hot([1, 1, 0, 1, 2, 2], 3)[None], list("ab"), 0) == ["aab"]
    # blank 2 (last), classes 0='a', 1='b': [0,2,0,1,1] -> "aab"
    assert ctc_greedy(one_hot([0, 2, 0, 1, 1], 3)[None], list("ab"), 2) == ["aab"]
    with pytest.raises(BadInputError, match="class 3 has no token"):
        ctc_greedy(one_hot([3], 4)[None], list("ab"), 0)


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("the cat".split(), "a cat".split()) == 1


CTC = np.stack([one_hot([1, 1, 0, 1, 2, 2], 3), one_hot([2, 0, 0, 0, 0, 0], 3)])  # decodes to "aab", "b"


def test_exact_match_and_cer_with_charset_file(tmp_path):
    (tmp_path / "charset.txt").write_text("a\nb\n")
    dec = {"type": "ctc_greedy", "charset": "charset.txt", "blank": 0}
    labels = np.array(["aab", "ab"])
    r = run({"type": "exact_match", "decode": dec}, {"seq": CTC}, labels, base_dir=tmp_path)
    assert r["value"] == 0.5 and r["per_sample"] == [1, 0]
    # "aab" vs "abb": 1 edit / 3; "b" vs "ab": 1 edit / 2 -> corpus 2/5
    r = run({"type": "cer", "decode": dec}, {"seq": CTC}, np.array(["abb", "ab"]), base_dir=tmp_path)
    assert r["value"] == pytest.approx(0.4) and r["per_sample"] == pytest.approx([1 / 3, 0.5]) and not r["higher_is_better"]


def test_wer_with_user_decode(tmp_path):
    (tmp_path / "mydecode.py").write_text("def words(o):\n    return ['the cat sat', 'a dog'][: len(o)]\n")
    # "the cat sat" vs itself: 0; "a dog" vs "the dog": 1 of 2 words -> 1 edit / 5 words
    r = run({"type": "wer", "decode": {"fn": "mydecode:words"}}, {"x": np.zeros((2, 3))},
            np.array(["the cat sat", "the dog"]), base_dir=tmp_path)
    assert r["value"] == pytest.approx(0.2) and r["per_sample"] == pytest.approx([0.0, 0.5])


def test_exact_match_without_decode_compares_argmax_rows():
    o = np.stack([one_hot([0, 1, 2], 3), one_hot([2, 2, 2], 3)])
    assert run({"type": "exact_match"}, {"tok": o}, np.array([[0, 1, 2], [2, 1, 2]]))["value"] == 0.5


# ---------------------------------------------------------------- regression and embeddings


def test_mse_and_psnr():
    o = np.array([[1.0, 2.0], [3.0, 4.0]])
    y = np.ones((2, 2))
    # per sample (0 + 1)/2 = 0.5 and (4 + 9)/2 = 6.5; mean 3.5
    r = run({"type": "mse"}, {"d": o}, y)
    assert r["value"] == pytest.approx(3.5) and r["per_sample"] == [0.5, 6.5] and not r["higher_is_better"]
    # PSNR, peak 4: 10 log10(16 / 3.5) = 6.6005; per sample 10 log10(32) = 15.0515, 10 log10(16/6.5) = 3.9121
    r = run({"type": "psnr", "max_value": 4.0}, {"d": o}, y)
    assert r["value"] == pytest.approx(6.6005, abs=1e-4) and r["per_sample"] == pytest.approx([15.0515, 3.9121], abs=1e-4)
    # against the FP32 outputs: identical -> mse 0, PSNR capped (no infinity in JSON)
    assert run({"type": "mse", "against": "reference"}, {"d": o}, reference={"d": o})["value"] == 0.0
    assert run({"type": "psnr", "against": "reference"}, {"d": o}, reference={"d": o})["value"] == 200.0


def test_embedding_cosine():
    # [1,0]·[1,0] = 1; [1,1]·[0,1] = 1/sqrt(2)
    r = run({"type": "embedding_cosine"}, {"e": np.array([[1.0, 0.0], [1.0, 1.0]])}, reference={"e": np.array([[1.0, 0.0], [0.0, 1.0]])})
    assert r["value"] == pytest.approx((1 + 1 / math.sqrt(2)) / 2) and r["per_sample"] == pytest.approx([1.0, 1 / math.sqrt(2)])


def test_recall_at_k():
    ref = {"e": np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])}
    out = {"e": np.array([[1.0, 0.1], [0.1, 1.0], [0.0, 1.0]])}
    # query 2 = [0,1] is closest to gallery 1 (cos 1) then gallery 2 (0.707): a miss at k=1, a hit at k=2
    r1 = run({"type": "recall_at_k", "k": 1}, out, reference=ref)
    assert r1["value"] == pytest.approx(2 / 3) and r1["per_sample"] == [1, 1, 0]
    assert run({"type": "recall_at_k", "k": 2}, out, reference=ref)["value"] == 1.0
    # against class labels: the nearest other sample shares the label (all), or never does
    e = {"e": np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])}
    assert run({"type": "recall_at_k", "against": "labels"}, e, np.array([0, 0, 1, 1]))["value"] == 1.0
    assert run({"type": "recall_at_k", "against": "labels"}, e, np.array([0, 1, 0, 1]))["value"] == 0.0


# ---------------------------------------------------------------- fidelity


def test_fidelity_builtins():
    ref = {"y": np.array([[0.0, 0.0], [1.0, 1.0]])}
    out = {"y": np.array([[0.1, 0.0], [1.0, 1.3]])}
    r = run({"type": "max_abs_error"}, out, reference=ref)
    assert r["value"] == pytest.approx(0.3) and r["per_sample"] == pytest.approx([0.1, 0.3])
    r = run({"type": "mean_abs_error"}, out, reference=ref)
    assert r["value"] == pytest.approx(0.1) and r["per_sample"] == pytest.approx([0.05, 0.15])
    agree = run({"type": "top1_agreement"}, {"y": np.array([[0.6, 0.4], [0.7, 0.3]])}, reference={"y": np.eye(2)})
    assert agree["value"] == 0.5 and agree["per_sample"] == [1, 0]
    # centred: ref mean [0.5, 0.5]; ref rows -> [.5,-.5], [-.5,.5]; output [1,0],[1,0] -> [.5,-.5] twice: cos 1, -1
    c = run({"type": "cosine"}, {"y": np.array([[1.0, 0.0], [1.0, 0.0]])}, reference={"y": np.eye(2)})
    assert c["value"] == pytest.approx(0.0) and c["per_sample"] == pytest.approx([1.0, -1.0])
    plain = run({"type": "cosine", "centred": False}, {"y": np.array([[1.0, 0.0], [1.0, 0.0]])}, reference={"y": np.eye(2)})
    assert plain["value"] == pytest.approx(0.5)


def test_fidelity_summary_by_output_name():
    ref = {"bbox": np.zeros((3, 4)), "prob": np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.4]])}
    out = {"bbox": np.full((3, 4), 0.25), "prob": np.array([[0.8, 0.2], [0.6, 0.4], [0.5, 0.4]])}
    f = fidelity(ref, out)
    assert set(f["outputs"]) == {"bbox", "prob"} and f["samples"] == 3
    assert f["max_abs_error"] == pytest.approx(0.4) and f["outputs"]["bbox"]["max_abs_error"] == pytest.approx(0.25)
    assert f["top1_agreement"] == pytest.approx(2 / 3)  # the lowest over [N, C] outputs (bbox agrees: 1.0)
    assert f["outputs"]["prob"]["cosine_per_sample"]["n"] == 3 and len(f["outputs"]["prob"]["cosine_per_sample"]["values"]) == 3


def test_bias_dominated_output_fails_centred_cosine():
    """logits = large constant class bias + tiny input signal, INT8-quantized: plain cosine ~1, centred cosine low."""
    rng = np.random.default_rng(0)
    bias = rng.uniform(20, 60, size=10)
    ref = bias + 0.05 * rng.standard_normal((64, 10))
    scale = np.abs(ref).max() / 127
    q = np.round(ref / scale) * scale  # per-tensor INT8: the signal is below one quantization step
    f = fidelity({"logits": ref}, {"logits": q})
    assert f["cosine_uncentred"] > 0.9999  # the old number: would pass min_cosine 0.999
    assert f["cosine"] < 0.5  # centred: the input-dependent part is gone
    same = fidelity({"logits": ref}, {"logits": ref + 1e-4 * rng.standard_normal(ref.shape)})
    assert same["cosine"] > 0.99  # a faithful output still passes


# ---------------------------------------------------------------- user functions, errors


def test_user_metric_function(tmp_path):
    (tmp_path / "mymetrics.py").write_text(
        "import numpy as np\n"
        "def score(outputs, labels):\n"
        "    return float(outputs['a'].sum() + labels.sum())\n"
        "def several(outputs, labels):\n"
        "    return {'hit': 0.25, 'miss': 0.75}\n"
    )
    outs = {"a": np.array([[1.0], [2.0]]), "b": np.array([[5.0], [6.0]])}
    # 1 + 2 (output a) + 4 (labels) = 7
    r = run({"fn": "mymetrics:score", "outputs": ["a"], "higher_is_better": True}, outs, np.array([1, 3]), base_dir=tmp_path)
    assert r["value"] == 7.0 and r["higher_is_better"] is True
    specs = SPECS.validate_python([{"fn": "mymetrics:several", "name": "rates", "higher_is_better": False}])
    res = compute_metrics(specs, outs, None, base_dir=tmp_path)
    assert res["rates.hit"]["value"] == 0.25 and res["rates.miss"]["value"] == 0.75


def test_metric_errors_name_the_problem(tmp_path):
    two = {"bbox": np.zeros((2, 4)), "prob": np.zeros((2, 2))}
    with pytest.raises(BadInputError, match="outputs bbox, prob: name one"):
        run({"type": "top1"}, two, np.array([0, 1]))
    with pytest.raises(BadInputError, match="no output 'score'"):
        run({"type": "top1", "output": "score"}, two, np.array([0, 1]))
    with pytest.raises(BadInputError, match=r"classifier output \[N, classes\], got shape \[2, 3, 4\]"):
        run({"type": "top1"}, {"seq": np.zeros((2, 3, 4))}, np.array([0, 1]))
    with pytest.raises(BadInputError, match="needs labels"):
        run({"type": "f1"}, {"p": PROBS}, None)
    with pytest.raises(BadInputError, match="label sets text, face: name one"):
        run({"type": "top1", "output": "prob"}, two, {"text": np.array(["a", "b"]), "face": np.array([0, 1])})


def test_docs_evaluate_example_parses_and_covers_every_builtin():
    import yaml

    from edgepack.recipe_evaluate import BUILTINS

    doc = (__import__("pathlib").Path(__file__).parents[1] / "docs" / "recipe.md").read_text()
    block = doc.split("```yaml\nevaluate:\n")[1].split("```")[0]
    specs = SPECS.validate_python(yaml.safe_load("evaluate:\n" + block)["evaluate"])
    assert {getattr(m, "type", None) for m in specs} >= set(BUILTINS) and any(hasattr(m, "fn") for m in specs)
