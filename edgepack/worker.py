"""Run a function in a separate (spawned) process with a timeout and its own log.

Backends that can crash the interpreter or hold gigabytes (TensorFlow, onnx2tf, coremltools,
OpenVINO, TensorRT, torch training) run here, so a crash or hang fails that stage alone.

A worker dies with its build: it asks the kernel for SIGKILL when the build dies
(``prctl(PR_SET_PDEATHSIG)``, Linux), and runs in its own process group with a forked guard that
SIGKILLs the group once the worker is gone, so a converter's own subprocesses go too (the guard
blocks on a pipe only the worker holds; nothing polls).
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import os
import re
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from . import failpoints, progress_hooks
from .errors import EdgepackError, StageError

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent (the build) dies, on Linux; no-op elsewhere."""
    import ctypes
    import signal

    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(ctypes.c_int(1), ctypes.c_ulong(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the build died before prctl took effect
        os._exit(1)


def _start_group_guard(conn) -> None:
    """Fork a guard that SIGKILLs this worker's process group once the worker exits or dies."""
    r, w = os.pipe()  # the worker keeps ``w`` (close-on-exec, so its subprocesses do not)
    if os.fork() != 0:
        os.close(r)
        return
    try:  # the guard: wait for EOF (every holder of ``w``, i.e. the worker, is gone), then kill the group
        os.close(w)
        conn.close()  # the result pipe must close when the worker dies, not when the guard does
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # nor may the guard hold the build's stdout/stderr open
            os.dup2(null, fd)
        while os.read(r, 1):
            pass
        os.killpg(0, 9)
    finally:
        os._exit(0)


def _redirect(log_path) -> None:
    """stdout/stderr (fds 1 and 2, so a backend's C code too) appended to the stage log."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)


OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # no worker ever downloads a model (edgepack/ingest/hf.py)


def _child(conn, fn, args, kwargs, log_path, sys_path, parent_pid=None):
    os.environ.update(OFFLINE_ENV)
    os.setpgrp()  # its own process group: a timeout kills the converter's own subprocesses too
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    _start_group_guard(conn)
    failpoints.hit("worker.start")
    if log_path:
        _redirect(log_path)
    for p in reversed(sys_path):
        if p not in sys.path:
            sys.path.insert(0, p)
    _report_to_parent(conn)
    try:
        result = fn(*args, **kwargs)
        _send(conn, ("ok", result))
    except EdgepackError as e:
        traceback.print_exc()
        _send(conn, ("edgepack", e))
    except BaseException as e:  # noqa: BLE001 - report anything to the parent
        traceback.print_exc()
        _send(conn, ("error", f"{e.__class__.__name__}: {e}"))
    finally:
        progress_hooks.set_sink(None)
        conn.close()


_send_lock = threading.Lock()
LOG_EVERY_S = 1.0  # a progress line in the worker's log at most once a second per task (and the last one)


def _send(conn, message) -> None:
    with _send_lock:  # progress may come from the stage's own threads
        conn.send(message)


def _report_to_parent(conn) -> None:
    """progress_hooks.report() inside the worker: up the result pipe to the build (which shows it) and,
    as it happens, a line into the worker's log."""
    logged: dict[str, float] = {}

    def sink(event: dict) -> None:
        _send(conn, ("progress", event))
        now, task = time.monotonic(), event.get("task", "")
        final = event.get("total") is not None and (event.get("completed") or 0) >= event["total"]
        if final or now - logged.get(task, -LOG_EVERY_S) >= LOG_EVERY_S:
            logged[task] = now
            print(f"progress: {progress_hooks.format_update(event)}", flush=True)

    sink.edgepack_worker = True  # type: ignore[attr-defined]  # a build display in this process must not replace it
    progress_hooks.set_sink(sink)


class Tee(io.TextIOBase):
    """A stdout that keeps what is written (``getvalue``) and passes it on at once (to the stage log),
    ANSI colours stripped; ``on_line`` sees each complete line (e.g. to report a converter's phase)."""

    def __init__(self, out, on_line: Callable[[str], None] | None = None):
        self.out, self.on_line, self.buf, self.pending = out, on_line, io.StringIO(), ""

    def write(self, text: str) -> int:
        clean = ANSI.sub("", text)
        self.buf.write(clean)
        try:
            self.out.write(clean)
            self.out.flush()
        except (OSError, ValueError):
            pass
        if self.on_line is not None:
            self.pending += clean
            *lines, self.pending = self.pending.split("\n")
            for line in lines:
                self.on_line(line)
        return len(text)

    def getvalue(self) -> str:
        return self.buf.getvalue()


@contextlib.contextmanager
def tee_stdout(on_line: Callable[[str], None] | None = None):
    """``with tee_stdout() as out:`` a library's prints land in the stage log as they come, and in ``out``."""
    tee = Tee(sys.stdout, on_line)
    with contextlib.redirect_stdout(tee):
        yield tee


def log_tail(log_path: Path | None, lines: int = 15) -> str:
    if not log_path or not Path(log_path).exists():
        return ""
    return "\n".join(Path(log_path).read_text(errors="replace").splitlines()[-lines:])


def run_isolated(
    fn: Callable, *args: Any, timeout: float | None = None, log_path: Path | None = None, what: str = "worker",
    python: str | None = None, **kwargs: Any
) -> Any:
    """Call ``fn(*args, **kwargs)`` in a spawned process; return its result or raise StageError.

    ``python``: another interpreter to run it in (a toolchain environment, edgepack/toolchains): started as
    ``python -I`` with only this edgepack package on its path; arguments and result are pickled over a pipe."""
    if python is not None and os.path.abspath(python) != os.path.abspath(sys.executable):  # a venv python links to its base: not the same
        proc, parent = _start_foreign(python, fn, args, kwargs, log_path)
    else:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(child, fn, args, kwargs, str(log_path) if log_path else None, list(sys.path), os.getpid()))
        proc.start()
        child.close()
    try:
        try:
            status, payload = _result(parent, timeout, what, log_path)
        except EOFError as e:
            proc.join(timeout=10)  # a worker that closed the pipe but does not exit is killed below, not waited for
            raise StageError(
                f"{what} crashed ({_exit_reason(proc.exitcode)})", hint=f"log: {log_path}" if log_path else None
            ) from e
    except BaseException:
        _kill(proc)  # timeout, crash or Ctrl-C (the worker's group does not get the terminal's SIGINT)
        raise
    finally:
        parent.close()
    proc.join(timeout=10)  # the result is in: a worker stuck in interpreter shutdown is not waited for
    if proc.is_alive():
        _kill(proc)
    if status == "ok":
        return payload
    if status == "edgepack":
        raise payload
    raise StageError(f"{what} failed: {payload}", hint=f"log: {log_path}" if log_path else None)


_FOREIGN_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); from edgepack.worker import _foreign_main; "
                 "_foreign_main(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))")


class _Foreign:
    """A worker in another interpreter, with the part of multiprocessing.Process's interface used here."""

    def __init__(self, popen):
        self.popen = popen
        self.pid = popen.pid

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        self.popen.kill()

    def join(self, timeout: float | None = None) -> None:
        import subprocess

        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()


def _start_foreign(python: str, fn, args, kwargs, log_path):
    import subprocess
    from multiprocessing.connection import Connection

    from .toolchains.env import edgepack_path

    job_r, job_w = os.pipe()
    res_r, res_w = os.pipe()
    try:
        popen = subprocess.Popen([python, "-I", "-c", _FOREIGN_BOOT, edgepack_path(), str(job_r), str(res_w),
                                  str(log_path or ""), str(os.getpid())], pass_fds=(job_r, res_w), stdin=subprocess.DEVNULL)
    except BaseException:
        for fd in (job_r, job_w, res_r, res_w):
            os.close(fd)
        raise
    os.close(job_r)
    os.close(res_w)
    job = Connection(job_w, readable=False)
    try:
        job.send((fn, args, kwargs))
    except (BrokenPipeError, ConnectionResetError):
        pass  # it died before reading: the result pipe's EOF reports it
    finally:
        job.close()
    return _Foreign(popen), Connection(res_r, writable=False)


def _foreign_main(job_fd: int, result_fd: int, log_path: str, parent_pid: int) -> None:
    """The worker side in a toolchain interpreter: read the job, then run it as a spawned worker would."""
    from multiprocessing.connection import Connection

    os.environ.update(OFFLINE_ENV)  # before the job (and whatever it imports) is unpickled
    if log_path:
        _redirect(log_path)
    conn = Connection(result_fd, readable=False)
    try:
        with Connection(job_fd, writable=False) as job:
            fn, args, kwargs = job.recv()
    except BaseException as e:  # noqa: BLE001 - e.g. a module this environment cannot import
        traceback.print_exc()
        conn.send(("error", f"cannot load the job in {sys.executable}: {e.__class__.__name__}: {e}"))
        conn.close()
        return
    _child(conn, fn, args, kwargs, None, [], parent_pid)


def _result(parent, timeout: float | None, what: str, log_path) -> tuple[str, Any]:
    """The worker's result; its progress reports on the way are reported again here (the thread that
    started the stage, so they name it)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        if not parent.poll(left):
            raise StageError(f"{what} timed out after {timeout:.0f}s", hint=f"log: {log_path}" if log_path else None)
        kind, payload = parent.recv()
        if kind != "progress":
            return kind, payload
        event = payload
        progress_hooks.report(event.pop("task", ""), event.pop("completed", None), event.pop("total", None),
                              event.pop("unit", ""), **(event.pop("fields", None) or {}))


def _kill(proc) -> None:
    """SIGKILL the worker and its process group (subprocesses a converter started), then reap it."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.is_alive():
        proc.kill()
    proc.join()


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code is None:
        return "closed its result pipe and did not exit"
    return f"exit code {code}"
