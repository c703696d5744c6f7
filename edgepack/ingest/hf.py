"""Hugging Face folders (``model.format: hf``) -> ONNX, plus the tokenizer that ships in the bundle.

A local folder only: ``config.json``, safetensors weights and tokenizer files; nothing is ever
downloaded (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE are set on import and in every worker, and every
``from_pretrained`` passes ``local_files_only=True``). ``check_folder`` names the file that is missing
before any stage runs.

Per task (``model.task``), an exporter in ``TASK_EXPORTERS``: feature-extraction and text-classification
are encoders (this module: the transformers model wrapped so it takes the recipe's int64 inputs
positionally and returns one tensor, exported with dynamic batch and sequence and checked against the
PyTorch model at the data's shape and at another batch/sequence size). text-generation (KV-cache
decoders) adds its own line there. With ``torch_program`` the convert also saves a static-shape
torch.export program (``program.pt2``), the PyTorch source the ExecuTorch target compiles: its
toolchain environment needs torch only, not transformers.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np

from ..errors import BadInputError, StageError
from ..worker import OFFLINE_ENV

os.environ.update(OFFLINE_ENV)  # before transformers is imported anywhere in this process

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
# any one of these makes a tokenizer (fast tokenizer file, WordPiece vocab, SentencePiece model, BPE vocab + merges)
TOKENIZER_SETS = (("tokenizer.json",), ("vocab.txt",), ("tokenizer.model",), ("spiece.model",),
                  ("sentencepiece.bpe.model",), ("vocab.json", "merges.txt"))
TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")

# task -> "module:function(ctx) -> Converted"; text-generation (KV-cache export) registers here
TASK_EXPORTERS: dict[str, str] = {
    "feature-extraction": "edgepack.ingest.hf:convert_encoder",
    "text-classification": "edgepack.ingest.hf:convert_encoder",
    "text-generation": "edgepack.ingest.hf_decoder:convert",
}


def check_folder(folder: Path, where: str) -> dict:
    """The folder has config.json, safetensors weights and tokenizer files; returns the parsed config.
    Each problem is one BadInputError naming the file and what is missing."""
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise BadInputError(f"{folder} {what}; format hf needs a Hugging Face folder (config.json, model.safetensors, tokenizer files)",
                            hint="save one with model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR)", where=where)
    config = folder / "config.json"
    if not config.is_file():
        raise BadInputError(f"{config}: missing; a Hugging Face folder needs its config.json",
                            hint="save the model with model.save_pretrained(DIR)", where=where)
    try:
        cfg = json.loads(config.read_text())
    except (OSError, ValueError) as e:
        raise BadInputError(f"{config}: not valid JSON ({e})", where=where) from e
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise BadInputError(f"{config}: has no 'model_type'", hint="save the model with model.save_pretrained(DIR)", where=where)
    _check_weights(folder, where)
    if not any(all((folder / f).is_file() for f in group) for group in TOKENIZER_SETS):
        names = ", ".join(" + ".join(g) for g in TOKENIZER_SETS)
        raise BadInputError(f"{folder}: no tokenizer files (one of {names})",
                            hint="save the tokenizer into the folder with tokenizer.save_pretrained(DIR)", where=where)
    return cfg


def _check_weights(folder: Path, where: str) -> None:
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        return
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise BadInputError(f"{index}: not a safetensors index ({e.__class__.__name__}: {e})", where=where) from e
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise BadInputError(f"{folder / missing[0]}: missing; {index.name} lists {len(shards)} weight shard(s), {len(missing)} not in the folder",
                                hint="copy every shard the index names into the folder", where=where)
        return
    legacy = [f for f in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack") if (folder / f).is_file()]
    if legacy:
        raise BadInputError(f"{folder / 'model.safetensors'}: missing; the folder has {legacy[0]}, and edgepack reads safetensors weights only",
                            hint="re-save with model.save_pretrained(DIR, safe_serialization=True)", where=where)
    raise BadInputError(f"{folder / 'model.safetensors'}: missing; the folder has no weights (model.safetensors or model.safetensors.index.json)",
                        hint="save the model with model.save_pretrained(DIR)", where=where)


def tokenizer_files(folder: Path) -> list[Path]:
    """The tokenizer's files in the folder (what ships in the bundle's tokenizer/)."""
    names = {f for group in TOKENIZER_SETS for f in group} | set(TOKENIZER_EXTRAS)
    return sorted(p for p in folder.iterdir() if p.name in names and p.is_file())


def folder_files(folder: Path) -> list[str]:
    """The folder's files that loading it reads: config.json, generation_config.json, the safetensors weights (an
    index and the shards it names) and the tokenizer's files. The build's source artifact is exactly these (its
    digest keys the stages; they travel to Ray workers through the cache store): another framework's weights, a
    README or a .git in the folder neither key nor move anything."""
    names = {"config.json", "generation_config.json", *WEIGHT_FILES, *(p.name for p in tokenizer_files(folder))}
    try:
        names |= set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        pass  # no index (or a broken one: check_folder names it)
    return sorted(n for n in names if isinstance(n, str) and ".." not in Path(n).parts and not Path(n).is_absolute()
                  and (folder / n).is_file())


_IMPORT_LOCK = threading.Lock()  # transformers' lazy module import is not thread-safe


def load_tokenizer(folder: Path, where: str):
    """The folder's tokenizer (transformers AutoTokenizer). Called from the build's data nodes, which the local
    executor runs in threads: two recipes' data nodes importing transformers at once made one of them fail
    ("cannot import name 'AutoTokenizer'"), so the import and the load hold a lock."""
    check_folder(folder, where)
    try:
        with _IMPORT_LOCK:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
        raise BadInputError(f"{folder}: cannot load its tokenizer ({_line(e)})",
                            hint="check the tokenizer files; tokenizer.save_pretrained(DIR) writes a complete set", where=where) from e


def load_model(folder: Path, task: str, where: str):
    """The transformers model for ``task``, float32, eval mode; every weight the model needs must be in the folder."""
    check_folder(folder, where)
    import torch
    import transformers

    cls = transformers.AutoModelForSequenceClassification if task == "text-classification" else transformers.AutoModel
    try:
        model, info = cls.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32,
                                          attn_implementation="eager", output_loading_info=True)
    except Exception as e:
        raise BadInputError(f"{folder}: cannot load as a {task} model ({_line(e)})",
                            hint="check config.json and the weights match (model.save_pretrained(DIR) writes both)", where=where) from e
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise BadInputError(f"{folder}: the weights lack {len(missing)} tensor(s) a {task} model needs ({', '.join(missing[:3])})",
                            hint="a text-classification folder needs its trained head; save the fine-tuned model" if task == "text-classification"
                            else "save the complete model with model.save_pretrained(DIR)", where=where)
    return model.eval()


def _line(e: Exception) -> str:
    text = str(e).strip()
    return f"{e.__class__.__name__}: {text.splitlines()[0][:200] if text else ''}"


def wrap(model, names: list[str], task: str, pooling: str | None, normalize: bool, mask4d: bool = False):
    """A torch module taking the recipe's inputs positionally (in ``names`` order) and returning one tensor.
    ``mask4d``: hand the model the attention mask as the additive [batch, 1, 1, sequence] float mask it builds
    itself (the same numbers; transformers' own mask code indexes tensors in a way PT2E quantization cannot trace)."""
    import inspect

    import torch

    accepted = set(inspect.signature(model.forward).parameters)
    unknown = [n for n in names if n not in accepted]
    if unknown:
        raise BadInputError(f"model.inputs: {unknown} is not an input of {type(model).__name__} (it takes {', '.join(sorted(accepted & _TEXT_ARGS)) or 'none'})",
                            hint="name the inputs input_ids, attention_mask (token_type_ids when the model uses it)")
    if len(names) > 4:
        raise BadInputError(f"model.inputs: {len(names)} inputs; an hf encoder takes at most 4")

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x0, x1=None, x2=None, x3=None):
            feeds = dict(zip(names, (x0, x1, x2, x3)))
            args = dict(feeds)
            if mask4d and "attention_mask" in feeds:
                m4 = feeds["attention_mask"][:, None, None, :].to(torch.float32)
                args["attention_mask"] = (1.0 - m4) * torch.finfo(torch.float32).min
            out = self.model(**args, return_dict=True)
            if task == "text-classification":
                return out.logits
            h = out.last_hidden_state
            if pooling == "none":
                return h
            if pooling == "cls":
                e = h[:, 0]
            elif "attention_mask" in feeds:
                m = feeds["attention_mask"].unsqueeze(-1).to(h.dtype)
                e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            else:
                e = h.mean(1)
            return torch.nn.functional.normalize(e, dim=-1) if normalize else e

    return Encoder().eval()


_TEXT_ARGS = {"input_ids", "attention_mask", "token_type_ids", "position_ids"}


def convert(ctx):
    """The converter for ``format: hf`` (ingest.CONVERTERS): the task's exporter."""
    import importlib

    task = ctx.model.task.value
    spec = TASK_EXPORTERS.get(task)
    if spec is None:
        raise BadInputError(f"task '{task}' cannot be exported by this edgepack (exporters: {', '.join(TASK_EXPORTERS)})",
                            where=f"{ctx.source_where}.task")
    module, _, fn = spec.partition(":")
    return getattr(importlib.import_module(module), fn)(ctx)


def convert_encoder(ctx):
    """An encoder folder -> ONNX with dynamic batch and sequence, checked against the PyTorch model."""
    import torch

    from . import Converted
    from .torch import EXPORTERS, ExportSpec, _run_source, dynamic_axes, export_checked

    m = ctx.model
    folder = Path(ctx.source.path)
    where = f"{ctx.source_where}.path"
    names = [i.name for i in m.inputs]
    model = load_model(folder, m.task.value, where)
    module = wrap(model, names, m.task.value, m.pooling.value if m.pooling else None, m.normalize)
    source_outputs = _run_source(module, ctx.samples, names)
    out_names = list(ctx.output_names) or ["output_0"]
    batch2 = tuple(torch.from_numpy(np.concatenate([ctx.samples[k % len(ctx.samples)][n] for k in range(2)])) for n in names)
    spec = ExportSpec(names, out_names, dynamic_axes(m.inputs), m.opset)
    # TorchScript first: on a 2-layer BERT it exports in ~2 s against ~28 s for dynamo (decompositions and the
    # onnxscript optimizer), measured on this 2-core machine; dynamo is the fallback.
    attempts = [e for e in EXPORTERS if e[0] == "torchscript"] + [e for e in EXPORTERS if e[0] != "torchscript"]
    path, record = export_checked(module, attempts, batch2, spec, ctx.workdir, ctx.samples, source_outputs, m.tolerance)
    record["dynamic_check"] = _dynamic_check(path, module, ctx.samples, names, m.tolerance)
    record["hf"] = hf_record(folder, m)
    outputs = {"tokenizer": (_copy_tokenizer(folder, ctx.workdir / "tokenizer"), "tokenizer")}
    if getattr(ctx, "torch_program", False):
        program = wrap(model, names, m.task.value, m.pooling.value if m.pooling else None, m.normalize, mask4d=True)
        same = "attention_mask" in names and _same_outputs(program, source_outputs, ctx.samples, names, m.tolerance)
        outputs["program"] = (_save_program(program if same else module, ctx.samples[0], names, ctx.workdir / "program.pt2"), "pt2")
        record["torch_program"] = {"file": "program.pt2", "shape": "the data's (batch 1)", "for": "the ExecuTorch target",
                                   "attention_mask": "additive 4-D float mask" if same else "as the model takes it"}
    return Converted(path, source_outputs, record, checked=True, outputs=outputs)


def _dynamic_check(path: Path, module, samples, names, tolerance: float) -> dict:
    """Run the ONNX at another batch and sequence size than the export's and compare with PyTorch."""
    from . import compare_outputs, run_onnx
    from .torch import _run_source

    seq = int(samples[0][names[0]].shape[1])
    short = max(2, seq // 2) if seq > 2 else seq
    feed = {n: np.concatenate([s[n] for s in (samples * 3)[:3]])[:, :short] for n in names}
    try:
        got = run_onnx(path, [feed])
    except Exception as e:
        raise StageError(f"the ONNX export does not run at batch 3, sequence {short} ({_line(e)})",
                         hint="the export lost its dynamic batch/sequence axes; --verbose shows the exporter's messages") from e
    diffs = compare_outputs(_run_source(module, [feed], names), got, ["output"])
    if diffs["output"] > tolerance:
        raise StageError(f"the ONNX export differs from PyTorch by {diffs['output']:.3g} at batch 3, sequence {short} (tolerance {tolerance:g})",
                         hint="the exporter specialized a shape; raise model.tolerance if this is expected")
    return {"shape": [3, short], "max_abs_diff": diffs["output"]}


def hf_record(folder: Path, m) -> dict:
    cfg = json.loads((folder / "config.json").read_text())
    rec = {"task": m.task.value, "model_type": cfg.get("model_type"), "architectures": cfg.get("architectures"),
           "pooling": m.pooling.value if m.pooling else None, "normalize": m.normalize}
    if m.task.value == "text-classification" and isinstance(cfg.get("id2label"), dict):
        rec["labels"] = {str(k): v for k, v in cfg["id2label"].items()}
    return rec


def _copy_tokenizer(folder: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for f in tokenizer_files(folder):
        shutil.copyfile(f, out / f.name)
    return out


def _same_outputs(module, source_outputs, samples, names, tolerance: float) -> bool:
    """Whether ``module`` gives the source outputs on the samples (a model that does not take a 4-D mask differs or raises)."""
    from . import compare_outputs
    from .torch import _run_source

    try:
        return max(compare_outputs(source_outputs, _run_source(module, samples, names), ["output"]).values()) <= tolerance
    except Exception:  # noqa: BLE001 - the plain module is used then
        return False


def _save_program(module, sample: dict, names: list[str], out: Path) -> Path:
    import torch

    example = tuple(torch.from_numpy(np.ascontiguousarray(sample[n])) for n in names)
    try:
        ep = torch.export.export(module, example, strict=False)
    except Exception as e:
        raise StageError(f"torch.export cannot export the model for ExecuTorch ({_line(e)})",
                         hint="drop the executorch target, or see the stage log") from e
    torch.export.save(ep, str(out))
    return out
