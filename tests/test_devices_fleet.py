"""Fleet runs: devices in parallel, per-device deadline, failures isolated; `edgepack build` with several devices."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgepack.devices import LOCAL, load_profile, remaining_timeout
from edgepack.devices.fleet import run_fleet
from edgepack.errors import BadInputError, StageError

sys.path.insert(0, str(Path(__file__).parent))
import sshd


def _dev(name, **transport):
    return LOCAL.model_copy(update={"name": name, "transport": LOCAL.transport.model_copy(update=transport)})


def test_fleet_runs_in_parallel_and_isolates_failures():
    def work(p):
        if p.name == "broken":
            raise StageError(f"device {p.name}: the runner crashed")
        if p.name == "buggy":
            raise ValueError("oops")
        time.sleep(1.0)
        return remaining_timeout(1000, p.name)  # capped by this device's own deadline

    t0 = time.monotonic()
    out = run_fleet([_dev("a", run_timeout_s=30), _dev("b", run_timeout_s=60), _dev("broken"), _dev("buggy")], work)
    assert time.monotonic() - t0 < 1.9  # two 1 s devices at once, not one after the other
    assert list(out) == ["a", "b", "broken", "buggy"]
    assert out["a"].status == "ok" and 25 < out["a"].value <= 29.5
    assert out["b"].status == "ok" and 55 < out["b"].value <= 59.5
    assert out["broken"].status == "failed" and "runner crashed" in out["broken"].error
    assert out["buggy"].status == "failed" and "ValueError: oops" in out["buggy"].error


def test_fleet_deadline_is_reported_and_steps_after_it_refuse():
    def slow(p):
        time.sleep(1.5)
        return remaining_timeout(10, p.name)  # the deadline passed: this step must not start

    t0 = time.monotonic()
    out = run_fleet([_dev("slow")], slow, timeout_s=1.0)
    assert out["slow"].status == "failed" and "ran out before this step" in out["slow"].error
    assert time.monotonic() - t0 < 5


def test_fleet_rejects_duplicate_names():
    with pytest.raises(BadInputError, match="share a name"):
        run_fleet([_dev("x"), _dev("x")], lambda p: None)


def test_profile_key_paths_are_relative_to_the_profile(tmp_path):
    (tmp_path / "keys").mkdir()
    prof = tmp_path / "pi.yaml"
    prof.write_text(yaml.safe_dump({"name": "pi", "transport": {"type": "ssh", "host": "h", "key": "keys/id", "known_hosts": "~/kh"}}))
    p, _ = load_profile(str(prof))
    assert p.transport.key == str(tmp_path / "keys" / "id") and p.transport.known_hosts == "~/kh"
    for shipped in ("local", "raspberry-pi-5"):
        assert load_profile(shipped)[0].name == shipped


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    why = sshd.available()
    if why:
        pytest.skip(why)
    srv = sshd.SSHServer.start(tmp_path_factory.mktemp("sshd-fleet"))
    yield srv
    srv.stop()


def test_build_validates_every_target_on_every_device(server, tmp_path, cli):
    """local + ssh loopback + an unreachable device: the first two validate with gates, the third is reported."""
    sshd.tiny_onnx_model(tmp_path / "model.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "val.npz", input=rng.standard_normal((16, 64)).astype(np.float32))
    remote = tmp_path / "remote"
    remote.mkdir()
    server.profile(tmp_path / "loop.yaml", name="loopback", remote_dir=remote)
    server.profile(tmp_path / "dead.yaml", name="dead", remote_dir=remote, port=sshd.free_port())
    (tmp_path / "recipe.yaml").write_text(
        """name: tiny
version: "1"
model: {format: onnx, path: model.onnx, inputs: [{name: input, shape: [batch, 64]}]}
data: {validation: {path: val.npz}}
targets: [{type: onnxruntime, name: ort}]
devices: [local, loop.yaml, dead.yaml]
gates: {min_cosine: 0.99, max_p90_ms: 1000}
benchmark: {runs: 20, min_seconds: 0.05, warmup_runs: 2, threads: 1}
publish: {enabled: false}
""")
    out = tmp_path / "bundle"
    res = cli("build", tmp_path / "recipe.yaml", "-o", out, "--json", cwd=tmp_path)
    assert res.returncode == 5, res.stderr  # PARTIAL: a device failed, the others validated
    report = json.loads((out / "report.json").read_text())
    devs = report["targets"]["ort"]["devices"]
    for name in ("local", "loopback"):
        assert devs[name]["status"] == "ok", devs[name]
        assert devs[name]["gates"]["passed"] and devs[name]["accuracy"]["fidelity"]["cosine"] > 0.9999
        assert devs[name]["latency"]["count"] >= 20
    assert devs["loopback"]["transport"]["type"] == "ssh" and devs["loopback"]["transport"]["cleaned"] is True
    assert devs["local"]["transport"]["type"] == "local" and devs["local"]["timed"]["runs"] >= 20
    assert devs["dead"]["status"] == "failed" and "unreachable" in devs["dead"]["error"]
    assert report["targets"]["ort"]["unvalidated_devices"] == ["dead"]
    manifest = json.loads((out / "edgepack.json").read_text())
    assert manifest["targets"]["ort"]["validated_on"] == ["local", "loopback"]
    assert any("dead" in f for f in json.loads(res.stdout)["failures"])
    assert list(remote.iterdir()) == []
