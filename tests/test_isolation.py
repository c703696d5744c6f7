"""Isolation: a converter worker that crashes, hangs or raises fails its target alone, with its log.

The end-to-end test SIGKILLs the Core ML worker of a real `edgepack build` mid-conversion and checks
that the targets before and after it land in the signed bundle and that the exit status is 5 (PARTIAL).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from edgepack.errors import StageError
from edgepack.worker import run_isolated

# ------------------------------------------------------------------ worker functions (run in the child)


def _raise():
    print("about to fail")
    raise ValueError("converter blew up")


def _segfault():
    os.kill(os.getpid(), signal.SIGSEGV)


def _hang_with_subprocess(pidfile: str):
    child = subprocess.Popen(["sleep", "300"])
    Path(pidfile).write_text(str(child.pid))
    time.sleep(300)


def _ok(x):
    return x * 2


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


# ------------------------------------------------------------------ run_isolated semantics


def test_result_exception_and_crash(tmp_path):
    assert run_isolated(_ok, 21, timeout=120) == 42
    log = tmp_path / "raise.log"
    with pytest.raises(StageError, match=r"stage x failed: ValueError: converter blew up") as e:
        run_isolated(_raise, timeout=120, log_path=log, what="stage x")
    assert str(log) in e.value.hint
    assert "about to fail" in log.read_text() and "Traceback" in log.read_text()
    with pytest.raises(StageError, match=r"stage y crashed \(killed by SIGSEGV\)") as e:
        run_isolated(_segfault, timeout=120, what="stage y")
    assert isinstance(e.value.__cause__, EOFError)  # chained, never `from None`


def test_timeout_kills_the_worker_and_its_subprocesses(tmp_path):
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    with pytest.raises(StageError, match=r"stage z timed out after 10s"):
        run_isolated(_hang_with_subprocess, str(pidfile), timeout=10, what="stage z")
    assert time.monotonic() - t0 < 40
    assert pidfile.exists(), "the worker never started its subprocess (machine too slow?)"
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(pid), "the converter's own subprocess outlived the timed-out worker"


# ------------------------------------------------------------------ a real build with one worker killed


def _workers_with_open(log: Path, parent: int) -> list[int]:
    """Children of ``parent`` that hold ``log`` open (the worker writes its output there)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            if any(os.readlink(fd) == str(log) for fd in (d / "fd").iterdir()):
                found.append(int(d.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
            continue
    return found


def test_killed_converter_worker_fails_only_its_target(digits_recipe, tmp_path, edgepack_home):
    text = digits_recipe.read_text()
    start, end = text.index("optimize:"), text.index("devices:")
    digits_recipe.write_text(text[:start] + """targets:
  - type: onnxruntime
    name: ort
    input: fp32
  - type: coreml
    name: coreml
  - type: tensorrt
    name: trt
    precision: fp16

""" + text[end:])
    out = tmp_path / "out"
    log = tmp_path / ".out.logs" / "compile_coreml.log"
    env = dict(os.environ, PYTHONPATH=str(REPO), EDGEPACK_HOME=str(edgepack_home))
    proc = subprocess.Popen([sys.executable, "-m", "edgepack.cli", "build", str(digits_recipe), "-o", str(out), "--no-publish"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    try:
        deadline = time.monotonic() + 300
        while killed is None and proc.poll() is None and time.monotonic() < deadline:
            pids = _workers_with_open(log, proc.pid) if log.exists() else []
            if pids:
                os.kill(pids[0], signal.SIGKILL)  # the Core ML worker, mid-conversion
                killed = pids[0]
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert killed is not None, f"never saw the Core ML worker: {stderr[-2000:]}"
    assert proc.returncode == 5, stderr[-3000:]
    assert "compile coreml: stage compile coreml crashed (killed by SIGKILL)" in stderr
    report = json.loads((out / "report.json").read_text())
    t = report["targets"]
    assert t["ort"]["status"] == "ok" and t["trt"]["status"] == "ok"
    assert t["coreml"]["status"] == "failed" and "killed by SIGKILL" in t["coreml"]["error"]
    assert (out / t["coreml"]["log"]).resolve() == log.resolve() and "log_tail" in t["coreml"]  # bundle-relative
    assert t["ort"]["devices"]["local"]["status"] == "ok"
    manifest = json.loads((out / "edgepack.json").read_text())
    assert set(manifest["targets"]) == {"ort", "trt"}
    assert (out / "targets" / "ort" / "model.onnx").is_file()
    assert (out / "targets" / "trt" / "tensorrt" / "build_spec.json").is_file()
    assert not (out / "targets" / "coreml").exists()


# ------------------------------------------------------------------ workers die with their build


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return out


def _wait_gone(pids, seconds=20.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not all(_gone(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if not _gone(p)]


def test_worker_and_its_subprocesses_die_with_a_killed_build(tmp_path):
    """kill -9 of the process that called run_isolated: the worker (parent-death signal) and the
    converter subprocess it started (its process group, killed by the worker's guard) go too."""
    pidfile = tmp_path / "pid"
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from test_isolation import _hang_with_subprocess; "
              "from edgepack.worker import run_isolated; run_isolated(_hang_with_subprocess, sys.argv[2], timeout=600)")
    build = subprocess.Popen([sys.executable, "-c", script, str(Path(__file__).parent), str(pidfile)],
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        deadline = time.monotonic() + 120
        while not pidfile.exists() and time.monotonic() < deadline and build.poll() is None:
            time.sleep(0.1)
        assert pidfile.exists(), "the worker never started its subprocess"
        time.sleep(0.2)  # the pid is written right after Popen returns
        workers = _children(build.pid)
        converter = int(pidfile.read_text())
        assert workers and not _gone(converter)
        os.kill(build.pid, signal.SIGKILL)
        build.wait()
        assert _wait_gone([*workers, converter]) == [], "a worker or its subprocess outlived the killed build"
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()


def test_convert_worker_dies_with_a_killed_build(digits_recipe, tmp_path, edgepack_home):
    """A real build whose PyTorch convert worker is held at its start (fail point worker.start=stop):
    kill -9 of the build, and the worker is gone (before, it ran on, orphaned)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), EDGEPACK_HOME=str(edgepack_home), EDGEPACK_FAILPOINTS="worker.start=stop")
    proc = subprocess.Popen([sys.executable, "-m", "edgepack.cli", "build", str(digits_recipe), "-o", str(tmp_path / "out"),
                             "--no-publish"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        worker, deadline = None, time.monotonic() + 300
        while worker is None and proc.poll() is None and time.monotonic() < deadline:
            stopped = [p for p in _children(proc.pid) if Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"]
            worker = stopped[0] if stopped else None
            time.sleep(0.05)
        assert worker is not None, f"never saw the convert worker: {proc.poll()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _wait_gone([worker]) == [], "the convert worker outlived the killed build"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
