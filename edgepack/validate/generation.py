"""Text-generation builds: the token sets, the FP32 PyTorch reference, and greedy runs on devices.

    data node        token_sets(): generation.prompts / perplexity / calibration tokenized with the folder's
                     tokenizer, plus one prompt per generation.prompt_lengths (the prompts' tokens, cycled),
                     frozen as one content-addressed JSON artifact ("tokens")
    reference fp32   GenerationReferenceStage: the PyTorch model's teacher-forced tokens, greedy
                     continuations and perplexity NLL on those tokens (a worker: torch + transformers)
    validate T @ D   GenerateStage: the device runner's ``generate`` mode (devices/genrunner.py) on the
                     target's folder: TTFT p50/p90 and decode tokens/s per prompt length, peak RSS, and the
                     token metrics (validate/tokens.py) against the reference
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..artifact import Artifact
from ..devices import DeviceProfile, transport_for
from ..engine import Stage, StageResult, package_versions
from ..errors import BadInputError
from ..ingest.hf_text import read_lines
from ..progress_hooks import report

GENRUNNER = Path(__file__).resolve().parent.parent / "devices" / "genrunner.py"


def _tokenizer(folder: Path, where: str):
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise BadInputError(f"{path}: missing; text-generation reads the fast tokenizer file",
                            hint="save the tokenizer into the folder with tokenizer.save_pretrained(DIR)", where=where)
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def token_sets(lr, gen, folder: Path, context: int) -> dict:
    """Every token list a text-generation build needs (see the module docstring)."""
    where = lambda *f: lr.where("generation", *f)  # noqa: E731
    tok = _tokenizer(folder, lr.where("model", "path"))
    enc = lambda lines: [e.ids for e in tok.encode_batch(lines)]  # noqa: E731
    prompts = read_lines(lr.resolve(gen.prompts), where("prompts"))[: gen.max_prompts]  # (an empty line is an error)
    validation = [ids for ids in enc(prompts) if len(ids) >= 2]
    if not validation:
        raise BadInputError("every prompt is shorter than 2 tokens", where=where("prompts"))
    longest = max(len(v) for v in validation)
    if longest + gen.new_tokens > context or max(gen.prompt_lengths) + gen.new_tokens > context:
        raise BadInputError(f"prompts of up to {max(longest, max(gen.prompt_lengths))} tokens plus new_tokens {gen.new_tokens} "
                            f"exceed the model's context of {context} tokens", where=where("prompt_lengths"))
    stream = [t for ids in validation for t in ids]
    bench = {str(n): [stream[i % len(stream)] for i in range(n)] for n in gen.prompt_lengths}
    sets = {"validation": validation, "bench": bench, "perplexity": [], "calibration": validation, "new_tokens": gen.new_tokens}
    if gen.perplexity:  # the whole file as one text (blank lines allowed), scored in windows
        path = lr.resolve(gen.perplexity)
        if not path.is_file():
            raise BadInputError("text file not found", hint="check the path; it is relative to the recipe", where=where("perplexity"))
        try:
            flat = tok.encode(path.read_text(encoding="utf-8")).ids
        except UnicodeDecodeError as e:
            raise BadInputError(f"{path}: not UTF-8 (byte {e.start})", hint="save the file as UTF-8", where=where("perplexity")) from e
        w = min(gen.perplexity_window, context)
        sets["perplexity"] = [flat[i:i + w] for i in range(0, len(flat), w) if len(flat[i:i + w]) >= 2]
    if gen.calibration:
        sets["calibration"] = [ids for ids in enc(read_lines(lr.resolve(gen.calibration), where("calibration")))[:128] if ids]
    return sets


def freeze_tokens(sets: dict, directory: Path) -> Artifact:
    text = json.dumps(sets, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"tokens-{digest[:16]}.json"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    meta = {"prompts": len(sets["validation"]), "perplexity_chunks": len(sets["perplexity"]), "lengths": sorted(int(k) for k in sets["bench"])}
    return Artifact(path, "tokens", digest=digest, meta=meta)


class GenerationReferenceStage(Stage):
    """The FP32 PyTorch model's tokens on the build's token sets (hf_decoder.torch_tokens)."""

    kind = "reference.generation"
    version = "1"
    isolated = True
    uses = ("source", "tokens")

    def __init__(self, new_tokens: int, where: str):
        self.new_tokens = new_tokens
        self.where = where

    def config(self):
        return {"new_tokens": self.new_tokens}

    def toolchain(self):
        return package_versions("torch", "transformers")

    def run(self, inputs, workdir):
        from ..ingest.hf_decoder import load_causal_lm, torch_tokens

        sets = json.loads(Path(inputs["tokens"].path).read_text())
        report("reference", 0, 2, phase="load the PyTorch model")
        model, _ = load_causal_lm(Path(inputs["source"].path), self.where)
        report("reference", 1, 2, phase="teacher-forced and greedy tokens")
        ref = torch_tokens(model, sets["validation"], sets["perplexity"], self.new_tokens)
        report("reference", 2, 2, phase="done")
        out = Path(workdir) / "reference.json"
        out.write_text(json.dumps(ref))
        return StageResult({"tokens": Artifact(out, "tokens")}, {"prompts": len(ref["teacher_forced"]), "nll_tokens": ref["nll_tokens"]})


def reference_evaluation(specs, reference: Artifact) -> dict | None:
    """report.json "evaluate" of a text-generation build: each token metric of the PyTorch model itself."""
    from . import tokens as tm

    ref = json.loads(Path(reference.path).read_text())
    acc = tm.score(specs, ref, ref)
    if not acc["metrics"]:
        return None
    return {"primary": acc["primary"], "declared": True, "reference": acc["metrics"]}


def _backend(meta: dict, runtime: str) -> str:
    """Who generates: openvino-genai's LLMPipeline for the openvino target's stateful folder (edgepack's loop for
    an older, stateless one), else the recipe's generation.runtime."""
    if meta.get("runtime") == "openvino":
        return "openvino-genai" if meta.get("stateful") else "openvino"
    if meta.get("runtime") == "executorch":  # the .pte decoder: edgepack's loop over the ExecuTorch runtime
        return "executorch"
    return runtime


class GenerateStage(Stage):
    """Greedy generation of one target on one device (genrunner.py through the device's transport)."""

    kind = "validate.generate"
    version = "1"
    uses = ("artifact", "tokens", "reference")

    def __init__(self, profile: DeviceProfile, gen, metrics: list, threads: int | None = None):
        self.profile = profile
        self.gen = gen
        self.threads = profile.benchmark.get("threads") or threads  # the device's, else the recipe's benchmark.threads
        self.metrics = [m for m in metrics if getattr(m, "type", None) in ("token_agreement", "greedy_match", "perplexity")]

    def config(self):
        return {"device": self.profile.model_dump(mode="json"), "threads": self.threads,
                "generation": self.gen.model_dump(mode="json", include={"new_tokens", "runs", "runtime"}),
                "metrics": [m.model_dump(mode="json") for m in self.metrics]}

    def toolchain(self):
        from ..devices.genrunner import GENRUNNER_VERSION

        return {"genrunner": GENRUNNER_VERSION}

    def run(self, inputs, workdir):
        from . import tokens as tm

        art: Artifact = inputs["artifact"]
        backend = _backend(art.meta, self.gen.runtime)
        job = {"mode": "generate", "runtime": backend, "backend": backend, "new_tokens": self.gen.new_tokens,
               "runs": self.gen.runs, "protocol": {"threads": self.threads}}
        report("runs", 0, 1, phase="generate")
        files = {"artifact": art.path, "tokens": inputs["tokens"].path, "genrunner": GENRUNNER}
        result = transport_for(self.profile).execute(job, files, {})
        report("runs", 1, 1, phase="generate")
        ref = json.loads(Path(inputs["reference"].path).read_text())
        lengths = result["lengths"]
        first = lengths[min(lengths, key=int)]
        record = {
            "device": self.profile.name, "runtime": result["backend"], "runtime_version": result["runtime_version"],
            "host": result["host"], "threads": result["threads"], "mode": "generate", "cold_load_ms": result["load_ms"],
            "generation": {"new_tokens": self.gen.new_tokens, "lengths": lengths},
            # the summary's latency columns: time to first token at the shortest prompt length
            "latency": {"p50_ms": first["ttft_ms"]["p50"], "p90_ms": first["ttft_ms"]["p90"], "what": f"ttft at {min(lengths, key=int)} tokens"},
            "samples_ms": first["ttft_ms"]["samples"],
            "noisy": bool(first["ttft_ms"]["p50"] and (first["ttft_ms"]["p90"] - first["ttft_ms"]["p50"]) / first["ttft_ms"]["p50"] > 0.25),
            "memory": {"peak_rss_mb": result["peak_rss_mb"]},
            "transport": result.get("transport") or {"type": self.profile.transport.type.value},
            "accuracy": tm.score(self.metrics, result["tokens"], ref),
        }
        out = Path(workdir) / "tokens.json"
        out.write_text(json.dumps(result["tokens"]))
        return StageResult({"outputs": Artifact(out, "tokens")}, record)
