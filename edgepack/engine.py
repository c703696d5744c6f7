"""Stages and the engine that runs them with caching, isolation and lineage."""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .artifact import Artifact
from .cache import StageCache, stage_key
from .console import Progress  # noqa: F401 - re-exported: engine.Progress is what the pipeline builds
from .errors import EdgepackError, StageError
from .worker import run_isolated


@dataclass
class StageResult:
    outputs: dict[str, Artifact]
    record: dict = field(default_factory=dict)  # what the stage did: metrics, fallbacks and their reasons
    cached: bool = False
    seconds: float = 0.0
    key: str = ""


class Stage:
    """A pure step: input artifacts + config -> output artifacts.

    Subclasses set ``kind`` (stable id used in cache keys), bump ``version`` when their behaviour
    changes, and implement ``run``. ``check_inputs``/``check_outputs`` are the contract checks that
    run before and after (their errors name the stage).
    """

    kind: ClassVar[str] = "stage"
    version: ClassVar[str] = "1"
    isolated: bool = False  # run in a worker process (a stage may decide in __init__)
    timeout: float = 1800.0  # seconds; a stage may set its own from the recipe in __init__
    cacheable: ClassVar[bool] = True
    # Input names the stage reads; others offered by the build are dropped before keying, so that
    # e.g. new validation data does not re-run a pass that only reads calibration data. None = all.
    uses: tuple[str, ...] | None = None
    # The toolchain (edgepack/toolchains: TOOLCHAINS) an isolated stage runs in: the running interpreter when it
    # satisfies the toolchain's lock, else that managed environment's. None: always the running interpreter. A stage
    # may decide in __init__ (the convert stage: by source format).
    toolchain_env: str | None = None
    # Changes process-wide state while it runs (e.g. the cwd): run in a worker when stages run in threads
    process_global: ClassVar[bool] = False

    def config(self) -> dict:
        return {}

    def toolchain(self) -> dict[str, str]:
        return {}

    def check_inputs(self, inputs: dict[str, Artifact]) -> None:
        pass

    def check_outputs(self, inputs: dict[str, Artifact], result: StageResult) -> None:
        pass

    def run(self, inputs: dict[str, Artifact], workdir: Path) -> StageResult:  # pragma: no cover
        raise NotImplementedError


def package_versions(*names: str) -> dict[str, str]:
    return {n: installed_version(n) or "not-installed" for n in names}


@functools.lru_cache(maxsize=None)
def installed_version(name: str) -> str | None:
    """``importlib.metadata.version(name)`` (None: not installed) read from the METADATA header alone (the
    same ``Version:`` field; version() parses the whole file, long description included, with the email
    parser), once per process: a cached build asks for the same few packages about 25 times."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(name)
    except PackageNotFoundError:
        return None
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    for line in text.splitlines():
        if not line:  # end of the header
            break
        if line.startswith("Version:"):
            return line[len("Version:"):].strip()
    return dist.version


def _identity(a: Artifact) -> str:
    """What an input contributes to a cache key: its content digest, plus its meta (which tells
    runners how to feed it) without absolute paths, so keys do not depend on where files live."""
    import hashlib
    import json
    import os

    meta = {k: v for k, v in a.meta.items() if not (isinstance(v, str) and os.path.isabs(v))}
    if not meta:
        return a.digest
    return a.digest + ":" + hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _toolchain_env(stage: Stage):
    """The toolchain environment (edgepack/toolchains ``Env``) an isolated stage runs in, or None."""
    if not stage.toolchain_env or not stage.isolated:
        return None
    from . import toolchains

    return toolchains.resolve(stage.toolchain_env)


def _run_stage(stage: Stage, inputs: dict[str, Artifact], workdir: Path) -> StageResult:
    return stage.run(inputs, workdir)


class Engine:
    def __init__(self, cache: StageCache, progress: Progress | None = None, log_dir: Path | None = None):
        self.cache = cache
        self.progress = progress or Progress(quiet=True)
        self.log_dir = log_dir
        self.lineage: list[dict[str, Any]] = []
        self.isolate_process_global = False  # set by a parallel executor (edgepack/executors/local.py)

    def log_path(self, name: str) -> Path | None:
        """Where an executed stage's log goes (isolated stages write their worker's output there)."""
        if self.log_dir is None:
            return None
        return self.log_dir / f"{name.replace('/', '_').replace(' ', '_')}.log"

    def key_for(self, stage: Stage, inputs: dict[str, Artifact]) -> str:
        return stage_key(stage.kind, stage.version, stage.config(), {k: _identity(a) for k, a in inputs.items()}, stage.toolchain())

    @staticmethod
    def _input_digests(inputs: dict[str, Artifact]) -> dict[str, str]:
        """What each input's files hash to before the stage runs (an artifact's own digest may cover
        more than its path, e.g. a PyTorch source's module + weights, or data hashed by array content)."""
        from .artifact import digest_path

        return {k: digest_path(a.path) for k, a in inputs.items() if a.path.exists()}

    def _check_inputs_unchanged(self, name: str, inputs: dict[str, Artifact], before: dict[str, str]) -> None:
        """A stage must never write to its inputs (some converters rewrite the file they are given:
        onnx2tf does). Catch it, drop the corrupted cache entry, and fail loudly rather than let a
        cache entry silently disagree with its digest."""
        from .artifact import digest_path

        for k, a in inputs.items():
            if k in before and (not a.path.exists() or digest_path(a.path) != before[k]):
                evicted = self.cache.evict_containing(a.path)
                raise StageError(
                    f"the stage modified its input '{k}' ({a.path.name}) in place",
                    hint="this is an edgepack bug; " + ("the corrupted cache entry was removed, rerun the build" if evicted else "restore the file"), where=name
                )

    def run(self, name: str, stage: Stage, inputs: dict[str, Artifact]) -> StageResult:
        if stage.uses is not None:
            inputs = {k: a for k, a in inputs.items() if k in stage.uses}
        key = self.key_for(stage, inputs)
        self.progress.start(name)
        t0 = time.perf_counter()
        evicted = None
        with self.cache.locked(key) if stage.cacheable else contextlib.nullcontext():  # one builder per entry
            hit, evicted, source = self.cache.lookup_from(key) if stage.cacheable else (None, None, "local")
            if evicted:
                again = "re-running" if source == "store" else "evicted, re-running"
                self.progress.note(f"{name}: cache entry {key[:12]} failed its check ({evicted}); {again}")
            if hit is not None:
                outputs, record = hit
                result = StageResult(outputs, record, cached=True, seconds=time.perf_counter() - t0, key=key)
                self.progress.done(name, "cached", result.seconds, note="from the shared store" if source == "store" else "")
            else:
                result = self._execute(name, stage, inputs, key, t0)
        entry = {
            "name": name,
            "stage": stage.kind,
            "version": stage.version,
            "key": key,
            "cached": result.cached,
            "seconds": round(result.seconds, 3),
            "inputs": {k: a.digest for k, a in inputs.items()},
            "outputs": {k: a.digest for k, a in result.outputs.items()},
        }
        if evicted:
            entry["evicted"] = evicted
        if result.cached and source == "store":
            entry["from_store"] = True
        self.lineage.append(entry)
        return result

    def _execute(self, name: str, stage: Stage, inputs: dict[str, Artifact], key: str, t0: float) -> StageResult:
        try:
            stage.check_inputs(inputs)
        except EdgepackError as e:
            self.progress.done(name, "failed", time.perf_counter() - t0)
            raise e.in_stage(name) from e
        before = self._input_digests(inputs)
        workdir = self.cache.new_workdir(key)
        log_path = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_path(name)
            if log_path is not None:
                log_path.unlink(missing_ok=True)
        try:
            env = _toolchain_env(stage)
            if stage.isolated or (stage.process_global and self.isolate_process_global):
                result = run_isolated(
                    _run_stage, stage, inputs, workdir, timeout=stage.timeout, log_path=log_path, what=f"stage {name}",
                    python=env.python if env else None,
                )
            else:
                result = stage.run(inputs, workdir)
            if env is not None:  # where it ran: report.json and the manifest say so
                result.record["environment"] = {**env.info(), "python": stage.toolchain().get("python")}
            self._check_inputs_unchanged(name, inputs, before)
            stage.check_outputs(inputs, result)
            if stage.cacheable:
                result.outputs = self.cache.commit(key, workdir, result.outputs, result.record)
        except EdgepackError as e:
            self.cache.discard(workdir)
            self.progress.done(name, "failed", time.perf_counter() - t0)
            raise e.in_stage(name) from e
        except Exception as e:
            self.cache.discard(workdir)
            self.progress.done(name, "failed", time.perf_counter() - t0)
            raise StageError(f"{e.__class__.__name__}: {e}", hint="rerun with --verbose for the traceback", where=name) from e
        result.cached = False
        result.key = key
        result.seconds = time.perf_counter() - t0
        if log_path is not None:
            result.record.setdefault("log", str(log_path))
        self.progress.done(name, "ok", result.seconds)
        return result
