"""model-signing's submodules without its package ``__init__`` (which imports sigstore and TUF).

Signing and verifying with a local EC key or a company certificate never talks to Sigstore, so
edgepack imports only the submodules it uses (edgepack/bareimport.py). The code that signs and
verifies is upstream's own: signatures are byte-for-byte what ``model_signing`` writes and reads.
"""

from __future__ import annotations

import types

from edgepack.bareimport import submodule


def ms(name: str) -> types.ModuleType:
    """``model_signing.<name>`` (e.g. ``"hashing"``, ``"_signing.sign_ec_key"``), imported alone."""
    return submodule("model_signing", name)
