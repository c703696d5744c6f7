"""Registry credentials and transport security.

Credentials, first match wins (never written to manifests, reports or logs; error messages
name only the host and where the credentials came from):

1. ``EDGEPACK_REGISTRY_USERNAME`` + ``EDGEPACK_REGISTRY_PASSWORD`` (any host), or
   ``EDGEPACK_REGISTRY_TOKEN`` (a bearer / identity token, sent to the token service);
2. the Docker config file (``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``):
   ``auths[host].auth`` (base64 ``user:password``), ``username``/``password`` or
   ``identitytoken``. Credential helpers (``credsStore``/``credHelpers``) are not run.

Transport: HTTPS with certificate checks (``EDGEPACK_REGISTRY_CA`` names an extra CA bundle).
Plain HTTP only for loopback hosts (localhost, 127.0.0.0/8, ::1), or when asked explicitly
(``--plain-http`` / ``EDGEPACK_PLAIN_HTTP=host:port,...``).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from edgepack.errors import BadInputError


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    source: str = "none"  # where they came from, for messages (never the secret itself)

    @property
    def present(self) -> bool:
        return bool(self.token or (self.username and self.password is not None))


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return (Path(base).expanduser() if base else Path.home() / ".docker") / "config.json"


def credentials_for(host: str) -> Credentials:
    user, pw = os.environ.get("EDGEPACK_REGISTRY_USERNAME"), os.environ.get("EDGEPACK_REGISTRY_PASSWORD")
    token = os.environ.get("EDGEPACK_REGISTRY_TOKEN")
    if user and pw is not None:
        return Credentials(user, pw, source="EDGEPACK_REGISTRY_USERNAME/PASSWORD")
    if token:
        return Credentials(token=token, source="EDGEPACK_REGISTRY_TOKEN")
    path = docker_config_path()
    if not path.is_file():
        return Credentials()
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BadInputError(f"Docker config {path} is unreadable or not JSON", hint="fix or remove the file") from e
    auths = cfg.get("auths") if isinstance(cfg, dict) else None
    if not isinstance(auths, dict):
        return Credentials()
    entry = None
    for key in (host, f"https://{host}", f"http://{host}", f"https://{host}/v2/", f"http://{host}/v2/"):
        if isinstance(auths.get(key), dict):
            entry = auths[key]
            break
    if entry is None:
        return Credentials()
    src = f"{path} auths[{host}]"
    if entry.get("identitytoken"):
        return Credentials(entry.get("username"), None, token=entry["identitytoken"], source=src)
    if entry.get("auth"):
        try:
            user, _, pw = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError) as e:
            raise BadInputError(f"{src}.auth is not base64 'user:password'", hint="run `docker login` again") from e
        return Credentials(user, pw, source=src)
    if entry.get("username") and entry.get("password") is not None:
        return Credentials(entry["username"], entry["password"], source=src)
    return Credentials()


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def scheme_for(host: str, plain_http: bool = False) -> str:
    allowed = {h.strip() for h in os.environ.get("EDGEPACK_PLAIN_HTTP", "").split(",") if h.strip()}
    return "http" if plain_http or is_loopback(host) or host in allowed else "https"


def tls_verify() -> bool | str:
    ca = os.environ.get("EDGEPACK_REGISTRY_CA")
    if ca:
        if not Path(ca).expanduser().is_file():
            raise BadInputError(f"EDGEPACK_REGISTRY_CA={ca}: file not found", hint="point it at a PEM CA bundle")
        return str(Path(ca).expanduser())
    return True


_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="..."`` -> ("bearer", {realm, service, ...})."""
    scheme, _, rest = (header or "").strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE.findall(rest))
