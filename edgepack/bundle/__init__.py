"""Bundles: the directory of built artifacts, its manifest, and its signature."""

from edgepack.bundle.manifest import SCHEMA_VERSION, check_files, read_manifest, write_bundle
from edgepack.bundle.sign import (
    keygen,
    load_private_key,
    load_public_key,
    sign_bundle,
    verify_bundle,
)

__all__ = [
    "SCHEMA_VERSION",
    "check_files",
    "keygen",
    "load_private_key",
    "load_public_key",
    "read_manifest",
    "sign_bundle",
    "verify_bundle",
    "write_bundle",
]
