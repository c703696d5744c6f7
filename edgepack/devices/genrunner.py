"""edgepack generation runner: greedy decoding of a KV-cache decoder on the device.

Self-contained like runner.py (numpy and the runtime only): the transports ship it as a job file and
runner.py's ``generate`` mode imports it from there. Also imported in-process by the build (the quantize
pass's token budget). The artifact is a folder with ``genai_config.json`` and the ONNX decoder it names (``executorch``: a folder with
``decoder.json`` and model.pte, the cache held in the program).

Job fields: ``artifact`` (the folder), ``tokens`` (a JSON file: ``validation`` prompts, ``perplexity``
chunks and ``bench`` prompts by length, all token ids), ``new_tokens``, ``runs``, ``protocol.threads``,
``backend`` (``onnxruntime`` / ``openvino``: this module's loop over one InferenceSession / infer request;
``onnxruntime-genai`` / ``openvino-genai``: the runtime's own generator times the runs and makes the continuations,
this module's loop gives the teacher-forced tokens and perplexity on the same folder; ``executorch``: this
module's loop over the ExecuTorch runtime, the cache held in the program).
Result: per prompt length TTFT p50/p90 and decode tokens/s; teacher-forced argmax per validation
position, greedy continuations, perplexity NLL; peak RSS.
"""

from __future__ import annotations

import json
import os
import time

GENRUNNER_VERSION = "2"


def _np():
    import numpy as np

    return np


DEFAULT_NAMES = ({"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                  "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                 {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"})


def read_config(folder: str) -> dict:
    with open(os.path.join(folder, "genai_config.json")) as f:
        return json.load(f)["model"]


class OrtDecoder:
    """One InferenceSession over the decoder; prefill and decode steps with the cache as numpy arrays."""

    def __init__(self, path: str, threads=None, model_file=None):
        """``path``: a genai folder (genai_config.json names the model and its inputs), or the ONNX file itself."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        if os.path.isdir(path):
            dec = read_config(path)["decoder"]
            self.names = dec["inputs"], dec["outputs"]
            path = os.path.join(path, model_file or dec["filename"])
        else:
            self.names = DEFAULT_NAMES
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        past = {i.name: i.shape for i in self.sess.get_inputs()}
        self.layers = sum(1 for n in past if n.startswith("past_") and n.endswith(".key"))
        _, self.kv_heads, _, self.head = past[self.names[0]["past_key_names"] % 0]
        self.version = ort.__version__

    def _feeds(self, ids, past, past_len):
        np = _np()
        ins = self.names[0]
        n = ids.shape[1]
        feeds = {ins["input_ids"]: ids, ins["attention_mask"]: np.ones((1, past_len + n), np.int64),
                 ins["position_ids"]: np.arange(past_len, past_len + n, dtype=np.int64)[None]}
        for i in range(self.layers):
            feeds[ins["past_key_names"] % i], feeds[ins["past_value_names"] % i] = past[2 * i], past[2 * i + 1]
        return feeds

    def empty(self):
        np = _np()
        z = np.zeros((1, self.kv_heads, 0, self.head), np.float32)
        return [z] * (2 * self.layers)

    def forward(self, ids, past, past_len):
        """(logits [1, n, vocab], the new cache) for token ids [1, n] after ``past_len`` cached tokens."""
        out = self.sess.run(None, self._feeds(ids, past, past_len))
        return out[0], out[1:]


def ov_config(threads) -> dict:
    """The CPU plugin at f32 (compute and KV cache: the defaults may be bf16 and u8), as FP32 parity needs."""
    config: dict = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


class OvDecoder(OrtDecoder):
    """The same decoder as OpenVINO IR (openvino_model.xml in the folder), on the CPU plugin at f32. A stateful
    IR (openvino-genai's: a beam_idx input, the cache as state) keeps the cache in the infer request."""

    def __init__(self, path: str, threads=None, model_file=None):
        import openvino as ov

        dec = read_config(path)["decoder"]
        self.names = dec["inputs"], dec["outputs"]
        core = ov.Core()
        model = core.read_model(os.path.join(path, model_file or dec["filename"]))
        past = {p.get_any_name(): p.get_partial_shape() for p in model.inputs}
        self.stateful = "beam_idx" in past
        self.layers = sum(1 for n in past if n.startswith("past_") and n.endswith(".key"))  # 0 when stateful
        if not self.stateful:
            shape = past[self.names[0]["past_key_names"] % 0]
            self.kv_heads, self.head = shape[1].get_length(), shape[3].get_length()
        self.req = core.compile_model(model, "CPU", ov_config(threads)).create_infer_request()
        self.out_names = [o.get_any_name() for o in model.outputs]
        self.version = ov.get_version()

    def empty(self):
        if self.stateful:
            self.req.reset_state()
            return []
        return super().empty()

    def _feeds(self, ids, past, past_len):
        feeds = super()._feeds(ids, past, past_len)
        if self.stateful:
            feeds["beam_idx"] = _np().zeros(ids.shape[0], _np().int32)
        return feeds

    def forward(self, ids, past, past_len):
        self.req.infer(self._feeds(ids, past, past_len))
        out = [self.req.get_output_tensor(k).data.copy() for k in range(len(self.out_names))]
        return out[0], out[1:]


class EtDecoder:
    """An ExecuTorch ``.pte`` decoder (decoder.json in the folder: ingest/hf_decoder_et.py's layout): the cache is
    the program's own state (mutable buffers), so ``past`` is not passed around; a call at ``past_len`` writes
    its positions and attends to everything before them (a new prompt starts again at 0)."""

    def __init__(self, path: str, threads=None, model_file=None):
        import torch
        from executorch.runtime import Runtime

        with open(os.path.join(path, "decoder.json")) as f:
            cfg = json.load(f)
        if threads:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(int(threads))  # XNNPACK's threadpool
        try:  # quantize/dequantize kernels outside the delegate; absent from some builds
            import executorch.kernels.quantized  # noqa: F401
        except ImportError:
            pass
        self.torch = torch
        self.method = Runtime.get().load_program(os.path.join(path, model_file or cfg.get("file", "model.pte"))).load_method(cfg["method"])
        self.max_context = int(cfg["max_context"])
        from importlib.metadata import version

        self.version = version("executorch")

    def empty(self):
        return None

    def forward(self, ids, past, past_len):
        if past_len + ids.shape[1] > self.max_context:
            raise ValueError(f"{past_len + ids.shape[1]} tokens exceed the program's cache of {self.max_context}")
        t = self.torch
        out = self.method.execute([t.from_numpy(_np().ascontiguousarray(ids)), t.tensor([past_len], dtype=t.int64)])
        return out[0].numpy().copy(), None  # the method's output memory is reused by its next call


def greedy(dec, prompt, new_tokens: int):
    """Greedy continuation of ``prompt`` (a list of ids): (tokens, ttft_ms, decode step times in ms)."""
    np = _np()
    t0 = time.perf_counter()
    logits, past = dec.forward(np.asarray([prompt], np.int64), dec.empty(), 0)
    tok = int(logits[0, -1].argmax())
    ttft = (time.perf_counter() - t0) * 1e3
    out, steps = [tok], []
    for _ in range(new_tokens - 1):
        t = time.perf_counter()
        logits, past = dec.forward(np.asarray([[tok]], np.int64), past, len(prompt) + len(out) - 1)
        tok = int(logits[0, -1].argmax())
        steps.append((time.perf_counter() - t) * 1e3)
        out.append(tok)
    return out, ttft, steps


def teacher_forced(dec, ids):
    """Argmax at every position of one prefill over ``ids``, and the NLL of ids[1:] (sum, count)."""
    np = _np()
    logits = dec.forward(np.asarray([ids], np.int64), dec.empty(), 0)[0][0].astype(np.float64)
    pred = logits.argmax(-1)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -float(sum(logp[i, ids[i + 1]] for i in range(len(ids) - 1)))
    return [int(t) for t in pred], nll, len(ids) - 1


class GenaiDecoder:
    """ONNX Runtime GenAI over the same folder: its own generator loop (greedy search from genai_config.json)."""

    def __init__(self, folder: str, threads=None, model_file=None):
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(folder)
        self.version = og.__version__ if hasattr(og, "__version__") else "unknown"

    def generate(self, prompt, new_tokens: int):
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(prompt) + new_tokens, do_sample=False)
        gen = og.Generator(self.model, params)
        t0 = time.perf_counter()
        gen.append_tokens(prompt)
        gen.generate_next_token()
        ttft = (time.perf_counter() - t0) * 1e3
        out, steps = [int(gen.get_next_tokens()[0])], []
        while len(out) < new_tokens and not gen.is_done():
            t = time.perf_counter()
            gen.generate_next_token()
            steps.append((time.perf_counter() - t) * 1e3)
            out.append(int(gen.get_next_tokens()[0]))
        return out, ttft, steps


class OvGenaiDecoder:
    """openvino-genai's LLMPipeline over the same folder (its stateful pipeline on the CPU, greedy, no early stop);
    TTFT and the step times are its own perf metrics."""

    def __init__(self, folder: str, threads=None, model_file=None):
        import openvino as ov

        try:
            import openvino_genai as og
        except ImportError as e:
            raise RuntimeError(f"openvino-genai is not installed in the device's Python (openvino {ov.get_version()} is): "
                               "pip install openvino-genai (the same release as openvino), or pip install 'edgepack[openvino]'") from e
        self.og, self.ov = og, ov
        self.pipe = og.LLMPipeline(folder, "CPU", ATTENTION_BACKEND="SDPA", **ov_config(threads))
        self.version = getattr(og, "__version__", "unknown")

    def generate(self, prompt, new_tokens: int):
        np = _np()
        cfg = self.og.GenerationConfig(max_new_tokens=new_tokens, do_sample=False, ignore_eos=True)
        res = self.pipe.generate(self.ov.Tensor(np.asarray([prompt], np.int64)), cfg)
        pm = res.perf_metrics
        steps = [float(d) / 1e3 for d in pm.raw_metrics.m_durations]  # microseconds between tokens, after the first
        return [int(t) for t in res.tokens[0]], float(pm.get_ttft().mean), steps


def _pct(xs, q):
    np = _np()
    return float(np.percentile(np.asarray(xs, np.float64), q)) if xs else None


def _peak_rss_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_lengths(dec, bench: dict, new_tokens: int, runs: int) -> dict:
    """TTFT p50/p90 and decode tokens/s per prompt length (after one untimed warm-up run per length)."""
    run = dec.generate if hasattr(dec, "generate") else (lambda p, n: greedy(dec, p, n))
    out = {}
    for length, prompt in sorted(bench.items(), key=lambda kv: int(kv[0])):
        run(prompt, min(new_tokens, 2))
        ttfts, steps, made = [], [], 0
        for _ in range(runs):
            toks, ttft, st = run(prompt, new_tokens)
            ttfts.append(ttft)
            steps += st
            made = len(toks)
        step_s = sum(steps) / 1e3
        out[str(length)] = {"prompt_tokens": len(prompt), "new_tokens": made, "runs": runs,
                            "ttft_ms": {"p50": _pct(ttfts, 50), "p90": _pct(ttfts, 90), "samples": ttfts},
                            "decode_ms_per_token": {"p50": _pct(steps, 50), "p90": _pct(steps, 90)},
                            "decode_tokens_per_s": (len(steps) / step_s) if step_s > 0 else None}
    return out


def evaluate(dec, validation, perplexity, new_tokens: int, generator=None) -> dict:
    """Teacher-forced argmax per validation prompt, greedy continuations (by ``generator`` when given: the
    GenAI generator), and the perplexity NLL."""
    tf, cont = [], []
    for ids in validation:
        tf.append(teacher_forced(dec, ids)[0])
        cont.append(generator.generate(ids, new_tokens)[0] if generator is not None else greedy(dec, ids, new_tokens)[0])
    nll, count = 0.0, 0
    for ids in perplexity:
        _, s, n = teacher_forced(dec, ids)
        nll, count = nll + s, count + n
    return {"teacher_forced": tf, "continuations": cont, "nll": nll, "nll_tokens": count}


# backend -> the runtime's own generator (timed, and its continuations); the others run this module's loop
GENERATORS: dict[str, type[GenaiDecoder] | type[OvGenaiDecoder]] = {"onnxruntime-genai": GenaiDecoder, "openvino-genai": OvGenaiDecoder}


def generate(job: dict) -> dict:
    """The runner's ``generate`` mode (see the module docstring)."""
    with open(job["tokens"]) as f:
        tokens = json.load(f)
    threads = (job.get("protocol") or {}).get("threads")
    t0 = time.perf_counter()
    backend = job.get("backend", "onnxruntime")
    loop = EtDecoder if backend == "executorch" else OvDecoder if backend.startswith("openvino") else OrtDecoder
    ort_dec = loop(job["artifact"], threads, job.get("model_file"))
    load_ms = (time.perf_counter() - t0) * 1e3
    generator = GENERATORS.get(backend)
    timed = generator(job["artifact"], threads) if generator else ort_dec
    new_tokens, runs = int(job.get("new_tokens", 16)), int(job.get("runs", 3))
    result = {"backend": backend, "runtime_version": timed.version, "load_ms": load_ms, "genrunner": GENRUNNER_VERSION,
              "host": os.uname().nodename if hasattr(os, "uname") else "", "threads": threads}
    result["lengths"] = bench_lengths(timed, tokens.get("bench", {}), new_tokens, runs)
    genai = timed if timed is not ort_dec else None
    result["tokens"] = evaluate(ort_dec, tokens.get("validation", []), tokens.get("perplexity", []), new_tokens, genai)
    result["peak_rss_mb"] = _peak_rss_mb()
    return result
