"""edgepack: ship trained models to edge devices.

Public API (everything else may change):
    edgepack.build(recipe_path, **options) -> BuildResult
    edgepack.verify(bundle_dir, public_key) -> dict
"""

__version__ = "0.1.0"


def build(recipe_path, **options):
    from .build import BuildOptions
    from .build import build as _build
    from .recipe import load_recipe

    return _build(load_recipe(recipe_path), BuildOptions(**options))


def verify(bundle_dir, public_key):
    from pathlib import Path

    from .bundle.sign import verify_bundle

    return verify_bundle(Path(bundle_dir), Path(public_key))
