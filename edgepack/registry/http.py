"""A remote OCI distribution registry as a store: manifests, blobs, tags, referrers (``requests``).

Implements the calls of the OCI distribution spec that edgepack needs: chunked blob upload
(POST, PATCH with Content-Range, PUT ?digest=), cross-repository mount (POST ?mount=&from=),
manifest GET/PUT by tag or digest, tag listing with pagination, and the referrers API with the
``sha256-<hex>`` tag-schema fallback. Auth is the registry's own challenge (Basic, or Bearer
through its token service); see ``auth.py``.

Bounded, on every request (docs/registry.md "Timeouts, retries, limits"):
- every body is read while it streams and cut off at its bound: the declared size for a blob,
  4 MiB for manifests, indexes, tag lists and token answers;
- time: an overall deadline for all traffic of one command (``--timeout``, default 600 s) and a
  per-request one (60 s, plus 1 s per MiB of a blob body; ``EDGEPACK_REGISTRY_REQUEST_TIMEOUT``);
  no byte for the per-request time is a stall;
- retries: 429, 5xx, connection resets and stalls are retried 3 times with exponential backoff
  (0.5, 1, 2 s, or the registry's ``Retry-After`` up to 10 s), never past the overall deadline.

Errors: unreachable host, TLS failure, time out or a 5xx after the retries -> EdgepackError (exit
1); 401/403/404 -> BadInputError (exit 2) naming the registry and where the credentials came from
(never the credentials); a manifest whose bytes do not match its digest, or a body larger than its
bound -> VerificationError (exit 4).
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

from edgepack.errors import BadInputError, EdgepackError, VerificationError
from edgepack.progress_hooks import report
from edgepack.registry.auth import api_host, credentials_for, parse_challenge, realm_allowed, scheme_for, tls_verify
from edgepack.registry.limits import ATTEMPTS, MIN_RATE, RETRY_STATUS, chunk_size, timeouts
from edgepack.registry.refs import DIGEST_RE

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])
MAX_MANIFEST = 4 << 20  # the spec's suggested limit; edgepack manifests are a few KB


_BOUND_HINT = "the registry sent more than the artifact declares; nothing was kept"


class TransientError(EdgepackError):
    """A network failure that may pass: reset, stall, time out (exit 1 once the retries are spent)."""


class RemoteStore:
    kind = "remote"

    def __init__(self, host: str, repository: str, plain_http: bool = False, timeout: float | None = None):
        import requests

        self.host, self.repository = host, repository
        self.name = f"{host}/{repository}"
        self.api = api_host(host)
        self.plain_http = plain_http
        self.base = f"{scheme_for(self.api, plain_http)}://{self.api}/v2/{repository}"
        self.session = requests.Session()
        self.session.verify = tls_verify()
        self.session.trust_env = False  # no ~/.netrc credentials or proxies picked up behind the user's back
        self.overall, self.per_request = timeouts(timeout)
        self.deadline = time.monotonic() + self.overall
        self.creds = credentials_for(host)
        self._auth: str | None = None
        self.realm_refused: str | None = None
        self.supports_referrers: bool | None = None

    # ------------------------------------------------------------ plumbing

    def _left(self, what: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise EdgepackError(f"registry {self.host}: gave up after the {self.overall:g} s overall deadline ({what})",
                                hint="the registry is slow or stalled; try again later, or raise --timeout")
        return left

    def _stalled(self, what: str, limit: float) -> TransientError:
        return TransientError(f"registry {self.host}: no complete answer within {limit:.3g} s ({what})",
                              hint="the registry is slow or stalled; try again later, or raise --timeout")

    def _send(self, method: str, url: str, what: str, headers=None, limit: int = MAX_MANIFEST, stream: bool = False,
              expect: int = 0, with_auth: bool = True, **kw):
        """One HTTP exchange under the per-request deadline; the body (unless ``stream``) read
        while it streams and cut off past ``limit`` bytes. TransientError when it may pass."""
        import requests

        h = dict(headers or {})
        if self._auth and with_auth:
            h["Authorization"] = self._auth
        budget = min(self._left(what), self.per_request + expect / MIN_RATE)
        until = time.monotonic() + budget
        idle = min(budget, self.per_request)
        try:
            r = self.session.request(method, url, headers=h, timeout=(idle, idle), stream=True, allow_redirects=True, **kw)
        except requests.exceptions.SSLError as e:
            raise EdgepackError(f"TLS handshake failed ({what})",
                                hint="set EDGEPACK_REGISTRY_CA to your CA bundle; use --plain-http only for a registry without TLS", where=self.host) from e
        except requests.Timeout as e:
            raise self._stalled(what, idle) from e
        except requests.ConnectionError as e:
            kind = TransientError if _after_connect(e) else EdgepackError  # refused / no such host: no retry
            raise kind(f"registry {self.host} is unreachable ({what}): {type(e).__name__}",
                       hint="check the host and port, and that the registry is running") from e
        r.edgepack_until, r.edgepack_budget = until, budget
        if stream or method == "HEAD":
            return r
        r._content = b"".join(self.chunks(r, what, limit, until))
        r._content_consumed = True
        return r

    def chunks(self, r, what: str, limit: int | None, until: float):
        """Iterate a streamed body: at most ``limit`` bytes, by ``until`` (monotonic), else raise.

        Reads what each recv brings (``read1``), so a body trickling in byte by byte is checked
        against the deadline after every byte, not after a full 64 KiB block."""
        import requests
        from urllib3.exceptions import HTTPError as Urllib3Error

        declared = r.headers.get("Content-Length", "")
        if limit is not None and declared.isdigit() and int(declared) > limit:
            r.close()
            raise VerificationError(f"{what} is {declared} bytes, over its {limit}-byte bound", hint=_BOUND_HINT, where=self.name)
        n = 0
        try:
            while True:
                block = r.raw.read1(1 << 16)
                if not block:
                    break
                n += len(block)
                if limit is not None and n > limit:
                    raise VerificationError(f"{what} is larger than its {limit}-byte bound (cut off while streaming)",
                                            hint=_BOUND_HINT, where=self.name)
                if time.monotonic() > until:
                    raise self._stalled(what, r.edgepack_budget)
                yield block
        except (requests.RequestException, Urllib3Error, OSError) as e:
            raise TransientError(f"registry {self.host}: connection lost while reading {what}: {type(e).__name__}",
                                 hint="the registry or the network dropped the transfer; try again") from e
        finally:
            r.close()

    def _request(self, method: str, url: str, what: str, ok=(200,), headers=None, **kw):
        url = urljoin(self.base + "/", url) if not url.startswith("http") else url
        authed = False
        attempt = 0
        while True:
            try:
                r = self._send(method, url, what, headers, **kw)
            except TransientError:
                attempt += 1
                if attempt >= ATTEMPTS:
                    raise
                self._backoff(attempt, None, what)
                continue
            if r.status_code == 401 and not authed and self._authenticate(r):
                authed = True
                continue
            if r.status_code in RETRY_STATUS and attempt + 1 < ATTEMPTS:
                attempt += 1
                r.close()
                self._backoff(attempt, r.headers.get("Retry-After"), what)
                continue
            break
        if r.status_code in ok:
            return r
        if not r._content_consumed:  # a streamed error body: read a bounded piece for the message
            try:
                r._content = b"".join(self.chunks(r, what, 64 << 10, time.monotonic() + 5))
            except EdgepackError:
                r._content = b""
            r._content_consumed = True
        self._fail(r, what)

    def _fail(self, r, what: str):
        detail = ""
        try:
            errs = r.json().get("errors") or []
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs[:2])
        except (ValueError, AttributeError, EdgepackError):
            detail = (r.text or "").strip()[:120] if r._content_consumed else ""
        detail = f" ({detail})" if detail else ""
        if r.status_code == 401:
            src = f"credentials from {self.creds.source}" if self.creds.present else "no credentials found for this host"
            if self.realm_refused:
                raise BadInputError(f"401 unauthorized {what}; {src}, not sent to the token service {self.realm_refused} "
                                    "(plain HTTP on another host or port)",
                                    hint="the token service must be https, or the registry's own host:port with --plain-http", where=self.name)
            raise BadInputError(f"401 unauthorized {what}; {src}",
                                hint="set EDGEPACK_REGISTRY_AUTH for this host, or `docker login` to it", where=self.name)
        if r.status_code == 403:
            raise BadInputError(f"403 denied {what}{detail}", hint="the account lacks push/pull rights on this repository", where=self.name)
        if r.status_code == 404:
            raise BadInputError(f"not found: {what}{detail}", hint="check the repository and tag (`edgepack ls`)", where=self.name)
        raise EdgepackError(f"registry answered {r.status_code} {what}{detail}", where=self.name)

    def _authenticate(self, r) -> bool:
        """Answer a 401 challenge once; False when there is nothing to answer with.

        Credentials are this host's only (``auth.credentials_for``); a Bearer challenge's token
        realm gets them only over HTTPS, or over plain HTTP on the registry's own host:port when
        ``--plain-http`` was asked (``auth.realm_allowed``)."""
        scheme, params = parse_challenge(r.headers.get("WWW-Authenticate", ""))
        c = self.creds
        if scheme == "basic":
            if not (c.username and c.password is not None):
                return False
            self._auth = "Basic " + base64.b64encode(f"{c.username}:{c.password}".encode()).decode()
            return True
        if scheme != "bearer" or "realm" not in params:
            return False
        realm = params["realm"]
        if c.present and not realm_allowed(realm, self.api, self.plain_http):
            self.realm_refused = realm
            return False
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        query.setdefault("scope", f"repository:{self.repository}:pull,push")
        what = f"asking the token service {urlsplit(realm).netloc}"
        try:
            if c.token and not c.password:
                t = self._send("POST", realm, what, with_auth=False, limit=1 << 20, data={
                    "grant_type": "refresh_token", "refresh_token": c.token, "client_id": "edgepack", **query})
            else:
                h = {}
                if c.username and c.password is not None:
                    h["Authorization"] = "Basic " + base64.b64encode(f"{c.username}:{c.password}".encode()).decode()
                t = self._send("GET", realm, what, headers=h, with_auth=False, limit=1 << 20, params=query)
        except TransientError as e:
            raise EdgepackError(f"token service of {self.host} is unreachable: {e.text()}") from e
        if t.status_code != 200:
            return False  # the original 401 is reported
        try:
            body = t.json()
        except ValueError:
            return False
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not token:
            return False
        self._auth = f"Bearer {token}"
        return True

    def _backoff(self, attempt: int, retry_after: str | None, what: str) -> None:
        delay = 0.5 * 2 ** (attempt - 1) + random.uniform(0, 0.1)
        if retry_after and retry_after.strip().isdigit():
            delay = min(float(retry_after), 10.0)
        if delay >= self._left(what):
            raise EdgepackError(f"registry {self.host}: no time left for a retry within the {self.overall:g} s deadline ({what})",
                                hint="the registry keeps failing; try again later, or raise --timeout")
        time.sleep(delay)

    def check_access(self) -> None:
        """GET /v2/ (answering the auth challenge): reachable, TLS ok, credentials accepted."""
        self._request("GET", self.base.split("/v2/")[0] + "/v2/", "checking access")

    # ------------------------------------------------------------ manifests

    def get_manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest or index; the digest is checked."""
        r = self._request("GET", f"manifests/{reference}", f"manifest {reference}", headers={"Accept": ACCEPT})
        data = r.content  # read under MAX_MANIFEST while streaming (``_send``)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        expected = reference if DIGEST_RE.match(reference) else r.headers.get("Docker-Content-Digest")
        if expected and expected != digest:
            raise VerificationError(f"manifest {reference} does not match its digest {expected} (tampered or corrupted)",
                                    hint="republish the bundle; do not use this artifact", where=self.name)
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
                report(f"upload {digest[7:19]}", offset, size, unit="bytes")
        self._request("PUT", _with_digest(loc, digest), f"finishing upload of {digest}", ok=(201,),
                      headers={"Content-Type": "application/octet-stream"})
        return True

    def mount_blob(self, digest: str, from_repository: str) -> bool:
        """Cross-repository mount (POST ?mount=&from=): True when the registry linked the blob
        without an upload; False when it offered an upload instead (which is cancelled)."""
        r = self._request("POST", f"blobs/uploads/?mount={quote(digest)}&from={quote(from_repository)}",
                          f"mounting {digest} from {from_repository}", ok=(201, 202))
        if r.status_code == 201:
            return True
        loc = r.headers.get("Location")
        if loc:
            try:
                self._request("DELETE", urljoin(self.base + "/", loc), "cancelling an unused upload", ok=(204, 404))
            except EdgepackError:
                pass  # the registry expires unused uploads itself
        return False

    @contextmanager
    def open_blob(self, digest: str, size: int | None = None):
        """Yield the blob's byte chunks, cut off past ``size`` (the declared size) and at the
        per-request deadline; the caller hashes them."""
        r = self._request("GET", f"blobs/{digest}", f"blob {digest}", stream=True, expect=size or 0)
        try:
            yield self.chunks(r, f"blob {digest}", size, r.edgepack_until)
        finally:
            r.close()

    def read_blob(self, digest: str, limit: int = MAX_MANIFEST) -> bytes:
        """A small blob, whole (at most ``limit`` bytes); a broken transfer is retried."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                with self.open_blob(digest, limit) as chunks:
                    return b"".join(chunks)
            except TransientError:
                if attempt == ATTEMPTS:
                    raise
                self._backoff(attempt, None, f"blob {digest}")
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ tags and referrers

    def tags(self) -> list[str]:
        out: list[str] = []
        url: str | None = "tags/list?n=1000"
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


def _after_connect(e: Exception) -> bool:
    """A connection that was made and then broke (reset, closed), not one refused or unresolvable."""
    from urllib3.exceptions import NameResolutionError, NewConnectionError

    reason = getattr(e.args[0], "reason", e.args[0]) if e.args else None
    return not isinstance(reason, (NewConnectionError, NameResolutionError))


def _with_digest(loc: str, digest: str) -> str:
    return f"{loc}{'&' if '?' in loc else '?'}digest={digest}"
