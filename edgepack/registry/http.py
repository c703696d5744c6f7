"""A remote OCI distribution registry as a store: manifests, blobs, tags, referrers (``requests``).

Implements the calls of the OCI distribution spec that edgepack needs: chunked blob upload
(POST, PATCH with Content-Range, PUT ?digest=), manifest GET/PUT by tag or digest, tag listing
with pagination, and the referrers API with the ``sha256-<hex>`` tag-schema fallback. Auth is
the registry's own challenge (Basic, or Bearer through its token service); see ``auth.py``.

Errors: unreachable host, TLS failure or a 5xx -> EdgepackError (exit 1); 401/403/404 ->
BadInputError (exit 2) naming the registry and where the credentials came from (never the
credentials); a manifest whose bytes do not match its digest -> VerificationError (exit 4).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urljoin

from edgepack.errors import BadInputError, EdgepackError, VerificationError
from edgepack.registry.auth import credentials_for, parse_challenge, scheme_for, tls_verify
from edgepack.registry.refs import DIGEST_RE

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])
MAX_MANIFEST = 4 << 20  # the spec's suggested limit; edgepack manifests are a few KB
DEFAULT_CHUNK = 8 << 20


def chunk_size() -> int:
    """Upload chunk in bytes (``EDGEPACK_REGISTRY_CHUNK`` overrides; blobs up to it go in one PUT)."""
    try:
        return max(1024, int(os.environ.get("EDGEPACK_REGISTRY_CHUNK", DEFAULT_CHUNK)))
    except ValueError as e:
        raise BadInputError(f"EDGEPACK_REGISTRY_CHUNK={os.environ['EDGEPACK_REGISTRY_CHUNK']!r} is not a byte count") from e


class RemoteStore:
    kind = "remote"

    def __init__(self, host: str, repository: str, plain_http: bool = False, timeout: float = 60.0):
        import requests

        self.host, self.repository = host, repository
        self.name = f"{host}/{repository}"
        self.base = f"{scheme_for(host, plain_http)}://{host}/v2/{repository}"
        self.session = requests.Session()
        self.session.verify = tls_verify()
        self.session.trust_env = False  # no ~/.netrc credentials or proxies picked up behind the user's back
        self.timeout = timeout
        self.creds = credentials_for(host)
        self._auth: str | None = None
        self.supports_referrers: bool | None = None

    # ------------------------------------------------------------ plumbing

    def _request(self, method: str, url: str, what: str, ok=(200,), headers=None, **kw):
        import requests

        url = urljoin(self.base + "/", url) if not url.startswith("http") else url
        for attempt in (0, 1):
            h = dict(headers or {})
            if self._auth:
                h["Authorization"] = self._auth
            try:
                r = self.session.request(method, url, headers=h, timeout=self.timeout, **kw)
            except requests.exceptions.SSLError as e:
                raise EdgepackError(f"{self.host}: TLS handshake failed ({what})",
                                    hint="set EDGEPACK_REGISTRY_CA to your CA bundle; use --plain-http only for a registry without TLS") from e
            except (requests.ConnectionError, requests.Timeout) as e:
                raise EdgepackError(f"registry {self.host} is unreachable ({what}): {type(e).__name__}",
                                    hint="check the host and port, and that the registry is running") from e
            if r.status_code == 401 and attempt == 0 and self._authenticate(r):
                continue
            break
        if r.status_code in ok:
            return r
        self._fail(r, what)

    def _fail(self, r, what: str):
        detail = ""
        try:
            errs = r.json().get("errors") or []
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs[:2])
        except (ValueError, AttributeError):
            detail = (r.text or "").strip()[:120]
        detail = f" ({detail})" if detail else ""
        if r.status_code == 401:
            src = f"credentials from {self.creds.source}" if self.creds.present else "no credentials found"
            raise BadInputError(f"{self.name}: 401 unauthorized {what}; {src}",
                                hint="set EDGEPACK_REGISTRY_USERNAME and EDGEPACK_REGISTRY_PASSWORD, or `docker login` to this host")
        if r.status_code == 403:
            raise BadInputError(f"{self.name}: 403 denied {what}{detail}", hint="the account lacks push/pull rights on this repository")
        if r.status_code == 404:
            raise BadInputError(f"{self.name}: not found: {what}{detail}", hint="check the repository and tag (`edgepack ls`)")
        raise EdgepackError(f"{self.name}: registry answered {r.status_code} {what}{detail}")

    def _authenticate(self, r) -> bool:
        """Answer a 401 challenge once; False when there is nothing to answer with."""
        scheme, params = parse_challenge(r.headers.get("WWW-Authenticate", ""))
        c = self.creds
        if scheme == "basic":
            if not (c.username and c.password is not None):
                return False
            self._auth = "Basic " + base64.b64encode(f"{c.username}:{c.password}".encode()).decode()
            return True
        if scheme != "bearer" or "realm" not in params:
            return False
        import requests

        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        query.setdefault("scope", f"repository:{self.repository}:pull,push")
        try:
            if c.token and not c.password:
                t = self.session.post(params["realm"], data={"grant_type": "refresh_token", "refresh_token": c.token,
                                                             "client_id": "edgepack", **query}, timeout=self.timeout)
            else:
                auth = (c.username, c.password) if c.username and c.password is not None else None
                t = self.session.get(params["realm"], params=query, auth=auth, timeout=self.timeout)
        except (requests.ConnectionError, requests.Timeout) as e:
            raise EdgepackError(f"token service of {self.host} is unreachable: {type(e).__name__}") from e
        if t.status_code != 200:
            return False  # the original 401 is reported
        try:
            body = t.json()
        except ValueError:
            return False
        token = body.get("token") or body.get("access_token")
        if not token:
            return False
        self._auth = f"Bearer {token}"
        return True

    def check_access(self) -> None:
        """GET /v2/ (answering the auth challenge): reachable, TLS ok, credentials accepted."""
        self._request("GET", self.base.split("/v2/")[0] + "/v2/", "checking access")

    # ------------------------------------------------------------ manifests

    def get_manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest or index; the digest is checked."""
        r = self._request("GET", f"manifests/{reference}", f"manifest {reference}", headers={"Accept": ACCEPT})
        data = r.content
        if len(data) > MAX_MANIFEST:
            raise VerificationError(f"{self.name}: manifest {reference} is {len(data)} bytes, over the {MAX_MANIFEST} limit")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        expected = reference if DIGEST_RE.match(reference) else r.headers.get("Docker-Content-Digest")
        if expected and expected != digest:
            raise VerificationError(f"{self.name}: manifest {reference} does not match its digest {expected} (tampered or corrupted)",
                                    hint="republish the bundle; do not use this artifact")
        media_type = (r.headers.get("Content-Type") or "").split(";")[0].strip()
        return data, media_type, digest

    def has_manifest(self, reference: str) -> bool:
        r = self._request("HEAD", f"manifests/{reference}", f"manifest {reference}", ok=(200, 404), headers={"Accept": ACCEPT})
        return r.status_code == 200

    def put_manifest(self, data: bytes, media_type: str, reference: str) -> dict:
        r = self._request("PUT", f"manifests/{reference}", f"pushing manifest {reference}", ok=(200, 201),
                          data=data, headers={"Content-Type": media_type})
        if b'"subject"' in data:
            self.supports_referrers = "OCI-Subject" in r.headers
        return dict(r.headers)

    # ------------------------------------------------------------ blobs

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        r = self._request("HEAD", f"blobs/{digest}", f"blob {digest}", ok=(200, 404))
        if r.status_code != 200:
            return False
        length = r.headers.get("Content-Length")
        return size is None or length is None or int(length) == size

    def put_blob(self, src: Path | bytes, digest: str, size: int) -> bool:
        """Upload unless present; chunked above ``chunk_size()``. True when bytes were sent."""
        if self.has_blob(digest, size):
            return False
        step = chunk_size()
        r = self._request("POST", "blobs/uploads/", f"starting upload of {digest}", ok=(202,))
        loc = urljoin(self.base + "/", r.headers["Location"])
        if size <= step:
            data = src if isinstance(src, bytes) else Path(src).read_bytes()
            self._request("PUT", _with_digest(loc, digest), f"uploading {digest}", ok=(201,), data=data,
                          headers={"Content-Type": "application/octet-stream"})
            return True
        offset = 0
        with (io.BytesIO(src) if isinstance(src, bytes) else open(src, "rb")) as f:
            while True:
                block = f.read(step)
                if not block:
                    break
                r = self._request("PATCH", loc, f"uploading {digest} at byte {offset}", ok=(202,), data=block, headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(block) - 1}",
                })
                loc = urljoin(loc, r.headers.get("Location", loc))
                offset += len(block)
        self._request("PUT", _with_digest(loc, digest), f"finishing upload of {digest}", ok=(201,),
                      headers={"Content-Type": "application/octet-stream"})
        return True

    @contextmanager
    def open_blob(self, digest: str):
        """Yield an iterator of byte chunks (the caller hashes them)."""
        r = self._request("GET", f"blobs/{digest}", f"blob {digest}", stream=True)
        try:
            yield r.iter_content(1 << 20)
        finally:
            r.close()

    def read_blob(self, digest: str, limit: int = MAX_MANIFEST) -> bytes:
        with self.open_blob(digest) as chunks:
            data = b""
            for block in chunks:
                data += block
                if len(data) > limit:
                    raise VerificationError(f"{self.name}: blob {digest} is larger than expected")
        return data

    # ------------------------------------------------------------ tags and referrers

    def tags(self) -> list[str]:
        out, url = [], "tags/list?n=1000"
        while url:
            r = self._request("GET", url, "listing tags", ok=(200, 404))
            if r.status_code == 404:
                return []
            out += r.json().get("tags") or []
            nxt = r.links.get("next", {}).get("url")
            url = urljoin(f"{self.base.split('/v2/')[0]}/", nxt) if nxt else None
        return out

    def referrers(self, digest: str) -> list[dict] | None:
        """Descriptors from the referrers API, or None when the registry does not offer it."""
        r = self._request("GET", f"referrers/{digest}", f"referrers of {digest}", ok=(200, 404, 405),
                          headers={"Accept": OCI_INDEX})
        if r.status_code != 200 or "json" not in r.headers.get("Content-Type", ""):
            return None
        try:
            return list(r.json().get("manifests") or [])
        except (ValueError, AttributeError):
            return None


def _with_digest(loc: str, digest: str) -> str:
    return f"{loc}{'&' if '?' in loc else '?'}digest={digest}"
