"""model-signing's submodules without its package ``__init__`` (which imports sigstore and TUF).

Signing and verifying with a local EC key or a company certificate never talks to Sigstore, so
edgepack imports only the submodules it uses (edgepack/bareimport.py). Hashing and certificate
signatures are upstream's own code; EC-key bundles are written and read by edgepack/bundle/ecsig.py
(upstream's format and checks, without sigstore_models), which upstream's verifier accepts.
"""

from __future__ import annotations

import types

from edgepack.bareimport import submodule


def ms(name: str) -> types.ModuleType:
    """``model_signing.<name>`` (e.g. ``"hashing"``, ``"_signing.sign_ec_key"``), imported alone."""
    return submodule("model_signing", name)
