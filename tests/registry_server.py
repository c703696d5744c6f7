"""A real OCI registry for tests: Debian's `docker-registry` (CNCF distribution) on 127.0.0.1.

``RegistryServer(tmp, auth=False|True).start()`` writes a config with filesystem storage under
``tmp``, picks a free port, starts ``/usr/bin/docker-registry serve CONFIG`` and waits for
``GET /v2/`` to answer. With ``auth=True`` it uses an htpasswd file made by ``htpasswd -B``
(bcrypt, the only hash distribution accepts). ``blob_path(digest)`` and ``manifest_revision``
locate the stored data so tamper tests can corrupt it on disk.
"""

from __future__ import annotations

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
        return "docker-registry is not installed (scripts/test.sh installs it with apt-get)"
    if shutil.which("htpasswd") is None:
        return "htpasswd is not installed (apt-get install apache2-utils)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RegistryServer:
    def __init__(self, root: Path, auth: bool = False):
        self.root = Path(root)
        self.auth = auth
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
        if self.auth:
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
        """Credentials as edgepack reads them from the environment."""
        return {"EDGEPACK_REGISTRY_USERNAME": USER, "EDGEPACK_REGISTRY_PASSWORD": PASSWORD} if self.auth else {}

    def blob_path(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.storage / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2] / hexd / "data"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
