"""Registry references.

- ``layout:PATH:TAG`` or ``layout:PATH@sha256:HEX``: an OCI image-layout folder (one per model
  name) and a tag (the model version). The last ``:`` splits PATH from TAG; ``~`` is expanded.
- ``host[:port]/repo/sub:tag`` or ``host[:port]/repo@sha256:HEX``: a remote OCI registry
  (parsed here; the I/O lives in ``registry/remote.py``). The first component must look like a
  host (contain ``.`` or ``:``, or be ``localhost``); there is no default registry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgepack.errors import BadInputError, VerificationError

TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_REPO_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_HOST_RE = re.compile(r"^(?:localhost|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?$")
_HINT = "use layout:PATH:TAG for a local registry folder, or HOST[:PORT]/REPO:TAG"


@dataclass(frozen=True)
class Ref:
    kind: str  # "layout" or "remote"
    tag: str | None = None
    digest: str | None = None  # "sha256:<hex>" when pinned by digest
    path: Path | None = None  # layout only
    host: str | None = None  # remote only, with ":port" when given
    repository: str | None = None  # remote only

    @property
    def reference(self) -> str | None:
        """The tag or digest to resolve."""
        return self.digest or self.tag

    @property
    def name(self) -> str:
        """The model name this reference stands for: the layout folder's name or the repository's last part."""
        if self.kind == "layout" and self.path is not None:
            return self.path.name
        return str(self.repository).rsplit("/", 1)[-1]

    def __str__(self) -> str:
        base = f"layout:{self.path}" if self.kind == "layout" else f"{self.host}/{self.repository}"
        if self.digest:
            return f"{base}@{self.digest}"
        return f"{base}:{self.tag}" if self.tag else base


def parse_ref(s: str, require_tag: bool = True) -> Ref:
    """Parse a layout or remote reference; BadInputError for a malformed one.

    With ``require_tag=False`` the tag may be left out (for listing tags).
    """
    if not isinstance(s, str) or not s.strip():
        raise BadInputError("empty registry reference", hint=_HINT)
    s = s.strip()
    if s.startswith("layout:"):
        return _parse_layout(s, require_tag)
    return _parse_remote(s, require_tag)


def _split_digest(s: str, full: str) -> tuple[str, str | None]:
    if "@" not in s:
        return s, None
    base, digest = s.rsplit("@", 1)
    if not DIGEST_RE.match(digest):
        raise BadInputError(f"bad digest in reference {full!r}: expected sha256:<64 hex digits>", hint=_HINT)
    return base, digest


def _check_tag(tag: str, full: str) -> str:
    if not TAG_RE.match(tag):
        raise BadInputError(
            f"bad tag {tag!r} in reference {full!r}: use letters, digits, '_', '.', '-' (at most 128, not starting with '.' or '-')",
            hint=_HINT,
        )
    return tag


def _parse_layout(s: str, require_tag: bool) -> Ref:
    body, digest = _split_digest(s[len("layout:"):], s)
    tag = None
    if digest is None:
        if ":" in body:
            body, tag = body.rsplit(":", 1)
            _check_tag(tag, s)
        elif require_tag:
            raise BadInputError(f"reference {s!r} has no tag", hint="write layout:PATH:TAG, e.g. layout:./registry/resnet:1.0.0")
    if not body:
        raise BadInputError(f"reference {s!r} has no path", hint="write layout:PATH:TAG, e.g. layout:./registry/resnet:1.0.0")
    return Ref(kind="layout", tag=tag, digest=digest, path=Path(body).expanduser())


def _parse_remote(s: str, require_tag: bool) -> Ref:
    body, digest = _split_digest(s, s)
    if "/" not in body:
        raise BadInputError(f"reference {s!r} names no registry host", hint=_HINT)
    host, rest = body.split("/", 1)
    if not (("." in host or ":" in host or host == "localhost") and _HOST_RE.match(host)):
        raise BadInputError(f"reference {s!r}: {host!r} is not a registry host", hint=_HINT)
    tag = None
    last = rest.rsplit("/", 1)[-1]
    if digest is None and ":" in last:
        rest, tag = rest.rsplit(":", 1)
        _check_tag(tag, s)
    elif digest is None and require_tag:
        raise BadInputError(f"reference {s!r} has no tag", hint="write HOST/REPO:TAG, e.g. ghcr.io/acme/resnet:1.0.0")
    components = rest.split("/")
    if not all(_REPO_COMPONENT.match(c) for c in components):
        raise BadInputError(
            f"reference {s!r}: bad repository {rest!r} (lowercase letters, digits and . _ - separators)",
            hint=_HINT,
        )
    return Ref(kind="remote", tag=tag, digest=digest, host=host, repository=rest)


def as_ref(ref: str | Ref, require_tag: bool = True) -> Ref:
    return ref if isinstance(ref, Ref) else parse_ref(ref, require_tag=require_tag)


def check_identity(ref: Ref, name, version, where: str, error=VerificationError) -> None:
    """The signed name (and, for a tag, version) must be the reference's: no tag re-pointed at
    another release (a downgrade), no bundle of another model under this name. A digest
    reference is checked against the name only."""
    problems = []
    if str(name) != ref.name:
        problems.append(f"name {name!r} but the reference names {ref.name!r}")
    if ref.tag is not None and str(version) != ref.tag:
        problems.append(f"version {version!r} but the reference's tag is {ref.tag!r}")
    if problems:
        raise error(f"{where}: the signed bundle has " + " and ".join(problems),
                    hint="a tag must name the release it holds (tag = version, repository = model name); "
                         "pull by the tag of the version you want, or pin by digest")
