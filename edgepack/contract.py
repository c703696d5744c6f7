"""The runner contract: how a device runner feeds one compiled artifact and reads its outputs.

One typed structure, written by each target into its artifact (``meta["runner"]``), serialized into
the bundle manifest (``targets.<id>.runner``) and sent to the device runner in the job as JSON
(the runner, devices/runner.py, is self-contained and reads only that JSON form).

Data layout it implies (docs/recipe.md "Stateful and sequence models"): a data array holds one
input without its batch axis, samples on axis 0 (batch mode, ``[N, ...]``) or sequences and steps
on axes 0 and 1 (stream mode, ``[S, T, ...]``). The runner takes one sample/step, inserts the
batch of 1 at ``batch_axis``, transposes with ``perm``, quantizes and casts to ``dtype``.
Constant inputs (``value``) and state inputs are never in the data: constants are fed as given,
states start at ``init`` and, in stream mode, take the state output of the previous step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInputError

VERSION = 1


@dataclass(frozen=True)
class InputBinding:
    source: str  # the recipe / data input name
    name: str  # the artifact's input name
    dtype: str  # the dtype the runtime is fed
    perm: tuple[int, ...] | None = None  # transpose of the batched source array into the artifact's layout
    batch_axis: int | None = 0  # where the batch of 1 goes (source layout); None: fed as the data holds it
    value: Any = None  # a constant input: fed as given at every step, never read from data
    quantization: dict | None = None  # {scale, zero_point, dtype}: float data quantized before feeding
    reshape: tuple[int, ...] | None = None  # after perm: the artifact's shape where it differs by size-1 axes only


@dataclass(frozen=True)
class OutputBinding:
    name: str  # the model output's name (ONNX / recipe): the key of the outputs file
    index: int  # its position among the runtime's outputs
    perm: tuple[int, ...] | None = None  # transpose back into the ONNX layout
    batch_axis: int | None = 0  # removed (when of size 1) from each collected sample / step


@dataclass(frozen=True)
class StateBinding:
    input: str  # the source input that receives the state
    output: str  # the output holding the next state
    shape: tuple[int, ...]  # one step's state as fed, in the source layout (batch of 1 included)
    dtype: str
    init: Any = None  # nested list with the first step's state; None: zeros


@dataclass(frozen=True)
class RunnerContract:
    inputs: tuple[InputBinding, ...]
    outputs: tuple[OutputBinding, ...]
    state: tuple[StateBinding, ...] = ()
    options: dict = field(default_factory=dict)  # adapter options (providers, xnnpack, compute_units, ...)
    version: int = VERSION

    def to_json(self) -> dict:
        import json

        return json.loads(json.dumps(dataclasses.asdict(self)))  # lists, not tuples: the same before and after a JSON trip

    @classmethod
    def from_json(cls, d: dict) -> RunnerContract:
        def tup(v):
            return None if v is None else tuple(v)

        return cls(
            inputs=tuple(InputBinding(**{**i, "perm": tup(i.get("perm")), "reshape": tup(i.get("reshape"))}) for i in d["inputs"]),
            outputs=tuple(OutputBinding(**{**o, "perm": tup(o.get("perm"))}) for o in d["outputs"]),
            state=tuple(StateBinding(**{**s, "shape": tuple(s["shape"])}) for s in d.get("state", [])),
            options=dict(d.get("options") or {}),
            version=int(d.get("version", VERSION)),
        )

    @classmethod
    def from_legacy(cls, runner: dict, inputs: list[dict], outputs: list[dict]) -> RunnerContract:
        """A contract from the loose keys of bundles built before it (input_map, output_order,
        output_perms, runner_options) and the manifest's tensor specs."""
        dtypes = {s["name"]: s.get("dtype", "float32") for s in inputs}
        imap = runner.get("input_map") or [{"source": n, "name": n} for n in dtypes]
        ins = tuple(InputBinding(m["source"], m["name"], m.get("dtype") or dtypes.get(m["name"], "float32"),
                                 tuple(m["perm"]) if m.get("perm") else None, quantization=m.get("quantization")) for m in imap)
        order = runner.get("output_order") or list(range(len(outputs)))
        perms = runner.get("output_perms") or []
        outs = tuple(OutputBinding(f"output_{k}", j, tuple(perms[k]) if k < len(perms) and perms[k] else None)
                     for k, j in enumerate(order))
        return cls(ins, outs, options=dict(runner.get("runner_options") or {}))

    @classmethod
    def from_entry(cls, entry: dict) -> RunnerContract:
        """The contract of a manifest target entry (or an artifact's meta), old bundles included."""
        runner = entry.get("runner") or {}
        if "inputs" in runner and "outputs" in runner:
            return cls.from_json(runner)
        return cls.from_legacy(runner or entry, entry.get("inputs", []), entry.get("outputs", []))

    def data_inputs(self) -> list[InputBinding]:
        """The inputs fed from data files (neither constants nor states)."""
        states = {s.input for s in self.state}
        return [i for i in self.inputs if i.value is None and i.source not in states]


# ------------------------------------------------------------------ building one


def _model_inputs(model) -> dict:
    return {i.name: i for i in (getattr(model, "inputs", None) or [])}


def state_bindings(model, recipe_dir: Path | str | None) -> tuple[StateBinding, ...]:
    """The recipe's model.state, with each init read (a .npy) or left as zeros, and its fed shape."""
    specs = _model_inputs(model)
    out = []
    for k, st in enumerate(getattr(model, "state", None) or []):
        spec = specs[st.input]
        ax = spec.feed_batch_axis
        shape = tuple(1 if i == ax else d for i, d in enumerate(spec.shape))
        init = None
        if st.init != "zeros":
            path = Path(recipe_dir or ".") / st.init
            try:
                a = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise BadInputError(f"{path} (model.state[{k}].init): cannot read it as .npy ({e.__class__.__name__})",
                                    hint="give 'zeros' or a .npy file (relative to the recipe)") from e
            if ax is not None and a.ndim == len(shape) - 1:
                a = np.expand_dims(a, ax)
            if any(isinstance(d, int) and d != g for d, g in zip(shape, a.shape)) or a.ndim != len(shape):
                raise BadInputError(f"{path} (model.state[{k}].init): shape {list(a.shape)} does not fit input "
                                    f"'{st.input}' {list(spec.shape)}", hint="save one step's state, batch of 1 (or without the batch axis)")
            shape, init = tuple(int(x) for x in a.shape), a.astype(spec.dtype.value).tolist()
        out.append(StateBinding(st.input, st.output, tuple(int(d) for d in shape), spec.dtype.value, init))
    return tuple(out)


def model_config(model) -> dict:
    """What of the recipe's model section a contract depends on (part of compile/reference cache keys)."""
    ins = [{"name": i.name, "batch_axis": i.feed_batch_axis, "value": i.value, "dtype": i.dtype.value}
           for i in getattr(model, "inputs", None) or []]
    return {"contract": VERSION, "inputs": ins, "state": [s.model_dump(mode="json") for s in getattr(model, "state", None) or []]}


def make_contract(model, recipe_dir, onnx_inputs: list[dict], sources: list[str], onnx_outputs: list[dict], *,
                  names: list[str] | None = None, dtypes: list[str] | None = None, perms: list | None = None,
                  quantization: list | None = None, reshapes: list | None = None, order: list[int] | None = None, out_perms: list | None = None,
                  options: dict | None = None) -> RunnerContract:
    """The contract of an artifact compiled from an ONNX model with ``onnx_inputs`` / ``onnx_outputs``
    ([{name, shape, dtype}]): ``sources[k]`` feeds ONNX input k, which the artifact calls ``names[k]``
    (default: the ONNX name), fed as ``dtypes[k]`` after ``perms[k]``; ONNX output k is the
    artifact's output ``order[k]``, transposed back with ``out_perms[k]``."""
    specs = _model_inputs(model)
    state = state_bindings(model, recipe_dir)
    state_axis = {s.input: specs[s.input].feed_batch_axis for s in state if s.input in specs}
    ins = []
    for k, (oi, src) in enumerate(zip(onnx_inputs, sources)):
        spec = specs.get(src)
        value = None if spec is None else spec.value
        axis = (0 if oi["shape"] else None) if spec is None else spec.feed_batch_axis
        ins.append(InputBinding(
            source=src, name=names[k] if names else oi["name"], dtype=dtypes[k] if dtypes else oi["dtype"],
            perm=tuple(perms[k]) if perms and perms[k] else None, batch_axis=axis, value=value,
            quantization=quantization[k] if quantization else None,
            reshape=tuple(reshapes[k]) if reshapes and reshapes[k] is not None else None))
    out_state = {s.output: state_axis.get(s.input) for s in state}
    outs = []
    for k, oo in enumerate(onnx_outputs):
        axis = out_state.get(oo["name"], 0 if oo["shape"] else None)
        outs.append(OutputBinding(oo["name"], order[k] if order else k,
                                  tuple(out_perms[k]) if out_perms and out_perms[k] else None, axis))
    missing = [s.output for s in state if s.output not in {o.name for o in outs}]
    if missing:
        raise BadInputError(f"model.state: output(s) {missing} are not outputs of the converted model "
                            f"(outputs: {[o['name'] for o in onnx_outputs]})", hint="name the model's state output in model.state[].output")
    return RunnerContract(tuple(ins), tuple(outs), state, dict(options or {}))


def for_onnx(model, recipe_dir, onnx_path: Path, options: dict | None = None) -> RunnerContract:
    """The identity contract of an ONNX model (ONNX Runtime target, FP32 reference, calibration feeds)."""
    from .targets.common import onnx_io, source_names

    ins, outs = onnx_io(onnx_path)
    sources = source_names(ins, None, [i.name for i in getattr(model, "inputs", None) or []])
    return make_contract(model, recipe_dir, ins, sources, outs, options=options)


def for_recipe(model, recipe_dir=None) -> RunnerContract:
    """The identity contract of the recipe's own inputs (no outputs): host-side feeds for checks and calibration."""
    ins = [{"name": i.name, "shape": i.shape, "dtype": i.dtype.value} for i in getattr(model, "inputs", None) or []]
    state = state_bindings(model, recipe_dir)
    outs = [{"name": s.output, "shape": list(s.shape), "dtype": s.dtype} for s in state]
    return make_contract(model, recipe_dir, ins, [i["name"] for i in ins], outs)
