"""The bundle directory and its manifest, ``edgepack.json``.

A bundle is::

    edgepack.json      manifest: schema_version, name, version, targets, ..., files
    report.json        the validation report (summary first; edgepack/report_summary.py)
    timings.json, report.html, MODEL_CARD.md   written by the build (edgepack/report_docs.py)
    targets/...        per-target artifacts (files or whole folders, e.g. an OpenVINO IR)
    signatures/        model.sig, written by ``edgepack.bundle.sign.sign_bundle``

``files`` lists ``{path, sha256, size}`` for every file except ``edgepack.json`` itself and
anything under ``signatures/``, sorted by path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgepack import failpoints
from edgepack.artifact import sha256_file
from edgepack.bundle.fsutil import replace_dir, safe_relpath, temp_dir_beside
from edgepack.errors import BadInputError, EdgepackError, VerificationError

SCHEMA_VERSION = 1
MANIFEST_NAME = "edgepack.json"
REPORT_NAME = "report.json"
SIGNATURES_DIR = "signatures"
_RESERVED = {MANIFEST_NAME, REPORT_NAME, SIGNATURES_DIR, "timings.json", "report.html", "MODEL_CARD.md"}


def dump_json(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def write_bundle(out_dir: Path, files: dict[str, Path], manifest: dict, report: dict, before_swap=None,
                 docs: dict[str, bytes] | None = None) -> Path:
    """Build a bundle in an owned staging folder next to ``out_dir`` and swap it into place
    atomically (``replace_dir``).

    ``files`` maps relative posix paths inside the bundle to source files or folders.
    ``schema_version`` and ``files`` in the written manifest are always set here.
    ``before_swap(staging_dir)`` runs on the complete staged bundle before the swap (the build
    signs and verifies there), so ``out_dir`` only ever holds the old or the new finished bundle;
    if it raises, or the process dies, ``out_dir`` is untouched.
    ``docs`` maps reserved top-level names (timings.json, report.html, MODEL_CARD.md) to their bytes; they are
    listed, hashed and signed like every other file. report.json keeps the report's key order.
    """
    out_dir = Path(out_dir)
    sources = _check_sources(files)
    tmp = temp_dir_beside(out_dir, "the bundle")
    try:
        for rel, src in sources.items():
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                if src.is_dir():
                    shutil.copytree(src, dest)
                else:
                    shutil.copyfile(src, dest)
            except OSError as e:
                raise EdgepackError(f"cannot copy {src} into the bundle as {rel}: {e}") from e
        # plain writes: the staging folder is owned and swapped in whole, like the copied target files above (a
        # per-file temp + fsync here cost ~18 ms a file, most of a cached build's packaging)
        (tmp / REPORT_NAME).write_bytes((json.dumps(report, indent=2) + "\n").encode())
        for name, data in (docs or {}).items():
            if name not in _RESERVED or "/" in name:
                raise BadInputError(f"bundle document {name!r}: not one of the report files edgepack writes")
            (tmp / name).write_bytes(data)
        doc = dict(manifest)
        doc["schema_version"] = SCHEMA_VERSION
        doc["files"] = list_files(tmp)
        (tmp / MANIFEST_NAME).write_bytes(dump_json(doc))
        failpoints.hit("package.after_write")
        if before_swap is not None:
            before_swap(tmp)
        return replace_dir(tmp, out_dir, "the bundle")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _check_sources(files: dict[str, Path]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for rel, src in files.items():
        try:
            p = safe_relpath(rel)
        except ValueError as e:
            raise BadInputError(f"bundle file {rel!r}: {e}") from e
        if p.parts[0] in _RESERVED:
            raise BadInputError(f"bundle file {rel!r}: '{p.parts[0]}' is reserved for edgepack")
        src = Path(src)
        if not src.exists():
            raise BadInputError(f"bundle file {rel}: source {src} does not exist")
        out[p.as_posix()] = src
    names = sorted(out)
    for a, b in zip(names, names[1:]):
        if b.startswith(a + "/"):
            raise BadInputError(f"bundle files {a!r} and {b!r} overlap")
    return out


def list_files(bundle_dir: Path) -> list[dict]:
    """``{path, sha256, size}`` of every covered file (all but edgepack.json and signatures/)."""
    bundle_dir = Path(bundle_dir)
    out = []
    for rel in _walk(bundle_dir):
        p = bundle_dir / rel
        if p.is_symlink() or not p.is_file():
            raise VerificationError("not a regular file (symlinks are not allowed)", where=rel)
        out.append({"path": rel, "sha256": sha256_file(p), "size": p.stat().st_size})
    return out


def _walk(bundle_dir: Path) -> list[str]:
    """Relative posix paths of all non-directory entries outside edgepack.json and signatures/."""
    rels = []
    for p in bundle_dir.rglob("*"):
        rel = p.relative_to(bundle_dir).as_posix()
        if rel == MANIFEST_NAME or rel.split("/")[0] == SIGNATURES_DIR:
            continue
        if p.is_symlink() or not p.is_dir():
            rels.append(rel)
    return sorted(rels)


def read_manifest(bundle_dir: Path) -> dict:
    """Load and sanity-check ``edgepack.json``; BadInputError when missing or corrupt."""
    path = Path(bundle_dir) / MANIFEST_NAME
    hint = "point at a folder made by `edgepack build`"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise BadInputError(f"{path} not found: not an edgepack bundle", hint=hint) from e
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BadInputError(f"{path} is unreadable or not valid JSON: {e}", hint=hint) from e
    problem = _manifest_problem(doc)
    if problem:
        raise BadInputError(f"{problem}", hint=hint, where=path)
    return doc


def _manifest_problem(doc) -> str | None:
    if not isinstance(doc, dict):
        return "expected a JSON object"
    version = doc.get("schema_version")
    if not isinstance(version, int):
        return "missing integer 'schema_version'"
    if version > SCHEMA_VERSION:
        return f"schema_version {version} is newer than this edgepack supports ({SCHEMA_VERSION})"
    files = doc.get("files")
    if not isinstance(files, list):
        return "missing list 'files'"
    for i, f in enumerate(files):
        if not (
            isinstance(f, dict)
            and isinstance(f.get("path"), str)
            and isinstance(f.get("sha256"), str)
            and isinstance(f.get("size"), int)
        ):
            return f"files[{i}] must be an object with path, sha256 and size"
    return None


def check_files(bundle_dir: Path, manifest: dict | None = None) -> int:
    """Compare the files on disk with the manifest's ``files``; return how many were checked.

    Raises VerificationError listing every modified, missing or unlisted file by relative path.
    """
    bundle_dir = Path(bundle_dir)
    if manifest is None:
        try:
            manifest = read_manifest(bundle_dir)
        except BadInputError as e:
            raise e.recast(VerificationError) from e
    listed = {f["path"]: f for f in manifest["files"]}
    on_disk = set(_walk(bundle_dir))
    problems = []
    for rel in sorted(set(listed) | on_disk):
        p = bundle_dir / rel
        if rel not in on_disk:
            problems.append(f"{rel}: listed in edgepack.json but missing")
        elif rel not in listed:
            problems.append(f"{rel}: not listed in edgepack.json")
        elif p.is_symlink() or not p.is_file():
            problems.append(f"{rel}: not a regular file (symlinks are not allowed)")
        elif p.stat().st_size != listed[rel]["size"] or sha256_file(p) != listed[rel]["sha256"]:
            problems.append(f"{rel}: sha256 mismatch")
    if problems:
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise VerificationError(
            "; ".join(problems[:5]) + more,
            hint="the bundle was modified after it was built; rebuild or re-pull it",
        )
    return len(listed)
