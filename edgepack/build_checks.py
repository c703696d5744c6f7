"""Checks `build` makes before any stage (issue 11): target names, free space, and the build-host
directories that report.json and edgepack.json must not name."""

from __future__ import annotations

import difflib
import os
import tempfile
from pathlib import Path

from .cache import edgepack_home
from .errors import BadInputError
from .paths import check_free_space, check_writable, tree_size
from .recipe import LoadedRecipe


def check_target_names(lr: LoadedRecipe, wanted: list[str] | None) -> None:
    """``--target`` names a target of the recipe (exit 2 with did-you-mean, before any stage)."""
    ids = [t.id for t in lr.recipe.targets]
    for name in wanted or []:
        if name not in ids:
            close = difflib.get_close_matches(name, ids, n=1, cutoff=0.5)
            raise BadInputError(f"--target {name}: {lr.path} has no target '{name}' (its targets: {', '.join(ids)})",
                                hint=f"did you mean '{close[0]}'?" if close else "use a target's name (or type when it has no name)")


def input_sizes(lr: LoadedRecipe) -> tuple[int, int]:
    """Bytes of the model source and of the data files, for the free-space estimate."""
    m = lr.recipe.model
    model = sum(tree_size(lr.resolve(p)) for p in (m.path, m.weights) if p)
    data = sum(tree_size(lr.resolve(p)) for role in ("calibration", "validation", "training")
               for src in [getattr(lr.recipe.data, role)] if src is not None for p in src.files())
    return model, data


def check_space(lr: LoadedRecipe, out_dir: Path, cache_root: Path, n_targets: int, cache_field: str | None) -> None:
    """The cache can be created and both file systems have room (estimate: docs/cli.md, exit codes)."""
    cache_field = cache_field or "stage cache ($EDGEPACK_CACHE or $EDGEPACK_HOME/cache)"
    check_writable(cache_root, cache_field)
    model_bytes, data_bytes = input_sizes(lr)
    passes = len(lr.recipe.optimize)
    check_free_space(cache_root, 8 * 2**20 + model_bytes * (2 + passes + n_targets) + 2 * data_bytes, cache_field)
    check_free_space(out_dir, 4 * 2**20 + 2 * model_bytes * n_targets, "package.output")


def host_prefixes(lr: LoadedRecipe, out_dir: Path, cache_root: Path) -> dict[str, str]:
    """Build-host directories -> what report.json and edgepack.json say instead (bundle- or recipe-relative)."""
    return {os.path.expanduser("~"): "~", tempfile.gettempdir(): "$TMPDIR", str(edgepack_home().absolute()): "$EDGEPACK_HOME",
            str(cache_root.absolute()): "$EDGEPACK_CACHE", str(lr.dir.absolute()): "", str(out_dir.parent): "..", str(out_dir): "."}


def target_coverage(engine, stage, model, fp32, inputs: dict) -> dict:
    """The op-coverage pre-flight of one target (targets/coverage.py ``preflight``), memoized in the
    stage cache: keyed like the compile stage on what it reads (model digests, target config,
    toolchain) plus the learned-failures file, so a rebuild with unchanged inputs does not load and
    walk the graph again. Uncached builds (``--no-cache``) always run it."""
    import hashlib
    import json

    from .artifact import sha256_file
    from .paths import write_json_atomic
    from .targets.coverage import _learned_file, preflight

    if not engine.cache.enabled:
        return preflight(stage, model, fp32, inputs)
    offered = {"model": model, "fp32": fp32, **inputs}
    offered = {k: a for k, a in offered.items() if a is not None and (stage.uses is None or k in stage.uses)}
    learned = _learned_file("onnx2tf")
    parts = [engine.key_for(stage, offered), sha256_file(learned) if learned.is_file() else None]
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()
    memo = engine.cache.root / "coverage" / f"{key}.json"
    try:
        return json.loads(memo.read_text())
    except (OSError, ValueError):
        pass
    cov = preflight(stage, model, fp32, inputs)
    try:
        write_json_atomic(memo, cov)
    except OSError:  # a read-only cache still builds
        pass
    return cov
