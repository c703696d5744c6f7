"""edgepack: ship trained models to edge devices.

Public API (everything else may change):
    edgepack.build(recipe, **options) -> BuildResult
    edgepack.verify(bundle_dir, public_key) -> dict

Progress goes to the ``edgepack`` logger (INFO, one record per stage start/finish) and, if given, to a
``progress`` callback; see ``build``.
"""

__version__ = "0.1.0"


def build(recipe, **options):
    """Build a recipe (a recipe.yaml path, or a folder holding one), like ``edgepack build RECIPE``.

    Options (all keyword, all optional; the CLI flag in brackets):
        output (path): bundle directory, default dist/NAME-VERSION [--output]
        registry (str): where to publish, layout:PATH or HOST/REPO [--registry]
        publish (bool): publish the bundle, default True [--no-publish]
        allow_partial (bool): publish even when some targets failed [--allow-partial]
        key (path): EC private key to sign with (PEM) [--key]
        targets (list[str]): build only these target ids [--target]
        cache_dir (path): stage cache, default $EDGEPACK_HOME/cache [--cache-dir]
        use_cache (bool): reuse cached stages, default True [--no-cache]
        jobs (int): plan nodes run at once, default the number of cores [--jobs]
        executor (str): local (default), ray or ray://HOST:PORT [--executor]
        force (bool): publish over an existing tag of this version [--force]
        quiet (bool): print nothing on stdout [--json]
        progress (callable): called with one dict per event:
            {"event": "start", "stage": NAME}
            {"event": "done", "stage": NAME, "status": STATUS, "seconds": S, "note": TEXT}
            {"event": "note", "line": TEXT}
            {"event": "update", "stage": NAME, "task": TASK, "completed": N, "total": M, "unit": UNIT, "fields": {...}}

    Returns a BuildResult (status, exit_code, bundle, report_path, report, published, failures).
    Raises edgepack.errors.EdgepackError subclasses (their ``exit_code`` is the CLI's) on bad input,
    failed gates or a build error. Safe to call any number of times in one interpreter.
    """
    from .pipeline import BuildOptions
    from .pipeline import build as _build
    from .recipe import load_recipe

    return _build(load_recipe(recipe), BuildOptions(**options))


def verify(bundle_dir, public_key):
    """Verify a bundle folder's digests and signature with a public key (PEM); returns what was checked."""
    from pathlib import Path

    from .bundle.sign import verify_bundle

    return verify_bundle(Path(bundle_dir), Path(public_key))
