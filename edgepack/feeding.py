"""Feeding an ONNX model on the host as the device runner feeds it (one path for every pass and check).

Built on the runner contract (edgepack/contract.py ``for_onnx``) and the runner's own feeding
(devices/runner.py ``make_feeds`` / ``run_all``): each input gets its batch of 1 at its
``batch_axis``, constants (``value``) are fed as given, states start at their init and, in stream
mode (data arrays ``[S, T, ...]``), take the state output of the previous step. Used by the passes'
effect / accuracy measurements (optimize/effect.py, accuracy_aware.py), their calibration
(optimize/ort_static.py) and TensorRT's calibration and check (targets/tensorrt_graph.py).
Without a recipe model section every input is a plain batch-axis-0 input (scalars fed as given).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def onnx_contract(path: Path, model=None, recipe_dir: Path | None = None) -> dict:
    """The identity contract (JSON form, as the runner reads it) of the ONNX model at ``path``."""
    from .contract import for_onnx

    return for_onnx(model, recipe_dir, Path(path)).to_json()


def is_stream_data(model, arrays: dict[str, np.ndarray]) -> bool:
    """Whether the data arrays are in stream layout ([S, T, ...]) for this recipe model section."""
    from .data import is_stream

    return model is not None and is_stream(model.data_inputs(), arrays)


def session(path: Path, threads: int | None = 2):
    from .devices.runtimes import OnnxRuntimeAdapter

    adapter = OnnxRuntimeAdapter()
    adapter.load(str(path), threads, {})
    return adapter


def run_onnx(path: Path, arrays: dict[str, np.ndarray], model=None, recipe_dir: Path | None = None,
             threads: int | None = 2, limit: int | None = None) -> dict[str, np.ndarray]:
    """{output name: [N, ...] (batch) or [S, T, ...] (stream, state carried)}: every sample or step
    through ONNX Runtime, one at a time, exactly as devices/runner.py run_all feeds a device."""
    from .devices.runner import run_all

    contract = onnx_contract(path, model, recipe_dir)
    return run_all(session(path, threads).run, contract, arrays, is_stream_data(model, arrays), limit)


def onnx_feeds(path: Path, arrays: dict[str, np.ndarray], model=None, recipe_dir: Path | None = None,
               limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """Every complete feed (keyed by the ONNX model's input names) the runner would give the model at
    ``path``: one per sample, or in stream mode one per step with the state carried (the model itself
    is run to produce each step's state). For calibration readers and one-sample checks; ``limit``
    counts samples (sequences in stream mode)."""
    from .devices.runner import make_feeds, run_all, state_init

    contract = onnx_contract(path, model, recipe_dir)
    if is_stream_data(model, arrays):
        fed: list[dict] = []
        sess = session(path)

        def run(feeds):
            fed.append(feeds)
            return sess.run(feeds)

        run_all(run, contract, arrays, True, limit)
        return fed
    from .devices.runner import data_count

    n = data_count(contract, arrays, False)[0] if contract_has_data(contract) else 1
    return [make_feeds(contract, arrays, i, state_init(contract)) for i in range(n if limit is None else min(n, limit))]


def contract_has_data(contract: dict) -> bool:
    states = {s["input"] for s in contract.get("state", [])}
    return any(b.get("value") is None and b["source"] not in states for b in contract["inputs"])


def batchable(contract: dict, stream: bool) -> bool:
    """Whether samples may be fed many at a time along axis 0 (no state, no constants, every input batch axis 0)."""
    return not stream and not contract.get("state") and all(b.get("value") is None and b.get("batch_axis") == 0 for b in contract["inputs"])
