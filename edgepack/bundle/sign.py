"""Signing bundles with OpenSSF model-signing (EC keys, or an X.509 signing certificate).

Signature scope: model-signing hashes every file of the bundle directory except the
``signatures/`` folder (git paths included: we turn off model-signing's default of ignoring
``.git*``), so ``edgepack.json`` and ``report.json`` are signed too. ``signatures/`` holds
only ``model.sig`` (a Sigstore bundle with a DSSE envelope). The public key is deliberately
NOT shipped in the bundle: a key that travels with the thing it vouches for proves nothing,
and anything unsigned in the bundle would be a place to hide content. Verifiers get the
public key out of band (``--key``); the summary reports its sha256 fingerprint.

Keys live in ``bundle/keys.py``; every signature CHECK (a folder, a registry artifact, a
bundle about to be published) lives in ``bundle/sigcheck.py``, the one module bundle and
registry code share. The names below are re-exported for existing callers.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgepack.bundle.fsutil import atomic_write_bytes
from edgepack.bundle.keys import CURVES, default_public_path, fingerprint, keygen, load_private_key, load_public_key
from edgepack.bundle.manifest import SIGNATURES_DIR, check_files, read_manifest
from edgepack.bundle.sigcheck import SIGNATURE_NAME, hashing_config, manifest_digests, verify_bundle
from edgepack.errors import BadInputError

_hashing_config = hashing_config  # older name, used by tests that sign by hand

__all__ = ["CURVES", "SIGNATURE_NAME", "default_public_path", "fingerprint", "keygen", "load_private_key",
           "load_public_key", "sign_bundle", "verify_bundle"]


def sign_bundle(bundle_dir: Path, private_key: Path, certificate: Path | None = None, certificate_chain=(),
                files_checked: bool = False) -> Path:
    """Sign the whole bundle (all but ``signatures/``); write ``signatures/model.sig`` atomically.

    With ``certificate`` (the key's X.509 signing certificate, PEM) and ``certificate_chain``
    (intermediate/CA certificates), the signature carries the certificate for company-PKI trust
    (``verify --cert-chain CA.pem``) instead of a bare public-key hint. Every file is hashed once: by
    ``check_files`` against the manifest (or, ``files_checked``, by ``write_bundle`` which just wrote
    that manifest in a folder the caller owns), and model-signing takes those digests."""
    from edgepack.bundle.mslite import ms

    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    load_private_key(private_key)  # clear errors before model-signing sees the file
    if not files_checked:
        check_files(bundle_dir, manifest)  # never sign a bundle that does not match its manifest
    sig_dir = bundle_dir / SIGNATURES_DIR
    sig_path = sig_dir / SIGNATURE_NAME
    tmp = sig_dir / f".{SIGNATURE_NAME}.{os.getpid()}.tmp"
    try:
        sig_dir.mkdir(exist_ok=True)
        for stale in sig_dir.glob(f".{SIGNATURE_NAME}.*.tmp"):  # left by a killed earlier run
            stale.unlink()
        foreign = sorted(p.name for p in sig_dir.iterdir() if p.name != SIGNATURE_NAME)
        if foreign:
            raise BadInputError(f"unexpected file; {SIGNATURES_DIR}/ may hold only {SIGNATURE_NAME}", where=sig_dir / foreign[0])
        signed = hashing_config(manifest_digests(manifest)).hash(bundle_dir)
        if certificate is not None:
            cert = Path(certificate).expanduser()
            chain = [Path(c).expanduser() for c in certificate_chain]
            for c in [cert, *chain]:
                if not c.is_file():
                    raise BadInputError(f"certificate {c} not found", hint="check package.certificate / package.certificate_chain")
            # what model_signing.signing.Config.sign does, without importing its Sigstore signer (edgepack/bundle/mslite.py)
            signer = ms("_signing.sign_certificate").Signer(Path(private_key).expanduser(), cert, chain)
            signer.sign(ms("_signing.signing").Payload(signed)).write(tmp)
        else:  # model-signing's EC-key signature, written without sigstore_models (edgepack/bundle/ecsig.py)
            from edgepack.bundle.ecsig import Signer

            Signer(Path(private_key).expanduser()).sign(signed).write(tmp)
        atomic_write_bytes(sig_path, tmp.read_bytes())
    except OSError as e:
        raise BadInputError(f"cannot write {sig_path}: {e.strerror or e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return sig_path
