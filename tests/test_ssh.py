"""SSH transport against a real OpenSSH server on 127.0.0.1 (tests/sshd.py), the runner in a separate Python.

Every test points the device's run folders at its own directory and checks that nothing is left
there afterwards, whatever went wrong.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgepack.devices import LocalTransport, load_profile, transport_for
from edgepack.devices.ssh import DeviceUnreachableError
from edgepack.errors import StageError

sys.path.insert(0, str(Path(__file__).parent))
import sshd

FAST = {"runs": 20, "min_seconds": 0.05, "warmup_runs": 2, "warmup_seconds": 0.0}


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    why = sshd.available()
    if why:
        pytest.skip(why)
    srv = sshd.SSHServer.start(tmp_path_factory.mktemp("sshd"))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    return sshd.tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture
def remote(tmp_path):
    d = tmp_path / "remote"
    d.mkdir()
    return d


def leftovers(remote: Path) -> list[str]:
    return sorted(p.name for p in remote.iterdir())


def procs_with(text: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                pids.append(int(d.name))
    return pids


def wait_for(fn, timeout=15.0, step=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = fn()
        if value:
            return value
        time.sleep(step)
    return fn()


def job_files(bundle: Path, tmp: Path, n: int = 5):
    x = np.random.default_rng(1).standard_normal((n, 64)).astype(np.float32)
    np.savez(tmp / "inputs.npz", input=x)
    contract = {"inputs": [{"source": "input", "name": "input", "dtype": "float32", "batch_axis": 0}],
                "outputs": [{"name": "logits", "index": 0, "batch_axis": 0}]}
    job = {"mode": "bench", "runtime": "onnxruntime", "protocol": dict(FAST, threads=1), "contract": contract}
    return job, {"artifact": bundle / "targets/ort/model.onnx", "inputs": tmp / "inputs.npz"}


def transport(server, tmp_path, remote, **kw):
    prof = server.profile(tmp_path / f"dev-{len(list(tmp_path.iterdir()))}.yaml", remote_dir=remote, **kw)
    return transport_for(load_profile(str(prof))[0])


def test_devices_check_over_ssh(server, tmp_path, remote, cli):
    import onnxruntime

    prof = server.profile(tmp_path / "dev.yaml", remote_dir=remote)
    res = cli("devices", "check", prof, "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["host"]["arch"] == os.uname().machine and info["host"]["python"]
    assert info["runtimes"]["onnxruntime"] == onnxruntime.__version__
    assert "onnxruntime" in info["can_run_targets"] and info["problems"] == []
    assert info["disk_free_mb"] > 0 and info["mem_free_mb"] > 0
    assert leftovers(remote) == []
    text = cli("devices", "check", prof)
    assert "can run:" in text.stdout and "onnxruntime" in text.stdout


def test_bench_over_ssh_gives_the_same_outputs_as_local(server, bundle, tmp_path, remote):
    job, files = job_files(bundle, tmp_path)
    ssh = transport(server, tmp_path, remote)
    local = LocalTransport(ssh.profile)
    r_ssh = ssh.execute(job, files, {"outputs": tmp_path / "ssh.npz"})
    r_loc = local.execute(job, files, {"outputs": tmp_path / "local.npz"})
    with np.load(tmp_path / "ssh.npz") as a, np.load(tmp_path / "local.npz") as b:
        assert a["logits"].shape == (5, 10)
        np.testing.assert_array_equal(a["logits"], b["logits"])
    same = {"latency", "samples_ms", "cold_load_ms", "first_inference_ms", "warmup", "timed", "host", "noisy", "runtime_version"}
    assert same <= set(r_ssh) and same <= set(r_loc)  # one protocol on every transport
    assert r_ssh["latency"]["count"] >= 20 and r_ssh["threads"] == 1
    assert r_ssh["transport"]["cleaned"] is True and r_ssh["transport"]["run_dir"].startswith(str(remote))
    assert leftovers(remote) == []


def test_bench_command_over_ssh(server, bundle, tmp_path, remote, cli):
    prof = server.profile(tmp_path / "dev.yaml", remote_dir=remote)
    res = cli("bench", bundle, "--device", prof, "--runs", "20", "--min-seconds", "0.05", "--json")
    assert res.returncode == 0, res.stderr
    t = json.loads(res.stdout)["devices"]["loopback"]["targets"]["ort"]
    assert t["status"] == "ok" and t["latency"]["count"] >= 20 and t["memory"]["peak_rss_mb"] > 0
    assert t["transport"]["type"] == "ssh"
    assert leftovers(remote) == []


def test_unknown_host_key_is_refused_then_accept_new_records_it(server, bundle, tmp_path, remote):
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    with pytest.raises(DeviceUnreachableError, match="unknown host key") as e:
        transport(server, tmp_path, remote, known_hosts=empty).execute({"mode": "probe"}, {}, {})
    assert "ssh-keyscan" in e.value.one_line()
    tofu = transport(server, tmp_path, remote, known_hosts=empty, accept_new_host_key=True)
    assert tofu.execute({"mode": "probe"}, {}, {})["ok"]
    assert "ssh-ed25519" in empty.read_text()  # trusted on first use, checked from then on


def test_changed_host_key_is_refused(server, tmp_path, remote):
    other = tmp_path / "known_hosts_other"
    pub = server.other_key.with_suffix(".pub").read_text().split()
    other.write_text(f"[127.0.0.1]:{server.port} {pub[0]} {pub[1]}\n")
    with pytest.raises(DeviceUnreachableError, match="host key changed"):
        transport(server, tmp_path, remote, known_hosts=other).execute({"mode": "probe"}, {}, {})


def test_refused_key(server, tmp_path, remote):
    with pytest.raises(DeviceUnreachableError, match="refused the key"):
        transport(server, tmp_path, remote, key=server.other_key).execute({"mode": "probe"}, {}, {})


def test_unreachable_host(server, tmp_path, remote):
    prof = server.profile(tmp_path / "dead.yaml", remote_dir=remote, port=sshd.free_port())
    t0 = time.monotonic()
    with pytest.raises(DeviceUnreachableError, match="unreachable"):
        transport_for(load_profile(str(prof))[0]).execute({"mode": "probe"}, {}, {})
    assert time.monotonic() - t0 < 10


def test_missing_key_file_is_bad_input(server, tmp_path, remote):
    from edgepack.errors import BadInputError

    with pytest.raises(BadInputError, match="transport.key"):
        transport(server, tmp_path, remote, key=tmp_path / "nope")


def _wrapper(tmp_path: Path, name: str, body: str) -> Path:
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(0o755)
    return p


def test_missing_runtime_and_missing_python(server, bundle, tmp_path, remote):
    import numpy

    site = tmp_path / "site"  # a device Python with numpy but no onnxruntime
    site.mkdir()
    npdir = Path(numpy.__file__).parent
    (site / "numpy").symlink_to(npdir)
    if (npdir.parent / "numpy.libs").exists():
        (site / "numpy.libs").symlink_to(npdir.parent / "numpy.libs")
    py = _wrapper(tmp_path, "py-no-ort", f'PYTHONPATH={site} exec {sys.executable} -S "$@"')
    job, files = job_files(bundle, tmp_path)
    with pytest.raises(StageError, match="runtime 'onnxruntime' is not installed on the device") as e:
        transport(server, tmp_path, remote, python=str(py)).execute(job, files, {})
    assert "pip install onnxruntime" in e.value.one_line()
    assert leftovers(remote) == []
    with pytest.raises(StageError, match="not found on the device"):
        transport(server, tmp_path, remote, python=str(tmp_path / "no-python")).execute(job, files, {})


def test_disk_full_on_the_device(server, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here to fill: {mounted.stderr.decode().strip()}")
    try:
        big = sshd.tiny_bundle(tmp_path / "big", features=512, hidden=256)  # ~0.5 MB of weights
        job, files = job_files(big, tmp_path)
        files["inputs"] = tmp_path / "in512.npz"
        np.savez(files["inputs"], input=np.zeros((1, 512), np.float32))
        with pytest.raises(StageError, match="not enough free space") as e:
            transport(server, tmp_path, small).execute(job, files, {})
        assert "remote_dir" in e.value.one_line()
        assert leftovers(small) == []
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_hung_runner_is_killed_and_cleaned(server, bundle, tmp_path, remote):
    py = _wrapper(tmp_path, "py-hang", f'case "$1" in */runner.py) exec sleep 300;; esac\nexec {sys.executable} "$@"')
    job, files = job_files(bundle, tmp_path)
    t0 = time.monotonic()
    with pytest.raises(StageError, match="did not finish within 3s"):
        transport(server, tmp_path, remote, python=str(py), step_timeout_s=3).execute(job, files, {})
    assert time.monotonic() - t0 < 30
    assert leftovers(remote) == []
    assert not procs_with(str(remote))


def _run_in_thread(fn):
    box = {}

    def target():
        try:
            box["result"] = fn()
        except Exception as e:  # noqa: BLE001 - the test inspects it
            box["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    return th, box


def _long_job(bundle, tmp_path):
    job, files = job_files(bundle, tmp_path)
    job["protocol"] = dict(job["protocol"], min_seconds=60, max_runs=10**9)
    return job, files


def test_runner_killed_mid_run(server, bundle, tmp_path, remote):
    job, files = _long_job(bundle, tmp_path)
    th, box = _run_in_thread(lambda: transport(server, tmp_path, remote).execute(job, files, {}))
    runner = wait_for(lambda: [p for p in procs_with(str(remote)) if p in procs_with("runner.py job.json")])
    assert runner, "the runner never started"
    os.kill(runner[0], signal.SIGKILL)
    th.join(timeout=30)
    assert isinstance(box.get("error"), StageError), box
    assert "killed by signal 9" in box["error"].message
    assert leftovers(remote) == []


def test_connection_dropped_mid_run(server, bundle, tmp_path, remote):
    job, files = _long_job(bundle, tmp_path)
    th, box = _run_in_thread(lambda: transport(server, tmp_path, remote).execute(job, files, {}))
    assert wait_for(lambda: [p for p in procs_with(str(remote)) if p in procs_with("runner.py job.json")])
    for pid in server.session_pids():  # the per-connection sshd: killing it drops the link
        os.kill(pid, signal.SIGKILL)
    th.join(timeout=30)
    assert isinstance(box.get("error"), StageError), box
    assert "connection dropped" in box["error"].message
    assert wait_for(lambda: leftovers(remote) == [] and not procs_with(str(remote))), leftovers(remote)


def test_agent_checks_digests_on_the_device(tmp_path):
    from edgepack.devices import agent

    data = b"model bytes"
    header = {"run_id": "t1", "base": str(tmp_path), "timeout": 5, "job": {}, "fetch": [],
              "files": [{"name": "artifact/model.onnx", "size": len(data), "key": "artifact"}]}
    stream = io.BytesIO((json.dumps(header) + "\n").encode() + data + b"0" * 64)
    out = io.BytesIO()
    agent.serve(stream, out)
    answer = json.loads(out.getvalue().decode().split(" ", 1)[1])
    assert answer["ok"] is False and answer["kind"] == "digest" and "expected 000" in answer["error"]
    assert answer["cleaned"] and not (tmp_path / "edgepack-run-t1").exists()


def test_fleet_one_device_down_others_finish(server, bundle, tmp_path, remote):
    from edgepack.bench import run_bench

    good = server.profile(tmp_path / "good.yaml", name="good", remote_dir=remote)
    dead = server.profile(tmp_path / "dead.yaml", name="dead", remote_dir=remote, port=sshd.free_port())
    rep = run_bench(str(bundle), [str(good), str(dead), "local"], overrides=FAST)
    assert rep["status"] == "partial" and rep["exit_code"] == 5
    assert rep["devices"]["good"]["targets"]["ort"]["status"] == "ok"
    assert rep["devices"]["local"]["targets"]["ort"]["status"] == "ok"
    assert rep["devices"]["dead"]["status"] == "failed" and "unreachable" in rep["devices"]["dead"]["error"]
    assert leftovers(remote) == []


def test_fleet_per_device_timeout(server, bundle, tmp_path, remote):
    from edgepack.bench import run_bench

    slow = server.profile(tmp_path / "slow.yaml", name="slow", remote_dir=remote)
    t0 = time.monotonic()
    rep = run_bench(str(bundle), [str(slow)], overrides={**FAST, "min_seconds": 60, "max_runs": 10**9}, timeout_s=3)
    assert time.monotonic() - t0 < 25
    dev = rep["devices"]["slow"]
    assert dev["status"] in ("failed", "timeout") and rep["exit_code"] != 0
    assert wait_for(lambda: leftovers(remote) == []), leftovers(remote)
