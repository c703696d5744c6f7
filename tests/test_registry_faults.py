"""A real registry behind a fault-injecting proxy (tests/faultproxy.py): credentials scoped per host,
token realms, credential helpers, retries, bounded reads and deadlines, blob mounts.

Issue 11 findings 3, 4 and 13. The registry is Debian's docker-registry; the proxy, the token
service and the credential helper are the test's own small programs on 127.0.0.1 (no mocks of
the registry). No timing assertions: deadlines are only checked to END the command.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from edgepack import registry
from edgepack.errors import BadInputError
from edgepack.registry.auth import credentials_for
from edgepack.registry.http import RemoteStore

sys.path.insert(0, str(Path(__file__).parent))
from conftest import run_cli  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402
from registry_server import PASSWORD, USER, RegistryServer, auth_env, available  # noqa: E402
from test_registry_remote import bundle, keys, leftovers, reg, reg_auth, tree  # noqa: E402,F401

pytestmark = [pytest.mark.registry, pytest.mark.skipif(available() is not None, reason=available() or "")]


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch, tmp_path):
    for k in ("EDGEPACK_REGISTRY_USERNAME", "EDGEPACK_REGISTRY_PASSWORD", "EDGEPACK_REGISTRY_TOKEN", "EDGEPACK_REGISTRY_AUTH"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))


@pytest.fixture
def proxy(reg):
    with FaultProxy(reg.host) as p:
        yield p


# ------------------------------------------------------------------ credentials (finding 3)


def test_credentials_go_only_to_their_own_host(reg_auth, bundle, keys, tmp_path, monkeypatch):
    with FaultProxy(reg_auth.host) as other:  # another host:port (that happens to forward to the registry)
        monkeypatch.setenv("EDGEPACK_REGISTRY_AUTH", auth_env(reg_auth.host)["EDGEPACK_REGISTRY_AUTH"])
        with pytest.raises(BadInputError, match="401 unauthorized.*no credentials found for this host"):
            registry.push(bundle, f"{other.host}/scoped/tiny:1.2.0")
        assert other.seen and all(auth is None for _, _, auth in other.seen)  # the password never went there
    registry.push(bundle, f"{reg_auth.host}/scoped/tiny:1.2.0")
    monkeypatch.setenv("EDGEPACK_REGISTRY_USERNAME", USER)  # the old unscoped variables: refused, not sent anywhere
    monkeypatch.setenv("EDGEPACK_REGISTRY_PASSWORD", PASSWORD)
    r = run_cli("pull", f"{reg_auth.host}/scoped/tiny:1.2.0", "-o", tmp_path / "out", "--key", keys[0][1])
    assert r.returncode == 2 and "EDGEPACK_REGISTRY_AUTH" in r.stderr and PASSWORD not in r.stderr
    assert not (tmp_path / "out").exists()


def test_token_realm_gets_the_password_only_when_safe(tmp_path_factory, bundle, keys, tmp_path, monkeypatch):
    front = FaultProxy()  # the registry and its token service behind one host:port, as Harbor serves them
    with RegistryServer(tmp_path_factory.mktemp("registry-token"), auth="token", realm=f"http://{front.host}/token") as reg:
        front.upstream, front.routes = reg.host, {"/token": f"127.0.0.1:{reg.tokens.port}"}
        with front:
            monkeypatch.setenv("EDGEPACK_REGISTRY_AUTH", auth_env(reg.host, front.host)["EDGEPACK_REGISTRY_AUTH"])
            # straight to the registry: its realm is another port over plain HTTP, so nothing is sent
            with pytest.raises(BadInputError, match="not sent to the token service http://127.0.0.1"):
                registry.push(bundle, f"{reg.host}/token/tiny:1.2.0")
            # the same host:port, but plain HTTP only because the host is loopback: not asked for, not sent
            with pytest.raises(BadInputError, match="not sent to the token service"):
                registry.push(bundle, f"{front.host}/token/tiny:1.2.0")
            assert reg.tokens.authorizations == []
            registry.push(bundle, f"{front.host}/token/tiny:1.2.0", plain_http=True)
            assert reg.tokens.authorizations and all(a and a.startswith("Basic ") for a in reg.tokens.authorizations)
            scopes = [set(r.rsplit(":", 1)[1].split(",")) for r in reg.tokens.requests if r.startswith("repository:token/tiny:")]
            assert {"pull", "push"} in scopes  # the registry's scope (actions in any order), answered with a JWT
            registry.pull(f"{front.host}/token/tiny:1.2.0", tmp_path / "out", keys[0][1], plain_http=True)
            assert tree(tmp_path / "out") == tree(bundle)


def _helper(tmp_path: Path, monkeypatch, answer: dict) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "helper.log"
    script = bindir / "docker-credential-fake"
    script.write_text(f"#!/bin/sh\n[ \"$1\" = get ] || exit 3\ncat >> {log}\necho >> {log}\necho '{json.dumps(answer)}'\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_docker_credential_helpers_are_run(reg_auth, bundle, keys, tmp_path, monkeypatch):
    log = _helper(tmp_path, monkeypatch, {"ServerURL": reg_auth.host, "Username": USER, "Secret": PASSWORD})
    docker = tmp_path / "docker"
    docker.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    (docker / "config.json").write_text(json.dumps({"credHelpers": {reg_auth.host: "fake"}}))
    registry.push(bundle, f"{reg_auth.host}/helper/tiny:1.2.0")
    assert credentials_for(reg_auth.host).source.endswith(f"credHelpers[{reg_auth.host}]")
    (docker / "config.json").write_text(json.dumps({"credsStore": "fake"}))
    registry.pull(f"{reg_auth.host}/helper/tiny:1.2.0", tmp_path / "out", keys[0][1])
    assert tree(tmp_path / "out") == tree(bundle)
    assert set(log.read_text().split()) == {reg_auth.host}  # the helper was asked for this host only
    (docker / "config.json").write_text(json.dumps({"credHelpers": {reg_auth.host: "missing"}}))
    with pytest.raises(BadInputError, match="docker-credential-missing is not on PATH"):
        registry.verify(f"{reg_auth.host}/helper/tiny:1.2.0", keys[0][1])


def test_docker_io_maps_to_its_api_host_and_config_key(tmp_path, monkeypatch):
    docker = tmp_path / "docker"
    docker.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    (docker / "config.json").write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {"username": "u", "password": "p"}}}))
    s = RemoteStore("docker.io", "acme/tiny")
    assert s.base == "https://registry-1.docker.io/v2/acme/tiny" and s.name == "docker.io/acme/tiny"
    assert (s.creds.username, s.creds.source) == ("u", f"{docker / 'config.json'} auths[https://index.docker.io/v1/]")
    assert not credentials_for("ghcr.io").present


# ------------------------------------------------------------------ retries, skips, mounts (finding 13)


def test_transient_failures_are_retried_and_bounded(reg, proxy, bundle, keys, tmp_path):
    ref = f"{proxy.host}/retry/tiny:1.2.0"
    proxy.add("POST", r"/blobs/uploads/$", "500")
    proxy.add("HEAD", r"/blobs/", "429", retry_after=0)
    proxy.add("PUT", r"/manifests/1\.2\.0$", "reset")
    registry.push(bundle, ref)
    proxy.add("GET", r"/manifests/1\.2\.0$", "503")
    proxy.add("GET", r"/blobs/sha256:", "truncate")
    proxy.add("GET", r"/blobs/sha256:", "reset")
    registry.pull(ref, tmp_path / "out", keys[0][1])
    assert tree(tmp_path / "out") == tree(bundle)
    assert {a for _, _, a in proxy.fired} == {"500", "429", "reset", "503", "truncate"}
    proxy.add("GET", r"/manifests/1\.2\.0$", "500", times=100)  # a registry that keeps failing: bounded
    before = len(proxy.seen)
    r = run_cli("pull", ref, "-o", tmp_path / "again", "--key", keys[0][1])
    assert r.returncode == 1 and "answered 500" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert sum(1 for m, p, _ in proxy.seen[before:] if m == "GET" and p.endswith("/manifests/1.2.0")) == 4
    assert not (tmp_path / "again").exists() and leftovers(tmp_path) == []


def test_present_blobs_are_skipped_and_copy_mounts_within_a_registry(reg, proxy, bundle, keys):
    first = registry.push(bundle, f"{proxy.host}/mount/tiny:1.2.0")
    assert first["blobs_uploaded"] == first["blobs"]
    again = registry.push(bundle, f"{proxy.host}/mount/tiny:1.2.0")
    assert again["blobs_uploaded"] == 0  # HEAD said present: nothing sent again
    before = len(proxy.seen)
    res = registry.copy(f"{proxy.host}/mount/tiny:1.2.0", f"{proxy.host}/mirror2/tiny:1.2.0", keys[0][1])
    assert res["digest"] == first["digest"] and res["blobs_copied"] == 0 and res["blobs_mounted"] >= 7
    sent = [(m, p) for m, p, _ in proxy.seen[before:] if "/mirror2/" in p and "/blobs/uploads/" in p]
    assert sent and all(m == "POST" and "mount=sha256" in p and "from=mount/tiny" in p for m, p in sent)
    registry.verify(f"{reg.host}/mirror2/tiny:1.2.0", keys[0][1])


# ------------------------------------------------------------------ bounded reads and deadlines (finding 4)


def test_endless_or_oversized_bodies_are_cut_off(reg, proxy, bundle, keys, tmp_path):
    ref = f"{proxy.host}/endless/tiny:1.2.0"
    registry.push(bundle, ref)
    proxy.add("GET", r"/blobs/sha256:", "endless", times=100)
    r = run_cli("pull", ref, "-o", tmp_path / "out", "--key", keys[0][1], "--target", "ort", timeout=60)  # not forever
    assert r.returncode == 4 and "larger than its" in r.stderr, r.stderr
    proxy.clear()
    proxy.add("GET", r"/manifests/1\.2\.0$", "endless")
    r = run_cli("pull", ref, "-o", tmp_path / "out", "--key", keys[0][1], timeout=60)
    assert r.returncode == 4 and "4194304-byte bound" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("fault", ["trickle", "stall"])
def test_a_stalled_or_trickling_registry_hits_the_deadline(reg, proxy, bundle, keys, tmp_path, fault):
    ref = f"{proxy.host}/slow/tiny:1.2.0"
    registry.push(bundle, ref)
    proxy.add("GET", r"/blobs/sha256:" if fault == "trickle" else r"/manifests/", fault, times=100, interval=0.3)
    r = run_cli("pull", ref, "-o", tmp_path / "out", "--key", keys[0][1], "--timeout", "4",
                env={"EDGEPACK_REGISTRY_REQUEST_TIMEOUT": "1"}, timeout=120)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "no complete answer within" in r.stderr or "overall deadline" in r.stderr or "no time left" in r.stderr
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    with pytest.raises(BadInputError, match="--timeout"):
        registry.pull(ref, tmp_path / "out", keys[0][1], timeout=-1)
