"""OpenVINO for text-generation models: openvino-genai's folder, which its ``LLMPipeline`` runs as it is.

    openvino_model.xml / .bin          the KV-cache decoder (ingest/hf_decoder.py) made *stateful*: the cache is
                                       internal state (ReadValue/Assign pairs, one per past/present tensor), a
                                       ``beam_idx`` input [batch] i32 reorders it; inputs input_ids, attention_mask,
                                       position_ids, beam_idx; output logits
    openvino_tokenizer.xml / .bin      the Hugging Face tokenizer as OpenVINO IR (openvino-tokenizers'
    openvino_detokenizer.xml / .bin    convert_tokenizer, with_detokenizer), checked against it on a sample text
    config.json, generation_config.json, tokenizer files   as optimum-intel writes them; genai_config.json: the
                                       sizes edgepack's device runner reads

Precisions: fp32, fp16 (weights stored as float16), int8 and int4 (``nncf.compress_weights``: INT8_ASYM per
channel, INT4_SYM in groups of 32; activations stay float). int4's ``options.weight_compression.algorithm``: rtn
(data-free, default) or awq (NNCF's AWQ, optionally with scale estimation, on the build's calibration tokens: each
text one prefill of the stateful IR from an empty cache, the state reset between items by NNCF's engine).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

from ..artifact import Artifact
from ..engine import StageResult
from ..errors import StageError

DECODER_PRECISIONS = ("fp32", "fp16", "int8", "int4")
TOKENIZER_SAMPLE = "the edge device runs 12 small models, and every token counts! Ünïcode?"


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{e.__class__.__name__}: {text.splitlines()[0][:300] if text else ''}"


def make_stateful(model, layers: int) -> None:
    """Hide the cache inputs/outputs as state variables (openvino's MakeStateful), the way optimum-intel does:
    a ``beam_idx`` parameter gathers every cached tensor along the batch axis first, and each variable starts as
    zeros [batch, kv_heads, 0, head] (batch from input_ids), so openvino-genai finds the sequence axis (the 0)."""
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    from ..ingest.hf_decoder import io_names

    ins, outs = io_names(layers)
    past, present = ins[3:], outs[1:]
    ids = model.input("input_ids")
    beam = ops.parameter(ov.PartialShape([ids.get_partial_shape()[0]]), ov.Type.i32, name="beam_idx")
    beam.output(0).get_tensor().set_names({"beam_idx"})
    model.add_parameters([beam])
    for name in past:
        port = model.input(name)
        consumers = list(port.get_target_inputs())
        gathered = ops.gather(port, beam, ops.constant(np.int64(0)))
        for c in consumers:
            c.replace_source_output(gathered.output(0))
    model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(model, dict(zip(past, present)))
    batch = ops.gather(ops.shape_of(ids, output_type="i64"), ops.constant(np.array([0], np.int64)), ops.constant(np.int64(0)))
    for op in model.get_ops():
        if op.get_type_name() == "ReadValue":
            shape = op.get_output_partial_shape(0)  # [batch?, kv_heads, past?, head]
            dims = [batch, *(ops.constant(np.array([d.get_length() if d.is_static else 0], np.int64)) for d in list(shape)[1:])]
            op.set_arguments([ops.broadcast(ops.constant(np.float32(0), dtype=op.get_output_element_type(0)), ops.concat(dims, 0))])
    model.validate_nodes_and_infer_types()


def convert_tokenizer(source: Path, folder: Path) -> dict:
    """openvino_tokenizer / openvino_detokenizer IR from the folder's Hugging Face tokenizer; both are run on
    TOKENIZER_SAMPLE and must give the Hugging Face tokenizer's ids and text back."""
    import numpy as np
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer as to_ir
    from transformers import PreTrainedTokenizerFast  # tokenizer.json, what edgepack tokenizes with (not AutoTokenizer: +8 s of imports)

    from ..ingest.hf_decoder import offline

    offline()
    hf = PreTrainedTokenizerFast.from_pretrained(str(source), local_files_only=True)
    try:
        tok, detok = to_ir(hf, with_detokenizer=True)
    except Exception as e:
        raise StageError(f"openvino-tokenizers cannot convert the tokenizer: {_first_line(e)}",
                         hint="this tokenizer type has no OpenVINO IR; leave the openvino target out for it") from e
    ov.save_model(tok, str(folder / "openvino_tokenizer.xml"))
    ov.save_model(detok, str(folder / "openvino_detokenizer.xml"))
    core = ov.Core()
    want = hf(TOKENIZER_SAMPLE)["input_ids"]
    got = core.compile_model(tok, "CPU")([TOKENIZER_SAMPLE])["input_ids"][0].tolist()
    text = core.compile_model(detok, "CPU")(np.asarray([want], np.int64))["string_output"][0]
    back = hf.decode(want, skip_special_tokens=True)
    if got != want or text != back:
        raise StageError(f"the OpenVINO tokenizer IR differs from the Hugging Face tokenizer on {TOKENIZER_SAMPLE!r}: "
                         f"ids {got[:12]} vs {want[:12]}, text {text!r} vs {back!r}", hint="report the tokenizer type to openvino-tokenizers")
    import openvino_tokenizers

    return {"converter": f"openvino-tokenizers {openvino_tokenizers.__version__}", "sample_ids": len(want), "matches_hf": True}


def _configs(source: Path, folder: Path, cfg: dict) -> None:
    """config.json, generation_config.json (written from config.json when the folder has none) and the tokenizer files."""
    from ..ingest.hf import tokenizer_files
    from ..ingest.hf_decoder import dims, genai_config, write_json

    shutil.copyfile(source / "config.json", folder / "config.json")
    if (source / "generation_config.json").is_file():
        shutil.copyfile(source / "generation_config.json", folder / "generation_config.json")
    else:
        write_json(folder / "generation_config.json", {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if cfg.get(k) is not None})
    write_json(folder / "genai_config.json", genai_config(dims(SimpleNamespace(**cfg)), model_file="openvino_model.xml"))
    for f in tokenizer_files(source):
        shutil.copyfile(f, folder / f.name)


def calibration_items(tokens: Artifact, limit: int) -> list[dict]:
    """NNCF dataset items for the stateful IR: one prefill per calibration text (decoder_quant.calibration_sets,
    the same tokens ONNX Runtime's gptq calibrates on), its inputs as openvino-genai feeds them."""
    import numpy as np

    from ..optimize.decoder_quant import calibration_sets

    items = []
    for ids in calibration_sets(tokens, limit):
        n = len(ids)
        items.append({"input_ids": np.asarray([ids], np.int64), "attention_mask": np.ones((1, n), np.int64),
                      "position_ids": np.arange(n, dtype=np.int64)[None], "beam_idx": np.zeros(1, np.int32)})
    return items


def compress(nncf, model, precision: str, method, tokens: Artifact | None):
    """``nncf.compress_weights`` of the stateful IR and its record. int4: every layer (all_layers: the embedding and
    lm_head too), rtn or awq (``method``: recipe_targets.WeightCompression); int8 modes always compress all of them
    (NNCF 3.4 refuses all_layers with them)."""
    mode = nncf.CompressWeightsMode.INT4_SYM if precision == "int4" else nncf.CompressWeightsMode.INT8_ASYM
    kw: dict = {"group_size": 32, "ratio": 1.0, "all_layers": True} if precision == "int4" else {}
    record: dict = {"compress_weights": mode.value, **kw}
    if precision == "int4":
        awq = method is not None and method.algorithm == "awq"
        record.update(algorithm="awq" if awq else "rtn", data_aware=awq)
        if awq:
            if tokens is None:
                raise StageError("algorithm awq is data-aware: this compile got no calibration tokens", hint="give the recipe generation.prompts or generation.calibration")
            items = calibration_items(tokens, method.samples)
            kw.update(dataset=nncf.Dataset(items), subset_size=len(items), awq=True, scale_estimation=method.scale_estimation)
            record.update(awq=True, scale_estimation=method.scale_estimation, calibration_samples=len(items),
                          calibration_tokens=sum(int(i["input_ids"].shape[1]) for i in items))
    try:
        return nncf.compress_weights(model, mode=mode, **kw), record
    except Exception as e:
        raise StageError(f"NNCF weight compression failed: {_first_line(e)}") from e


def compile_decoder(stage, src: Artifact, source: Artifact, workdir: Path, tokens: Artifact | None = None) -> StageResult:
    import openvino as ov

    from .openvino import _op_histogram, conversion_error, nncf_on_openvino

    precision = stage.precision
    cfg = json.loads((Path(source.path) / "config.json").read_text())
    try:
        model = ov.convert_model(str(src.path))
    except Exception as e:
        raise conversion_error(e, src.path) from e
    try:
        make_stateful(model, int(cfg["num_hidden_layers"]))
    except Exception as e:
        raise StageError(f"the stateful transformation failed: {_first_line(e)}") from e
    record: dict = {"precision": precision, "converter": "openvino.convert_model", "layout": "openvino-genai", "stateful": True}
    if precision in ("int8", "int4"):
        with nncf_on_openvino() as nncf:
            model, record["nncf"] = compress(nncf, model, precision, getattr(stage, "weight_compression", None), tokens)
    folder = workdir / "openvino"
    folder.mkdir()
    ov.save_model(model, str(folder / "openvino_model.xml"), compress_to_fp16=precision == "fp16")
    record["tokenizer"] = convert_tokenizer(Path(source.path), folder)
    _configs(Path(source.path), folder, cfg)
    saved = ov.Core().read_model(str(folder / "openvino_model.xml"))
    record["ops"] = _op_histogram(saved)
    record["inputs"] = sorted(p.get_any_name() for p in saved.inputs)
    record["files"] = sorted(p.name for p in folder.iterdir())
    meta = {"runtime": "openvino", "precision": precision, "layout": "openvino-genai", "stateful": True, "files": record["files"]}
    return StageResult({"artifact": Artifact(folder, "openvino-genai", inputs=src.inputs, outputs=src.outputs, meta=meta)}, record)
