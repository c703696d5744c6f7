"""Signing keys: EC key pairs as PEM files (model-signing signs only with EC P-256/P-384/P-521)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgepack.bundle.fsutil import atomic_write_bytes
from edgepack.errors import BadInputError

CURVES: dict[str, type[ec.SECP256R1] | type[ec.SECP384R1] | type[ec.SECP521R1]] = {
    "P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}
_SUPPORTED = {c.name for c in CURVES.values()}  # secp256r1, secp384r1, secp521r1
_KEYGEN_HINT = "create a key pair with `edgepack keygen`"


def keygen(
    private_path: Path, public_path: Path | None = None, curve: str = "P-256", overwrite: bool = False
) -> tuple[Path, Path]:
    """Create an EC key pair as PEM files (private key mode 0600); return both paths."""
    private_path = Path(private_path).expanduser()
    public_path = Path(public_path).expanduser() if public_path else default_public_path(private_path)
    if curve not in CURVES:
        raise BadInputError(f"unsupported curve {curve!r}", hint=f"use one of {', '.join(CURVES)}")
    if private_path.resolve() == public_path.resolve():
        raise BadInputError(f"the private and public key paths are the same: {private_path}")
    if not overwrite:
        for p in (private_path, public_path):
            if p.exists():
                raise BadInputError(f"{p} already exists; refusing to overwrite a key", hint="pass --force or pick another path")
    key = ec.generate_private_key(CURVES[curve]())
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for path, data, mode in ((private_path, priv, 0o600), (public_path, pub, 0o644)):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data, mode=mode)
        except OSError as e:
            raise BadInputError(f"cannot write key file {path}: {e.strerror or e}") from e
    return private_path, public_path


def default_public_path(private_path: Path) -> Path:
    """``keys/dev.pem`` -> ``keys/dev.pub.pem``."""
    private_path = Path(private_path)
    return private_path.with_name(f"{private_path.stem}.pub.pem")


def _read_pem(path: Path, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except FileNotFoundError as e:
        raise BadInputError(f"{what} {path} not found", hint=_KEYGEN_HINT) from e
    except OSError as e:
        raise BadInputError(f"cannot read {what} {path}: {e.strerror or e}", hint=_KEYGEN_HINT) from e


def _check_ec(key, path: Path, what: str) -> None:
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        kind = type(key).__name__.lstrip("_").replace("PrivateKey", "").replace("PublicKey", "")
        raise BadInputError(
            f"{what} {path} is a {kind} key; model-signing signs only with EC P-256, P-384 or P-521 keys",
            hint=_KEYGEN_HINT,
        )
    if key.curve.name not in _SUPPORTED:
        raise BadInputError(
            f"{what} {path} uses curve {key.curve.name}; model-signing needs P-256, P-384 or P-521",
            hint=_KEYGEN_HINT,
        )


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load an unencrypted PEM EC private key; BadInputError naming the file otherwise."""
    data = _read_pem(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as e:  # encrypted key, no password given
        raise BadInputError(f"private key {path} is encrypted; edgepack needs an unencrypted PEM key", hint=_KEYGEN_HINT) from e
    except (ValueError, UnsupportedAlgorithm) as e:
        extra = " (this is a public key)" if b"PUBLIC KEY" in data else ""
        raise BadInputError(f"private key {path} is not a PEM private key{extra}", hint=_KEYGEN_HINT) from e
    _check_ec(key, path, "private key")
    assert isinstance(key, ec.EllipticCurvePrivateKey)  # _check_ec refused every other kind
    return key


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Load a PEM EC public key; BadInputError naming the file otherwise."""
    data = _read_pem(path, "public key")
    if b"PRIVATE KEY" in data:
        raise BadInputError(f"public key {path} holds a private key", hint="pass the .pub.pem file made by `edgepack keygen`")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise BadInputError(f"public key {path} is not a PEM public key", hint=_KEYGEN_HINT) from e
    _check_ec(key, path, "public key")
    assert isinstance(key, ec.EllipticCurvePublicKey)  # _check_ec refused every other kind
    return key


def fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """``sha256:<hex>`` of the public key's DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()
