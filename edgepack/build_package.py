"""Package one recipe's build: the built targets with report, provenance and the report documents, signed and
verified in the staging folder, then swapped into place (edgepack/bundle/manifest.py write_bundle)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from . import build_checks as pre_build
from . import failpoints
from .paths import scrub_host_paths
from .validate import artifact_contract

if TYPE_CHECKING:
    from .pipeline import RecipeBuild


def write_signed_bundle(rb: RecipeBuild, report: dict, artifacts: dict) -> Path:
    """Package the built targets with report and provenance, sign and verify in staging, swap into place."""
    from .bundle.fsutil import owned_temp_path
    from .bundle.manifest import write_bundle
    from .bundle.provenance import PROVENANCE_NAME, write_provenance
    from .bundle.sign import sign_bundle, verify_bundle

    lr, r, out_dir, key = rb.lr, rb.lr.recipe, rb.out_dir, rb.key_path
    files = {f"targets/{tid}/{art.path.name}": art.path for tid, art in artifacts.items()}
    files.update({name: art.path for name, art in rb.bundle_files.items()})
    manifest = _manifest(rb, report, artifacts)
    manifest["provenance"] = PROVENANCE_NAME  # signed in-toto SLSA statement, covered by the bundle signature too
    pkg = r.package
    cert = lr.resolve(pkg.certificate) if pkg.certificate else None
    chain = [lr.resolve(c) for c in pkg.certificate_chain]

    def sign_staged(staged: Path) -> None:  # sign and verify in the staging folder: only a signed bundle is swapped in
        sign_bundle(staged, key, certificate=cert, certificate_chain=chain, files_checked=True)  # write_bundle just hashed them
        failpoints.hit("sign.after_write")
        if cert is not None and chain:
            verify_bundle(staged, cert_chain=chain)  # the certificate must chain to the recipe's CA
        else:
            with tempfile.TemporaryDirectory(prefix="edgepack-pub-") as d:  # the public half of the key just used
                verify_bundle(staged, _public_pem(key, Path(d)))

    prov = write_provenance(owned_temp_path(out_dir, PROVENANCE_NAME), files, manifest, key,  # unique per build
                            rb.started, report["finished"], lr.path.name)
    try:
        from .report_docs import bundle_docs

        report, docs = bundle_docs(report, manifest, prov)  # summary first; timings.json, report.html, MODEL_CARD.md
        return write_bundle(out_dir, {**files, PROVENANCE_NAME: prov}, manifest, report, before_swap=sign_staged, docs=docs)
    finally:
        prov.unlink(missing_ok=True)


def _manifest(rb: RecipeBuild, report: dict, artifacts: dict) -> dict:
    r, targets, conv = rb.lr.recipe, report["targets"], report["conversion"]["record"]
    frozen = rb.data
    manifest = {
        "name": r.name, "version": r.version, "created": report["finished"], "recipe_sha256": report["recipe_sha256"],
        "source": report["source"],
        "conversion": {"exporter": conv.get("exporter"), "toolchain": conv.get("toolchain", {}),  # versions where it ran
                       **({"toolchain_env": conv["environment"]} if "environment" in conv else {})},  # a toolchain env
        "calibration_sha256": frozen["calibration"].digest if "calibration" in frozen else None,
        "validation_sha256": frozen["validation"].digest if "validation" in frozen else None,
        "targets": {
            tid: {
                "type": targets[tid]["type"], "path": f"targets/{tid}/{art.path.name}", "format": art.format,
                "runtime": art.meta.get("runtime"), "precision": art.meta.get("precision"),
                "inputs": [s.to_json() for s in art.inputs], "outputs": [s.to_json() for s in art.outputs],
                "runner": artifact_contract(art, [i.name for i in r.model.inputs]).to_json(),  # edgepack/contract.py
                "toolchain": rb.target_stages[tid].toolchain(),  # converters/runtimes this target's compile stage used
                **({"toolchain_env": targets[tid]["compile"]["environment"]} if "environment" in targets[tid].get("compile", {}) else {}),
                "validated_on": [d for d, v in targets[tid]["devices"].items() if v.get("status") == "ok"],
            }
            for tid, art in artifacts.items()
        },
        "toolchain": report["toolchain"],
        "lineage": [{k: s[k] for k in ("name", "stage", "version", "key", "inputs", "outputs")} for s in rb.engine.lineage],
    }
    manifest.update({name: f"{name}/" for name in rb.bundle_files})  # "tokenizer": "tokenizer/"
    if "hf" in report["conversion"].get("record", {}):  # task, model type, pooling, class labels of an hf source
        manifest["hf"] = report["conversion"]["record"]["hf"]
    return scrub_host_paths(manifest, pre_build.host_prefixes(rb.lr, rb.out_dir, rb.cache.root))


def _public_pem(private: Path, folder: Path) -> Path:
    """Write the public half of ``private`` to ``folder`` (a user's key may have no .pub.pem beside it)."""
    from cryptography.hazmat.primitives import serialization

    from .bundle.sign import load_private_key

    pem = load_private_key(private).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = folder / "public.pem"
    path.write_bytes(pem)
    return path
