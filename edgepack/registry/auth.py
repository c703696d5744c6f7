"""Registry credentials and transport security.

Credentials are scoped to ONE registry host (``host[:port]`` as written in the reference); a
host never receives another host's credentials. First match wins (never written to manifests,
reports or logs; error messages name only the host and where the credentials came from):

1. ``EDGEPACK_REGISTRY_AUTH``: JSON ``{"HOST[:PORT]": {"username": U, "password": P}}``, or
   ``{"token": T}`` (an identity / refresh token for the token service), or ``{"auth": base64}``.
2. The Docker config (``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``), as the
   docker CLI reads it: ``credHelpers[HOST]``, else ``credsStore`` (both run
   ``docker-credential-NAME get`` with the server on stdin), else ``auths[HOST]`` (``auth``,
   ``username``/``password`` or ``identitytoken``).

``docker.io`` (and ``index.docker.io``) is Docker Hub: API host ``registry-1.docker.io``,
config key ``https://index.docker.io/v1/``. The unscoped ``EDGEPACK_REGISTRY_USERNAME`` /
``PASSWORD`` / ``TOKEN`` of earlier versions went to every host; they are refused with a pointer
to ``EDGEPACK_REGISTRY_AUTH``.

A Bearer challenge names a token service (``realm``): it gets the credentials only over HTTPS,
or over plain HTTP when it is the registry's own host:port and ``--plain-http`` was asked
(``realm_allowed``); otherwise nothing is sent and the 401 says why.

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
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from edgepack.errors import BadInputError

DOCKER_HUB = {"docker.io", "index.docker.io", "registry-1.docker.io"}
DOCKER_HUB_API = "registry-1.docker.io"
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_UNSCOPED = ("EDGEPACK_REGISTRY_USERNAME", "EDGEPACK_REGISTRY_PASSWORD", "EDGEPACK_REGISTRY_TOKEN")
_HELPER_TIMEOUT = 30


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    source: str = "none"  # where they came from, for messages (never the secret itself)

    @property
    def present(self) -> bool:
        return bool(self.token or (self.username and self.password is not None))


def api_host(host: str) -> str:
    """The host to talk to: Docker Hub's references say docker.io, its API is registry-1.docker.io."""
    return DOCKER_HUB_API if host.lower() in DOCKER_HUB else host


def config_keys(host: str) -> list[str]:
    """Keys a Docker config may file this host's credentials under."""
    if host.lower() in DOCKER_HUB:
        return [DOCKER_HUB_KEY, "index.docker.io", "docker.io", "https://index.docker.io/v1", DOCKER_HUB_API]
    return [host, f"https://{host}", f"http://{host}", f"https://{host}/v2/", f"http://{host}/v2/"]


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return (Path(base).expanduser() if base else Path.home() / ".docker") / "config.json"


def credentials_for(host: str) -> Credentials:
    """This host's credentials (see the module doc), or empty Credentials."""
    unscoped = [k for k in _UNSCOPED if os.environ.get(k)]
    if unscoped:
        raise BadInputError(f"{'/'.join(unscoped)} is set: such credentials would go to every registry host, so edgepack no longer reads them",
                            hint=f"set EDGEPACK_REGISTRY_AUTH='{{\"{host}\": {{\"username\": ..., \"password\": ...}}}}' instead, and unset them")
    found = _from_env_json(host)
    if found is not None:
        return found
    path = docker_config_path()
    if not path.is_file():
        return Credentials()
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BadInputError(f"Docker config {path} is unreadable or not JSON", hint="fix or remove the file") from e
    if not isinstance(cfg, dict):
        return Credentials()
    raw = cfg.get("credHelpers")
    helpers: dict = raw if isinstance(raw, dict) else {}
    for key in config_keys(host):
        if isinstance(helpers.get(key), str):
            return _from_helper(helpers[key], key, f"{path} credHelpers[{key}]", required=True)
    if isinstance(cfg.get("credsStore"), str) and cfg["credsStore"]:
        for key in config_keys(host)[:1]:
            found = _from_helper(cfg["credsStore"], key, f"{path} credsStore", required=False)
            if found.present:
                return found
    raw = cfg.get("auths")
    auths: dict = raw if isinstance(raw, dict) else {}
    for key in config_keys(host):
        if isinstance(auths.get(key), dict):
            return _from_entry(auths[key], f"{path} auths[{key}]")
    return Credentials()


def _from_env_json(host: str) -> Credentials | None:
    raw = os.environ.get("EDGEPACK_REGISTRY_AUTH")
    if not raw:
        return None
    try:
        table = json.loads(raw)
    except ValueError as e:
        raise BadInputError("EDGEPACK_REGISTRY_AUTH is not JSON", hint='write {"HOST[:PORT]": {"username": ..., "password": ...}}') from e
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise BadInputError("EDGEPACK_REGISTRY_AUTH must map each HOST[:PORT] to an object",
                            hint='write {"HOST[:PORT]": {"username": ..., "password": ...}} or {"HOST": {"token": ...}}')
    for key in [host] + config_keys(host):
        if key in table:
            return _from_entry(table[key], f"EDGEPACK_REGISTRY_AUTH[{key}]")
    return None


def _from_entry(entry: dict, src: str) -> Credentials:
    token = entry.get("identitytoken") or entry.get("token")
    if token:
        return Credentials(entry.get("username"), None, token=str(token), source=src)
    if entry.get("auth"):
        try:
            user, _, pw = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError) as e:
            raise BadInputError(f"{src}.auth is not base64 'user:password'", hint="run `docker login` again") from e
        return Credentials(user, pw, source=src)
    if entry.get("username") and entry.get("password") is not None:
        return Credentials(str(entry["username"]), str(entry["password"]), source=src)
    return Credentials()


def _from_helper(name: str, server: str, src: str, required: bool) -> Credentials:
    """Run ``docker-credential-NAME get`` (the Docker credential-helper protocol)."""
    exe = shutil.which(f"docker-credential-{name}")
    if exe is None:
        if not required:
            return Credentials()
        raise BadInputError(f"credential helper docker-credential-{name} is not on PATH",
                            hint="install the helper, or remove the entry from the Docker config", where=src)
    try:
        p = subprocess.run([exe, "get"], input=server, capture_output=True, text=True, timeout=_HELPER_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BadInputError(f"docker-credential-{name} get failed ({type(e).__name__})", where=src) from e
    if p.returncode != 0:
        if "not found" in (p.stdout + p.stderr).lower():
            return Credentials()
        raise BadInputError(f"docker-credential-{name} get exited {p.returncode}",
                            hint="run `docker login` again or check the helper", where=src)  # its output may hold secrets: not shown
    try:
        out = json.loads(p.stdout)
        user, secret = out.get("Username") or "", out["Secret"]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BadInputError(f"docker-credential-{name} did not answer with Username/Secret JSON", where=src) from e
    if user == "<token>":
        return Credentials(None, None, token=str(secret), source=src)
    return Credentials(str(user), str(secret), source=src)


def realm_allowed(realm: str, registry_host: str, plain_http: bool) -> bool:
    """May the token service at ``realm`` receive credentials? HTTPS: yes. Plain HTTP: only the
    registry's own host:port, and only with ``--plain-http`` (a loopback registry alone is not enough)."""
    u = urlsplit(realm)
    if u.scheme == "https":
        return True
    return u.scheme == "http" and plain_http and u.netloc.lower() == registry_host.lower()


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
