"""Build provenance: a signed in-toto statement (SLSA v1 provenance) inside every bundle.

``provenance.json`` is a DSSE envelope (payloadType ``application/vnd.in-toto+json``) whose
payload is an in-toto Statement v1: ``subject`` = every target file of the bundle with its
sha256, ``predicateType`` = ``https://slsa.dev/provenance/v1``, and a predicate with the recipe
digest, the source model, calibration and validation data digests (resolvedDependencies), the
toolchain versions, the builder id, and the start and end times. It is signed with the build's
EC key (ECDSA over the DSSE pre-authentication encoding, hash matched to the curve as
model-signing does) and, being a bundle file, covered by the bundle signature as well.
No absolute build-host paths go in: the recipe is named by its file name only.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from edgepack.artifact import iter_files, sha256_file
from edgepack.bundle.fsutil import atomic_write_bytes
from edgepack.errors import VerificationError

PROVENANCE_NAME = "provenance.json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://edgepack.dev/buildtypes/recipe/v1"
DEFAULT_BUILDER = "https://edgepack.dev/builders/local"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _hash_for(key):
    from cryptography.hazmat.primitives import hashes

    return {256: hashes.SHA256(), 384: hashes.SHA384(), 521: hashes.SHA512()}[key.curve.key_size]


def subjects_for(files: dict[str, Path]) -> dict[str, str]:
    """``{bundle path: sha256 hex}`` for bundle files given as rel -> source file or folder."""
    out = {}
    for rel, src in sorted(files.items()):
        src = Path(src)
        if src.is_dir():
            for sub in iter_files(src):
                out[f"{rel}/{sub.as_posix()}"] = sha256_file(src / sub)
        else:
            out[rel] = sha256_file(src)
    return out


def _dep(name: str, sha: str | None, **extra) -> dict | None:
    return {"name": name, "digest": {"sha256": sha}, **extra} if sha else None


def make_statement(subjects: dict[str, str], manifest: dict, started: str, finished: str, recipe_name: str,
                   builder_id: str | None = None) -> dict:
    """The in-toto statement for a bundle whose manifest fields are already known."""
    source = manifest.get("source") or {}
    deps = [
        _dep("source-model", source.get("sha256"), annotations={"format": source.get("format")}),
        _dep("calibration-data", manifest.get("calibration_sha256")),
        _dep("validation-data", manifest.get("validation_sha256")),
    ]
    targets = manifest.get("targets") or {}
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": rel, "digest": {"sha256": sha}} for rel, sha in sorted(subjects.items())],
        "predicateType": SLSA_PROVENANCE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "recipe": {"name": recipe_name, "digest": {"sha256": manifest.get("recipe_sha256")}},
                    "model": {"name": manifest.get("name"), "version": manifest.get("version")},
                    "targets": sorted(targets) if isinstance(targets, dict) else targets,
                },
                "internalParameters": {"toolchain": manifest.get("toolchain") or {}},
                "resolvedDependencies": [d for d in deps if d],
            },
            "runDetails": {
                "builder": {"id": builder_id or os.environ.get("EDGEPACK_BUILDER_ID") or DEFAULT_BUILDER,
                            "version": {"edgepack": (manifest.get("toolchain") or {}).get("edgepack", "unknown")}},
                "metadata": {"startedOn": started, "finishedOn": finished},
            },
        },
    }


def sign_statement(statement: dict, private_key: Path) -> dict:
    """A DSSE envelope over the statement, signed with an EC private key (PEM)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from edgepack.bundle.sign import fingerprint, load_private_key

    key = load_private_key(private_key)
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    sig = key.sign(pae(PAYLOAD_TYPE, payload), ec.ECDSA(_hash_for(key)))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": fingerprint(key.public_key()), "sig": base64.b64encode(sig).decode()}],
    }


def write_provenance(path: Path, files: dict[str, Path], manifest: dict, private_key: Path, started: str,
                     finished: str, recipe_name: str) -> Path:
    """Make, sign and atomically write ``provenance.json`` for the bundle files about to be packaged."""
    statement = make_statement(subjects_for(files), manifest, started, finished, recipe_name)
    envelope = sign_statement(statement, private_key)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(Path(path), (json.dumps(envelope, indent=2, sort_keys=True) + "\n").encode())


def verify_provenance(bundle_dir: Path, public_key: Path, allow_missing: bool = False) -> dict:
    """Check ``provenance.json``'s signature and that its subjects match the bundle's files.

    ``allow_missing`` accepts subjects absent from the folder (a per-target pull).
    Returns the statement; VerificationError (exit 4) names what is wrong.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec

    from edgepack.bundle.sign import load_public_key

    bundle_dir = Path(bundle_dir)
    path = bundle_dir / PROVENANCE_NAME
    key = load_public_key(public_key)
    try:
        env = json.loads(path.read_text())
        payload = base64.b64decode(env["payload"], validate=True)
        sigs = [base64.b64decode(s["sig"], validate=True) for s in env["signatures"]]
        if env["payloadType"] != PAYLOAD_TYPE:
            raise ValueError(f"payloadType {env['payloadType']!r}")
    except FileNotFoundError as e:
        raise VerificationError("missing; the bundle has no build provenance", hint="rebuild with this edgepack", where=path) from e
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VerificationError(f"not a DSSE envelope ({type(e).__name__}: {e})", where=path) from e
    for sig in sigs:
        try:
            key.verify(sig, pae(PAYLOAD_TYPE, payload), ec.ECDSA(_hash_for(key)))
            break
        except InvalidSignature:
            continue
    else:
        raise VerificationError(f"signature is invalid for public key {public_key}",
                                hint="pass the public key of the key the bundle was built with", where=path)
    try:
        statement = json.loads(payload)
        subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
        if statement["_type"] != STATEMENT_TYPE or statement["predicateType"] != SLSA_PROVENANCE:
            raise ValueError("not an in-toto v1 SLSA provenance statement")
    except (ValueError, KeyError, TypeError) as e:
        raise VerificationError(f"bad statement: {e}", where=path) from e
    problems = []
    for rel, sha in sorted(subjects.items()):
        p = bundle_dir / rel
        if not p.is_file():
            if allow_missing:
                continue
            problems.append(f"{rel}: named in the provenance but missing")
        elif sha256_file(p) != sha:
            problems.append(f"{rel}: differs from the provenance subject digest")
    if problems:
        raise VerificationError(f"{path}: " + "; ".join(problems[:4]))
    return statement

