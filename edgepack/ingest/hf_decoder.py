"""Hugging Face causal LMs (``format: hf``, ``task: text-generation``) -> one ONNX decoder with a KV cache.

One graph serves prefill and decode (the layout ONNX Runtime GenAI reads, ``genai_config.json`` beside it):

    inputs   input_ids [batch, seq] int64, attention_mask [batch, total] int64 (total = past + seq),
             position_ids [batch, seq] int64, past_key_values.{i}.key / .value [batch, kv_heads, past, head_dim]
    outputs  logits [batch, seq, vocab], present.{i}.key / .value [batch, kv_heads, total, head_dim]

A prefill feeds past length 0. The exported module (``KVDecoder``) runs the Hugging Face model's own
modules (embeddings, norms, projections, MLPs, rotary frequencies) and writes the attention out with the
cache as explicit tensors, so the TorchScript exporter sees no Python cache object and every length stays
dynamic. Checked after export: logits against the Hugging Face model on a prefill and on a decode step.
Supported: Llama-style decoders (llama, mistral, qwen2: RMSNorm, rotary, grouped-query attention).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import BadInputError, StageError

SUPPORTED = ("llama", "mistral", "qwen2")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def offline() -> None:
    """Never reach a hub: local folders only (set in every process that loads a folder)."""
    os.environ.update(OFFLINE_ENV)


def load_causal_lm(folder: Path, where: str):
    """(model, config) of a local Hugging Face causal-LM folder, in float32, eager attention."""
    from .hf import check_folder

    offline()
    folder = Path(folder)
    check_folder(folder, where)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    if config.model_type not in SUPPORTED:
        raise BadInputError(f"text-generation export supports {', '.join(SUPPORTED)} models; this folder is '{config.model_type}'",
                            hint="use a Llama-style decoder, or export the model to ONNX yourself (format: onnx)", where=where)
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return model, config


def load_tokenizer(folder: Path, where: str):
    """The folder's tokenizer (tokenizer.json, read with the `tokenizers` library)."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise BadInputError(f"{folder} has no tokenizer.json", hint="save the tokenizer into the model folder (tokenizer.save_pretrained(folder))", where=where)
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def dims(config) -> dict:
    """The decoder's sizes, as genai_config.json and the runners need them."""
    heads = config.num_attention_heads
    return {
        "num_hidden_layers": config.num_hidden_layers, "num_attention_heads": heads,
        "num_key_value_heads": getattr(config, "num_key_value_heads", None) or heads,
        "head_size": getattr(config, "head_dim", None) or config.hidden_size // heads,
        "hidden_size": config.hidden_size, "vocab_size": config.vocab_size,
        "context_length": getattr(config, "max_position_embeddings", 2048),
        "bos_token_id": _first(getattr(config, "bos_token_id", None)), "eos_token_id": _first(getattr(config, "eos_token_id", None)),
        "pad_token_id": _first(getattr(config, "pad_token_id", None)),
    }


def _first(v):
    return v[0] if isinstance(v, (list, tuple)) and v else v


def io_names(n_layers: int) -> tuple[list[str], list[str]]:
    ins = ["input_ids", "attention_mask", "position_ids"]
    outs = ["logits"]
    for i in range(n_layers):
        ins += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        outs += [f"present.{i}.key", f"present.{i}.value"]
    return ins, outs


def _kv_decoder(model, d: dict):
    import torch

    class KVDecoder(torch.nn.Module):
        """The Hugging Face model's modules with the attention and its cache written out as tensors."""

        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            inner = self.m.model
            h = inner.embed_tokens(input_ids)
            rot = inner.rotary_emb
            freqs = position_ids[:, :, None].float() * rot.inv_freq[None, None, :].float()
            emb = torch.cat([freqs, freqs], dim=-1)
            scale = float(getattr(rot, "attention_scaling", 1.0))
            cos, sin = (emb.cos() * scale)[:, None], (emb.sin() * scale)[:, None]
            key_pos = torch.cumsum(attention_mask, dim=-1) - 1  # position of every key (left padding allowed)
            allowed = (key_pos[:, None, :] <= position_ids[:, :, None]) & (attention_mask[:, None, :] > 0)
            mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None]
            presents = []
            for i, layer in enumerate(inner.layers):
                x = layer.input_layernorm(h)
                att, k, v = _attention(layer.self_attn, x, cos, sin, mask, past[2 * i], past[2 * i + 1], d)
                presents += [k, v]
                h = h + att
                h = h + layer.mlp(layer.post_attention_layernorm(h))
            logits = self.m.lm_head(inner.norm(h))
            return (logits, *presents)

    return KVDecoder().eval()


def _rotate_half(x):
    import torch

    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def rotated_qkv(attn, x, cos, sin, d):
    """The attention's query, key and value heads [b, heads, s, head], query and key rotated (RoPE)."""
    b, s = x.shape[0], x.shape[1]
    hd, nh, nkv = d["head_size"], d["num_attention_heads"], d["num_key_value_heads"]
    q = attn.q_proj(x).view(b, s, nh, hd).transpose(1, 2)
    k = attn.k_proj(x).view(b, s, nkv, hd).transpose(1, 2)
    v = attn.v_proj(x).view(b, s, nkv, hd).transpose(1, 2)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v


def repeat_kv(k, v, d):
    """Grouped-query attention: each cached head serves nh // nkv query heads (HF's repeat_kv)."""
    nh, nkv = d["num_attention_heads"], d["num_key_value_heads"]
    if nh == nkv:
        return k, v
    b, _, total, hd = k.shape
    return (k[:, :, None].expand(b, nkv, nh // nkv, total, hd).reshape(b, nh, total, hd),
            v[:, :, None].expand(b, nkv, nh // nkv, total, hd).reshape(b, nh, total, hd))


def _attention(attn, x, cos, sin, mask, past_k, past_v, d):
    import torch

    b, s = x.shape[0], x.shape[1]
    hd, nh = d["head_size"], d["num_attention_heads"]
    q, k, v = rotated_qkv(attn, x, cos, sin, d)
    k = torch.cat([past_k, k], dim=2)
    v = torch.cat([past_v, v], dim=2)
    kk, vv = repeat_kv(k, v, d)
    w = torch.matmul(q, kk.transpose(2, 3)) * (hd ** -0.5) + mask
    w = torch.softmax(w.float(), dim=-1)
    out = torch.matmul(w, vv).transpose(1, 2).reshape(b, s, nh * hd)
    return attn.o_proj(out), k, v


def example_feeds(d: dict, batch: int, seq: int, past: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {
        "input_ids": rng.integers(0, d["vocab_size"], (batch, seq)).astype(np.int64),
        "attention_mask": np.ones((batch, past + seq), np.int64),
        "position_ids": np.tile(np.arange(past, past + seq, dtype=np.int64), (batch, 1)),
    }
    shape = (batch, d["num_key_value_heads"], past, d["head_size"])
    for i in range(d["num_hidden_layers"]):
        feeds[f"past_key_values.{i}.key"] = rng.standard_normal(shape).astype(np.float32)
        feeds[f"past_key_values.{i}.value"] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def export(model, config, out: Path, opset: int) -> dict:
    """Write the KV-cache decoder to ``out``; returns its sizes (dims)."""
    import torch

    d = dims(config)
    ins, outs = io_names(d["num_hidden_layers"])
    module = _kv_decoder(model, d)
    ex = example_feeds(d, batch=2, seq=3, past=4)
    args = tuple(torch.from_numpy(ex[n]) for n in ins)
    axes: dict = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total_sequence"},
                  "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
    for n in ins[3:]:
        axes[n] = {0: "batch", 2: "past_sequence"}
    for n in outs[1:]:
        axes[n] = {0: "batch", 2: "total_sequence"}
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(out), input_names=ins, output_names=outs, dynamic_axes=axes,
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    return d


def check_export(model, path: Path, d: dict, tolerance: float) -> dict:
    """Logits of the ONNX decoder vs the Hugging Face model: one prefill, then one decode step on its cache."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    ids = rng.integers(0, d["vocab_size"], (1, 7)).astype(np.int64)
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)).logits.numpy()
    pre = example_feeds(d, 1, 6, 0)
    pre.update(input_ids=ids[:, :6], attention_mask=np.ones((1, 6), np.int64), position_ids=np.arange(6, dtype=np.int64)[None])
    out = sess.run(None, pre)
    step = {"input_ids": ids[:, 6:], "attention_mask": np.ones((1, 7), np.int64), "position_ids": np.array([[6]], np.int64)}
    for i in range(d["num_hidden_layers"]):
        step[f"past_key_values.{i}.key"], step[f"past_key_values.{i}.value"] = out[1 + 2 * i], out[2 + 2 * i]
    last = sess.run(None, step)[0]
    diffs = {"prefill_logits": float(np.abs(out[0] - ref[:, :6]).max()), "decode_logits": float(np.abs(last - ref[:, 6:]).max())}
    worst = max(diffs, key=lambda k: diffs[k])
    if diffs[worst] > tolerance:
        raise StageError(f"the KV-cache decoder's {worst} differ from the PyTorch model by {diffs[worst]:.3g} (tolerance {tolerance:g})",
                         hint="raise model.tolerance if this is expected")
    return diffs


def genai_config(d: dict, model_file: str = "model.onnx", search: dict | None = None) -> dict:
    """ONNX Runtime GenAI's genai_config.json for the exported decoder."""
    eos = d["eos_token_id"] if d["eos_token_id"] is not None else 0
    return {
        "model": {
            "bos_token_id": d["bos_token_id"] if d["bos_token_id"] is not None else 0,
            "context_length": d["context_length"],
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": model_file,
                "head_size": d["head_size"], "hidden_size": d["hidden_size"],
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"},
                "num_attention_heads": d["num_attention_heads"], "num_hidden_layers": d["num_hidden_layers"],
                "num_key_value_heads": d["num_key_value_heads"],
            },
            "eos_token_id": eos, "pad_token_id": d["pad_token_id"] if d["pad_token_id"] is not None else eos,
            "type": "llama", "vocab_size": d["vocab_size"],
        },
        "search": {"do_sample": False, "num_beams": 1, "max_length": d["context_length"], "min_length": 0,
                   "past_present_share_buffer": False, "repetition_penalty": 1.0, "temperature": 1.0, "top_k": 1, "top_p": 1.0,
                   **(search or {})},
    }


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    return path


def torch_tokens(model, validation: list[list[int]], perplexity: list[list[int]], new_tokens: int) -> dict:
    """The FP32 PyTorch model's tokens in genrunner.evaluate's shape: teacher-forced argmax per validation
    position, greedy continuations (no early stop), the NLL of the perplexity chunks."""
    import torch

    tf, cont = [], []
    with torch.no_grad():
        for ids in validation:
            logits = model(torch.tensor([ids])).logits[0]
            tf.append([int(t) for t in logits.argmax(-1)])
            seq = list(ids)
            out = model(torch.tensor([seq]), use_cache=True)
            toks = [int(out.logits[0, -1].argmax())]
            past = out.past_key_values
            while len(toks) < new_tokens:
                out = model(torch.tensor([[toks[-1]]]), past_key_values=past, use_cache=True)
                past = out.past_key_values
                toks.append(int(out.logits[0, -1].argmax()))
            cont.append(toks)
        nll, count = 0.0, 0
        for ids in perplexity:
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            nll -= float(logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
            count += len(ids) - 1
    return {"teacher_forced": tf, "continuations": cont, "nll": nll, "nll_tokens": count}


def decoder_dims(onnx_path: Path) -> dict | None:
    """The sizes of a KV-cache decoder read from its graph (None: not one of ours)."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    ins = {i.name: i for i in m.graph.input}
    if "past_key_values.0.key" not in ins:
        return None
    shape = [d.dim_value or d.dim_param for d in ins["past_key_values.0.key"].type.tensor_type.shape.dim]
    layers = sum(1 for n in ins if n.startswith("past_key_values.") and n.endswith(".key"))
    return {"num_hidden_layers": layers, "num_key_value_heads": shape[1], "head_size": shape[3]}


def convert(ctx):
    """ingest.hf's exporter for task text-generation: the KV-cache decoder, checked against PyTorch."""
    from . import Converted, _opset
    from .hf import _copy_tokenizer, hf_record

    folder = Path(ctx.source.path)
    model, config = load_causal_lm(folder, ctx.source_where)
    out = Path(ctx.workdir) / "model.onnx"
    try:
        d = export(model, config, out, ctx.model.opset)
    except Exception as e:
        raise StageError(f"the KV-cache decoder export failed: {e.__class__.__name__}: {str(e).splitlines()[0][:240] if str(e) else ''}",
                         hint="rerun with --verbose for the traceback", where=ctx.source_where) from e
    diffs = check_export(model, out, d, ctx.model.tolerance)
    record = {"exporter": "torchscript (KV-cache decoder)", "max_abs_diff": diffs, "tolerance": ctx.model.tolerance,
              "exported_opset": _opset(out), "decoder": d, "hf": hf_record(folder, ctx.model)}
    outputs = {"tokenizer": (_copy_tokenizer(folder, Path(ctx.workdir) / "tokenizer"), "tokenizer")}
    if getattr(ctx, "torch_program", False):  # the ExecuTorch target's source: a static-cache torch.export program
        from .hf_decoder_et import save_program

        program, record["torch_program"] = save_program(model, d, Path(ctx.workdir) / "decoder_program", folder, ctx.model.tolerance)
        outputs["program"] = (program, "pt2-decoder")
    return Converted(out, None, record, checked=True, outputs=outputs)
