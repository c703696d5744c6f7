"""Progress a person can see (issue 13 item 1): a real pseudo-terminal shows spinners and a training
bar that advances; piped output gets heartbeat lines and one line per finished stage; --quiet is
silent; a worker's log fills while the worker runs, and its reports reach the build."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from conftest import REPO, digits_arrays, run_cli, tiny_onnx, write_recipe

STUDENT = """import torch
from torch import nn


def small():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
"""

DISTILL_RECIPE = """\
name: prog
version: 0.1.0
model:
  format: onnx
  path: model.onnx
  inputs:
    - name: input
      shape: [batch, 1, 8, 8]
  outputs: [logits]
data:
  validation: {path: val.npz, labels: labels.npy}
  training: {path: train.npz}
optimize:
  - pass: distill
    student: students:small
    training: {epochs: 3, learning_rate: 0.003, batch_size: 32, seed: 0}
targets:
  - type: onnxruntime
    name: ort
benchmark: {warmup_runs: 2, warmup_seconds: 0, runs: 10, min_seconds: 0}
"""

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _distill_recipe(d: Path) -> Path:
    d.mkdir()
    tiny_onnx(d / "model.onnx")
    x, y = digits_arrays(400)
    np.savez(d / "val.npz", input=x[:64])
    np.save(d / "labels.npy", y[:64])
    np.savez(d / "train.npz", input=x, labels=y)  # 13 steps an epoch
    (d / "students.py").write_text(STUDENT)
    return write_recipe(d / "recipe.yaml", DISTILL_RECIPE)


def _run_in_pty(args: list[str], cwd: Path, env: dict, timeout: float = 600) -> tuple[int, str]:
    """Run a command with stdout/stderr on a real pseudo-terminal (120x40); everything it wrote, raw."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def test_build_on_a_terminal_shows_spinners_and_an_advancing_training_bar(tmp_path, edgepack_home):
    recipe = _distill_recipe(tmp_path / "r")
    env = {**os.environ, "TERM": "xterm-256color", "PYTHONPATH": str(REPO), "COLUMNS": "120", "LINES": "40"}
    rc, out = _run_in_pty([sys.executable, "-m", "edgepack", "build", str(recipe), "--no-publish", "-o", str(tmp_path / "out")],
                          tmp_path, env)
    assert rc == 0, out[-3000:]
    assert "\x1b[" in out  # a live display: cursor movement / colours, not plain lines
    plain = ANSI.sub("", out)
    assert re.search(r"[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] +optimize\[0\] distill", plain), plain[-3000:]  # the running stage's spinner
    epochs = {int(m) for m in re.findall(r"epochs +[━╸╺ ]*\s*(\d)/3", plain)}
    assert len(epochs) >= 2, plain[-3000:]  # the bar advanced: at least two different counts were drawn
    assert re.search(r"epochs .*\d/3 .*loss \d", plain) and "steps" in plain  # with the loss; and the steps bar
    assert re.search(r"optimize\[0\] distill +ok +\d", plain)  # then the finished line
    log = (tmp_path / ".out.logs" / "optimize[0]_distill.log").read_text()
    assert "epoch 3/3" in log and "progress: steps" in log  # the worker's own lines, as they came


def test_piped_build_prints_heartbeats_step_lines_and_the_table_on_a_gate_failure(tiny_recipe, edgepack_home):
    text = tiny_recipe.read_text().replace("  min_seconds: 0\n", "  min_seconds: 2.5\n")
    text = text.replace("gates:\n  min_cosine: 0.9\n", "gates:\n  min_cosine: 0.9\n  max_p90_ms: 0.000001\n")
    tiny_recipe.write_text(text.replace("  - type: onnxruntime\n    name: ort\n",
                                        "  - type: onnxruntime\n    name: ort-with-a-24-char-name\n"))
    res = run_cli("build", tiny_recipe, "--no-publish", cwd=tiny_recipe.parent, env={"EDGEPACK_HEARTBEAT_S": "1", "COLUMNS": "80"})
    assert res.returncode == 3, res.stderr
    out = res.stdout
    assert "\x1b[" not in out  # no terminal: plain lines only
    beats = re.findall(r"^  validate ort-with-a-24-char-name @ local +running +\d+s", out, re.M)
    assert len(beats) >= 1, out  # the 2.5 s validation is reported while it runs
    for stage in ("convert", "reference fp32", "optimize[0] quantize", "compile ort-with-a-24-char-name"):
        assert len(re.findall(rf"^  {re.escape(stage)} +(ok|cached) +\d", out, re.M)) == 1, (stage, out)
    table = out[out.index("target"):].splitlines()
    assert max(len(line) for line in table) <= 80, out
    assert re.search(r"! \d", out) and "gates-failed" in out  # the failing p90 cell is marked
    assert "gate(s) failed" in res.stderr

    quiet = run_cli("build", tiny_recipe, "--no-publish", "--quiet", cwd=tiny_recipe.parent, env={"EDGEPACK_HEARTBEAT_S": "1"})
    assert quiet.returncode == 3
    assert "running" not in quiet.stdout and not re.search(r"^  convert ", quiet.stdout, re.M)  # silent but the table
    assert "gates-failed" in quiet.stdout


def _chatty(flag: str, log_line: str) -> str:
    """Run in a worker: print through tee_stdout (as onnx2tf's output is), report, then wait for ``flag``."""
    from edgepack.progress_hooks import report
    from edgepack.worker import tee_stdout

    with tee_stdout() as out:
        print(log_line)
    for i in range(3):
        report("phase", i + 1, 3, step=f"s{i}")
    deadline = time.monotonic() + 60
    while not Path(flag).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return out.getvalue()


def test_worker_log_has_content_while_it_runs_and_reports_reach_the_build(tmp_path):
    from edgepack import progress_hooks
    from edgepack.console import Progress
    from edgepack.worker import run_isolated

    events: list[dict] = []
    progress = Progress(quiet=True)
    progress_hooks.attach(progress, events.append)
    log, flag = tmp_path / "w.log", tmp_path / "go"
    result: dict = {}

    def stage() -> None:  # as the engine runs an isolated stage: start, wait for the worker, done
        progress.start("compile x")
        result["value"] = run_isolated(_chatty, str(flag), "converter says hello", timeout=120, log_path=log, what="t")
        progress.done("compile x", "ok", 0.0)

    t = threading.Thread(target=stage)
    t.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "progress: phase 3/3" not in (log.read_text() if log.exists() else ""):
            time.sleep(0.05)
        text = log.read_text()
        assert t.is_alive() and "value" not in result  # the worker still runs ...
        assert "converter says hello" in text and "progress: phase 3/3 step=s2" in text  # ... and its log has it all
    finally:
        flag.touch()
        t.join(120)
    assert result["value"].strip() == "converter says hello"  # tee_stdout kept it for the stage as well
    updates = [e for e in events if e["event"] == "update"]
    done = [e["completed"] for e in updates]  # throttled to 10 a second: the first and the last always pass
    assert done[0] == 1 and done[-1] == 3 and done == sorted(done) and all(e["stage"] == "compile x" for e in updates)
    assert updates[-1]["fields"] == {"step": "s2"}


def test_heartbeat_names_every_running_stage_with_its_last_step(tmp_path):
    import io

    from edgepack.console import Progress
    from edgepack.progress_hooks import report

    out = io.StringIO()
    p = Progress(stream=out, heartbeat_s=0.2)
    p.start("validate a @ pi")

    def other():
        p.start("validate b @ jetson")
        report("runs", 1, 2, phase="memory")
        time.sleep(0.7)
        p.done("validate b @ jetson", "ok", 0.7)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    p.done("validate a @ pi", "failed", 0.8)
    text = out.getvalue()
    assert re.search(r"validate b @ jetson +running +\d+s  \(runs 1/2 phase=memory\)", text), text
    assert re.search(r"validate a @ pi +running", text)  # the other stage beats too, without a step
    assert re.search(r"^  validate b @ jetson +ok ", text, re.M) and re.search(r"^  validate a @ pi +failed ", text, re.M)
