"""The process entry (`edgepack`, `python -m edgepack`) leaves without the interpreter's teardown, and
still keeps what a normal exit guarantees: exit handlers run, piped output is complete, the exit status
is the command's, and a non-daemon thread that still runs is waited for."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = r"""
import atexit, sys, threading, time
from edgepack.cli import run
atexit.register(lambda: print("exit handler ran", flush=True))
if "--thread" in sys.argv:
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished", flush=True))).start()
class Teardown:
    def __del__(self):
        print("interpreter teardown", flush=True)
keep = Teardown()  # a module global: finalized only by the teardown
if "--big" in sys.argv:
    sys.stdout.write("x" * 2_000_000 + "\n")  # buffered, not yet flushed when run() ends
if "--c-stdio" in sys.argv:
    import ctypes
    ctypes.CDLL(None).printf(b"from C stdio\n")  # buffered by the C library (stdout is a pipe)
run([a for a in sys.argv[1:] if a not in ("--thread", "--big", "--c-stdio")])
"""


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered, as a user's shell has it
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, timeout=120, env=env)


def test_success_runs_exit_handlers_and_flushes_output():
    r = _run("--big", "--c-stdio", "--version")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "x" * 2_000_000
    rest = [line for line in lines[1:] if line != "from C stdio"]  # C and Python buffers interleave as they flush
    assert "version" in rest[0] and rest[1:] == ["exit handler ran"]
    assert "from C stdio" in lines
    assert "interpreter teardown" not in r.stdout  # skipped: that is the point


def test_python_dev_mode_keeps_the_full_teardown():
    r = subprocess.run([sys.executable, "-X", "dev", "-c", SCRIPT, "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("interpreter teardown")


def test_error_keeps_its_exit_status_and_one_line(tmp_path):
    r = _run("build", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "missing.yaml" in r.stderr
    assert r.stdout.strip() == "exit handler ran"


def test_a_running_thread_is_waited_for():
    r = _run("--thread", "--version")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out.index("thread finished") < out.index("exit handler ran")  # joined first, as a normal exit does


def test_python_m_edgepack_uses_the_same_entry():
    r = subprocess.run([sys.executable, "-m", "edgepack", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "version" in r.stdout


GC_PROBE = r"""
import atexit, gc, sys
from edgepack.cli import run
atexit.register(lambda: print("gc", gc.isenabled(), gc.get_freeze_count() > 0, flush=True))
run(sys.argv[1:])
"""


def test_build_start_up_pauses_the_collector_and_always_resumes_it(tmp_path):
    """The build command's start-up runs with the collector off (cli._startup_over); once the recipes are
    loaded, or fail to load, the start-up objects are frozen and collection is back on for the build."""
    from pathlib import Path

    digits = Path(__file__).resolve().parents[1] / "recipes" / "digits" / "recipe.yaml"
    bad = tmp_path / "recipe.yaml"
    bad.write_text("name: x\nversion: 1\nmodel: {format: onnx}\nnot_a_field: 1\n")
    for args, status in ((["build", str(digits), "--plan"], 0), (["build", str(bad)], 2)):
        r = subprocess.run([sys.executable, "-c", GC_PROBE, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert r.returncode == status, r.stderr
        assert r.stdout.splitlines()[-1] == "gc True True", (args, r.stdout[-500:])
