"""A real OCI registry for tests: Debian's `docker-registry` (CNCF distribution) on 127.0.0.1.

``RegistryServer(tmp, auth=False|True|"token").start()`` writes a config with filesystem storage under
``tmp``, picks a free port, starts ``/usr/bin/docker-registry serve CONFIG`` and waits for
``GET /v2/`` to answer. With ``auth=True`` it uses an htpasswd file made by ``htpasswd -B``
(bcrypt, the only hash distribution accepts); with ``auth="token"`` the registry sends clients
to a ``TokenServer`` (Bearer JWTs, as Docker Hub or GHCR do). ``blob_path(digest)``
locates stored blobs and manifests so tamper tests can corrupt them on disk.
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import time
from pathlib import Path

import requests

REGISTRY_BIN = "/usr/bin/docker-registry"
USER, PASSWORD = "ci-user", "s3cret-Pa55"


def available() -> str | None:
    """None when the registry and htpasswd are installed, else the reason to skip."""
    if not Path(REGISTRY_BIN).is_file():
        return "docker-registry is not installed (scripts/setup-tests.sh installs it with apt-get)"
    if shutil.which("htpasswd") is None:
        return "htpasswd is not installed (apt-get install apache2-utils)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def auth_env(*hosts: str) -> dict[str, str]:
    """``EDGEPACK_REGISTRY_AUTH`` giving USER/PASSWORD to these hosts only."""
    import json

    return {"EDGEPACK_REGISTRY_AUTH": json.dumps({h: {"username": USER, "password": PASSWORD} for h in hosts})}


class TokenServer:
    """A token service as Docker Hub / GHCR / Harbor run one: Basic credentials in, a signed JWT out.

    Real HTTP on 127.0.0.1 and real ES256 JWTs with an ``x5c`` chain that the registry checks
    against ``rootcertbundle``; grants what is asked for to USER/PASSWORD, 401 otherwise.
    """

    def __init__(self, root: Path, service: str = "edgepack-test", issuer: str = "edgepack-test-issuer"):
        import datetime as dt

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.service, self.issuer, self.port = service, issuer, free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgepack test token signer")])
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number()).not_valid_before(now)
                     .not_valid_after(now + dt.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.rootcert = Path(root) / "token-root.pem"
        self.rootcert.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.requests: list[str] = []  # scopes asked for, for assertions
        self.authorizations: list[str | None] = []  # Authorization headers received (to prove none leaked)
        self.httpd = None

    def token(self, scope: str) -> str:
        import json
        import time as _t
        import uuid

        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
        from cryptography.hazmat.primitives import hashes

        def b64(b: bytes) -> str:
            return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

        access = []
        for sc in filter(None, scope.split(" ")):
            typ, name, actions = sc.split(":")
            access.append({"type": typ, "name": name, "actions": actions.split(",")})
        now = int(_t.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        claims = {"iss": self.issuer, "sub": USER, "aud": self.service, "exp": now + 300, "nbf": now - 60, "iat": now,
                  "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        r, s_ = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s_.to_bytes(32, 'big'))}"

    def start(self) -> "TokenServer":
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlparse

        server = self
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                q = parse_qs(urlparse(self.path).query)
                scope = " ".join(q.get("scope", []))
                server.requests.append(scope)
                server.authorizations.append(self.headers.get("Authorization"))
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"token": server.token(scope), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


class RegistryServer:
    def __init__(self, root: Path, auth: bool | str = False, realm: str | None = None):
        """``auth``: False, True / "htpasswd" (Basic), or "token" (Bearer through a TokenServer);
        ``realm``: the token URL the registry names in its challenge (default: the TokenServer's own)."""
        self.root = Path(root)
        self.auth = auth
        self.realm = realm
        self.tokens: TokenServer | None = None
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.storage = self.root / "storage"
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "registry.log"

    def _config(self) -> Path:
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.storage}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: {self.host}",
        ]
        if self.auth == "token":
            self.tokens = TokenServer(self.root).start()
            lines += ["auth:", "  token:", f"    realm: {self.realm or self.tokens.realm}", f"    service: {self.tokens.service}",
                      f"    issuer: {self.tokens.issuer}", f"    rootcertbundle: {self.tokens.rootcert}"]
        elif self.auth:
            htpasswd = self.root / "htpasswd"
            subprocess.run(["htpasswd", "-Bbc", str(htpasswd), USER, PASSWORD], check=True, capture_output=True)
            lines += ["auth:", "  htpasswd:", "    realm: edgepack-test", f"    path: {htpasswd}"]
        cfg = self.root / "config.yml"
        cfg.write_text("\n".join(lines) + "\n")
        return cfg

    def start(self) -> "RegistryServer":
        self.root.mkdir(parents=True, exist_ok=True)
        cfg = self._config()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log.read_text()[-2000:]}")
            try:
                r = requests.get(f"http://{self.host}/v2/", timeout=1)
                if r.status_code in (200, 401):
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"docker-registry did not answer on {self.host}: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.tokens is not None:
            self.tokens.stop()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def env(self) -> dict[str, str]:
        """Credentials as edgepack reads them from the environment: scoped to this registry's host."""
        return auth_env(self.host) if self.auth else {}

    def blob_path(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.storage / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2] / hexd / "data"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
