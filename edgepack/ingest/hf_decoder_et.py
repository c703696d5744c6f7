"""The KV-cache decoder for ExecuTorch: a torch.export program with a static cache in mutable buffers.

Exported in the build's environment (torch + transformers) and saved with ``torch.export.save``; the
executorch toolchain environment (torch, executorch, torchao; no transformers) loads it, quantizes and
lowers it (targets/executorch_decoder.py). Same torch on both sides (the executorch lock pins the build's).

    forward(tokens [1, seq] int64, input_pos [1] int64) -> logits [1, seq, vocab]
    buffers k_cache.{i} / v_cache.{i} [1, kv_heads, context, head_dim] float32, written in place

``seq`` is dynamic (1..context): one method serves prefill and decode. The cache lives in the program (the
layout of ExecuTorch's own Llama export): a call writes its keys and values at ``input_pos .. input_pos+seq-1``
and attends to every cached position up to its own, so a new prompt just starts again at input_pos 0 (later
positions are masked). The attention and rotary math are the ONNX decoder's (ingest/hf_decoder.py), on the
Hugging Face model's own modules. Checked after export against the Hugging Face model: a prefill, then a
decode step on the program's cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import StageError

MAX_CONTEXT = 2048  # cache length cap: the model's max_position_embeddings, at most this
LAYOUT = "static-kv-mutable-buffers"


def _module(model, d: dict, context: int):
    import torch

    from .hf_decoder import repeat_kv, rotated_qkv

    class StaticKVDecoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model
            shape = (1, d["num_key_value_heads"], context, d["head_size"])
            for i in range(d["num_hidden_layers"]):
                self.register_buffer(f"k_cache_{i}", torch.zeros(shape), persistent=False)
                self.register_buffer(f"v_cache_{i}", torch.zeros(shape), persistent=False)

        def forward(self, tokens, input_pos):
            inner = self.m.model
            seq = tokens.shape[1]
            pos = input_pos + torch.arange(seq, dtype=torch.int64)
            h = inner.embed_tokens(tokens)
            rot = inner.rotary_emb
            freqs = pos[None, :, None].float() * rot.inv_freq[None, None, :].float()
            emb = torch.cat([freqs, freqs], dim=-1)
            scale = float(getattr(rot, "attention_scaling", 1.0))
            cos, sin = (emb.cos() * scale)[:, None], (emb.sin() * scale)[:, None]
            keys = torch.arange(context, dtype=torch.int64)
            mask = torch.where(keys[None, :] <= pos[:, None], 0.0, torch.finfo(torch.float32).min)[None, None]
            for i, layer in enumerate(inner.layers):
                x = layer.input_layernorm(h)
                h = h + self._attention(layer.self_attn, x, cos, sin, mask, pos, i)
                h = h + layer.mlp(layer.post_attention_layernorm(h))
            return self.m.lm_head(inner.norm(h))

        def _attention(self, attn, x, cos, sin, mask, pos, i):
            b, s = x.shape[0], x.shape[1]
            hd, nh = d["head_size"], d["num_attention_heads"]
            q, k, v = rotated_qkv(attn, x, cos, sin, d)
            kc, vc = getattr(self, f"k_cache_{i}"), getattr(self, f"v_cache_{i}")
            kc[:, :, pos] = k  # index_put_ on the buffer: ExecuTorch keeps it as the program's mutable state
            vc[:, :, pos] = v
            kk, vv = repeat_kv(kc, vc, d)
            w = torch.matmul(q, kk.transpose(2, 3)) * (hd ** -0.5) + mask
            out = torch.matmul(torch.softmax(w, dim=-1), vv).transpose(1, 2).reshape(b, s, nh * hd)
            return attn.o_proj(out)

    return StaticKVDecoder().eval()


def layout(d: dict, context: int) -> dict:
    """decoder.json: what the device runner (devices/genrunner.py EtDecoder) and the ExecuTorch compile read."""
    return {"layout": LAYOUT, "method": "forward", "inputs": ["tokens", "input_pos"], "outputs": ["logits"],
            "max_context": context, "max_seq": context, "cache": {"buffers": "k_cache_{i} / v_cache_{i}",
                                                                 "shape": [1, d["num_key_value_heads"], context, d["head_size"]]},
            **{k: d[k] for k in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_size", "hidden_size",
                                 "vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")}}


def save_program(model, d: dict, folder: Path, tokenizer_from: Path, tolerance: float) -> tuple[Path, dict]:
    """``folder``/program.pt2 + decoder.json + tokenizer/ (the executorch target's source); returns (folder, record)."""
    import warnings

    import torch

    from .hf import _copy_tokenizer

    context = int(min(d["context_length"] or MAX_CONTEXT, MAX_CONTEXT))
    module = _module(model, d, context)
    example = (torch.zeros((1, 3), dtype=torch.int64), torch.tensor([0], dtype=torch.int64))
    seq = torch.export.Dim("seq", min=1, max=context)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = torch.export.export(module, example, dynamic_shapes=({1: seq}, None), strict=False)
    except Exception as e:
        raise StageError(f"torch.export cannot export the KV-cache decoder for ExecuTorch: {e.__class__.__name__}: {str(e).splitlines()[0][:240] if str(e) else ''}",
                         hint="drop the executorch target, or rerun with --verbose") from e
    diffs = check_program(model, ep, d, tolerance)
    torch.export.save(ep, str(folder / "program.pt2"))
    (folder / "decoder.json").write_text(json.dumps(layout(d, context), indent=2, sort_keys=True) + "\n")
    _copy_tokenizer(tokenizer_from, folder / "tokenizer")
    return folder, {"file": "program.pt2", "layout": LAYOUT, "max_context": context, "max_abs_diff": diffs, "for": "the ExecuTorch target"}


def check_program(model, ep, d: dict, tolerance: float) -> dict:
    """The exported program's logits vs the Hugging Face model: a prefill of 6 tokens, then a decode step."""
    import torch

    rng = np.random.default_rng(1)
    ids = torch.from_numpy(rng.integers(0, d["vocab_size"], (1, 7)).astype(np.int64))
    run = ep.module()
    with torch.no_grad():
        ref = model(ids).logits
        pre = run(ids[:, :6], torch.tensor([0]))
        step = run(ids[:, 6:], torch.tensor([6]))
    diffs = {"prefill_logits": float((pre - ref[:, :6]).abs().max()), "decode_logits": float((step - ref[:, 6:]).abs().max())}
    worst = max(diffs, key=lambda k: diffs[k])
    if diffs[worst] > tolerance:
        raise StageError(f"the ExecuTorch decoder program's {worst} differ from the PyTorch model by {diffs[worst]:.3g} (tolerance {tolerance:g})",
                         hint="raise model.tolerance if this is expected")
    return diffs
