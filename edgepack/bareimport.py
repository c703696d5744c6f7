"""Import a package's submodules without running the package's ``__init__``.

Some dependencies import far more in ``__init__`` than the submodule edgepack uses:
``model_signing/__init__.py`` imports the Sigstore signer (sigstore, TUF, cloud signers: about
1 s) and ``onnxruntime/tools/__init__.py`` imports torch whenever torch is installed (about 1.7 s
of a 2 s digits quantize stage, through ``onnxruntime.quantization.shape_inference``).
:func:`bare_package` registers the package as an empty module with the same search path, so its
submodules import normally; attributes the real ``__init__`` would have set load on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def bare_package(name: str) -> None:
    """Register package ``name`` without executing its ``__init__`` (no-op if already imported)."""
    if name in sys.modules:
        return
    parent, _, _ = name.rpartition(".")
    if parent:
        importlib.import_module(parent)
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    pkg = types.ModuleType(name, f"{name} (loaded submodule by submodule by edgepack)")
    pkg.__spec__, pkg.__path__, pkg.__package__, pkg.__file__ = spec, list(spec.submodule_search_locations), name, spec.origin

    def __getattr__(attr: str):  # PEP 562: `pkg.submodule` on first use
        if attr == "__version__":
            from importlib.metadata import version

            return version(name.split(".")[0].replace("_", "-"))
        if attr.startswith("__"):
            raise AttributeError(attr)
        return importlib.import_module(f"{name}.{attr}")

    setattr(pkg, "__getattr__", __getattr__)  # noqa: B010 - a module-level __getattr__ (PEP 562), not a method
    sys.modules[name] = pkg
    if parent:
        setattr(sys.modules[parent], name.rpartition(".")[2], pkg)


def submodule(package: str, name: str) -> types.ModuleType:
    """``package.name`` imported without ``package/__init__.py``."""
    bare_package(package)
    return importlib.import_module(f"{package}.{name}")
