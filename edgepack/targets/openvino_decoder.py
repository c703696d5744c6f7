"""OpenVINO for text-generation models: the KV-cache decoder as IR, weights compressed by NNCF.

Precisions: fp32, fp16 (weights stored as float16), int8 and int4 (``nncf.compress_weights``: INT8_ASYM per
channel, INT4_SYM in groups of 32 (data-free); activations stay float). The folder follows OpenVINO GenAI's
names for the model (``openvino_model.xml`` / ``.bin``) beside ``genai_config.json`` (the sizes and input names
the device runner reads) and the Hugging Face tokenizer files. Not in it: OpenVINO GenAI's
``openvino_tokenizer.xml`` / ``openvino_detokenizer.xml`` (they need openvino-tokenizers) and a stateful model
(the cache stays explicit inputs and outputs, the same graph every runtime runs).
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


def compile_decoder(stage, src: Artifact, source: Artifact, workdir: Path) -> StageResult:
    import openvino as ov

    from ..ingest.hf import tokenizer_files
    from ..ingest.hf_decoder import dims, genai_config, write_json
    from .openvino import _op_histogram, conversion_error

    precision = stage.precision
    try:
        model = ov.convert_model(str(src.path))
    except Exception as e:
        raise conversion_error(e, src.path) from e
    record: dict = {"precision": precision, "converter": "openvino.convert_model", "layout": "openvino-genai (model files)"}
    if precision in ("int8", "int4"):
        import nncf

        mode = nncf.CompressWeightsMode.INT4_SYM if precision == "int4" else nncf.CompressWeightsMode.INT8_ASYM
        kw = {"group_size": 32, "ratio": 1.0} if precision == "int4" else {}
        try:
            model = nncf.compress_weights(model, mode=mode, all_layers=True, **kw)
        except Exception as e:
            raise StageError(f"NNCF weight compression failed: {e.__class__.__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}") from e
        record["nncf"] = {"compress_weights": mode.value, **kw, "all_layers": True}
    folder = workdir / "openvino"
    folder.mkdir()
    ov.save_model(model, str(folder / "openvino_model.xml"), compress_to_fp16=precision == "fp16")
    cfg = json.loads((Path(source.path) / "config.json").read_text())
    write_json(folder / "genai_config.json", genai_config(dims(SimpleNamespace(**cfg)), model_file="openvino_model.xml"))
    for f in tokenizer_files(Path(source.path)):
        shutil.copyfile(f, folder / f.name)
    record["ops"] = _op_histogram(ov.Core().read_model(str(folder / "openvino_model.xml")))
    meta = {"runtime": "openvino", "precision": precision, "layout": "openvino-genai", "files": sorted(p.name for p in folder.iterdir())}
    return StageResult({"artifact": Artifact(folder, "openvino-genai", inputs=src.inputs, outputs=src.outputs, meta=meta)}, record)
