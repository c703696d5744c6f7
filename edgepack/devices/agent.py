"""edgepack device agent: the remote half of the SSH transport (standard library only).

Sent over the SSH channel's stdin together with the runner and the job's files, so nothing has to be
installed on the device beyond Python, numpy and the runtime. Started as::

    python3 -u -c "<bootstrap>"      # reads one line (agent size), then the agent source, then runs main()

Wire format (stdin): one JSON header line, then for each header file its bytes followed by the
64-hex sha256 of those bytes. The agent:

1. creates ``<base>/edgepack-run-<id>`` (mode 700), writes each file and checks its digest;
2. rewrites the job's file keys to paths in that folder and runs the runner in a child process,
   killing it after ``timeout`` seconds (a hung runner) or as soon as stdin reaches EOF (the
   connection dropped or the client gave up);
3. answers on stdout: a line ``EDGEPACK-AGENT-1 {json}`` then the bytes of each fetched file;
4. removes the run folder in every case (``finally``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

MAGIC = "EDGEPACK-AGENT-1"
CHUNK = 1 << 20


class AgentError(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def _read_exact(stream, n):
    parts = []
    while n > 0:
        block = stream.read(min(n, CHUNK))
        if not block:
            raise AgentError("connection", "the connection closed while files were being sent")
        parts.append(block)
        n -= len(block)
    return b"".join(parts)


def _receive(stream, header, run_dir):
    """Write every sent file below run_dir, checking its sha256; return {key: path on the device}."""
    need = sum(int(f["size"]) for f in header["files"])
    free = shutil.disk_usage(run_dir).free
    if need + (1 << 20) > free:
        raise AgentError("disk_full", "not enough free space in %s: the run needs %.1f MB, %.1f MB free"
                         % (os.path.dirname(run_dir), need / 1e6, free / 1e6))
    paths = {}
    for f in header["files"]:
        rel = f["name"]
        if rel.startswith("/") or ".." in rel.split("/"):
            raise AgentError("protocol", "unsafe file name %r" % rel)
        dest = os.path.join(run_dir, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        h = hashlib.sha256()
        left = int(f["size"])
        try:
            with open(dest, "wb") as out:
                while left > 0:
                    block = stream.read(min(left, CHUNK))
                    if not block:
                        raise AgentError("connection", "the connection closed while %s was being sent" % rel)
                    h.update(block)
                    out.write(block)
                    left -= len(block)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise AgentError("disk_full", "the device's disk is full (writing %s)" % rel) from e
            raise
        sent = _read_exact(stream, 64).decode("ascii", "replace")
        if h.hexdigest() != sent:
            raise AgentError("digest", "%s arrived with sha256 %s, expected %s" % (rel, h.hexdigest(), sent))
        if f.get("key"):
            root = f.get("root") or rel
            paths[f["key"]] = os.path.join(run_dir, root)
    return paths


def _watch_stdin(stream, lost):
    try:
        while stream.read(CHUNK):
            pass
    except (OSError, ValueError):
        pass
    lost.set()


def _run_runner(header, run_dir, lost):
    python = header.get("python") or sys.executable
    log_path = os.path.join(run_dir, "runner.log")
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen([python, os.path.join(run_dir, "runner.py"), "job.json", "result.json"],
                                    cwd=run_dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as e:
            raise AgentError("python", "cannot start the runner with %s: %s" % (python, e)) from e
        header["_pid"] = proc.pid
        deadline = time.monotonic() + float(header.get("timeout") or 600)
        while proc.poll() is None:
            if lost.is_set():
                proc.kill()
                proc.wait()
                raise AgentError("connection", "the connection dropped while the runner was running")
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise AgentError("hang", "the runner did not finish within %.0fs and was killed" % float(header.get("timeout")))
            time.sleep(0.05)
    return proc.returncode, log_path


def _tail(path, n=5):
    try:
        with open(path, "rb") as f:
            lines = f.read()[-4000:].decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def serve(stdin, stdout):
    header = json.loads(stdin.readline().decode("utf-8"))
    base = header.get("base") or tempfile.gettempdir()
    run_dir = os.path.join(os.path.expanduser(base), "edgepack-run-" + header["run_id"])
    lost = threading.Event()
    for name in ("SIGHUP", "SIGTERM"):  # a hang-up ends the run the same way as a dropped stdin
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), lambda *_: lost.set())
    answer = {"ok": False, "run_dir": run_dir}
    payload = []
    try:
        try:
            os.makedirs(run_dir, mode=0o700)
        except OSError as e:
            kind = "disk_full" if e.errno == errno.ENOSPC else "workdir"
            raise AgentError(kind, "cannot create %s: %s" % (run_dir, e)) from e
        paths = _receive(stdin, header, run_dir)
        threading.Thread(target=_watch_stdin, args=(stdin, lost), daemon=True).start()
        job = dict(header["job"])
        job.update(paths)
        for key in header.get("fetch", []):
            job[key] = os.path.join(run_dir, key + ".npz")
        job["workdir"] = run_dir
        with open(os.path.join(run_dir, "job.json"), "w") as f:
            json.dump(job, f)
        code, log_path = _run_runner(header, run_dir, lost)
        result_path = os.path.join(run_dir, "result.json")
        if not os.path.exists(result_path):
            how = ("killed by signal %d" % -code) if code < 0 else ("exit %d" % code)
            raise AgentError("crash", "the runner crashed (%s): %s" % (how, _tail(log_path) or "no output"))
        with open(result_path) as f:
            answer["result"] = json.load(f)
        answer["ok"] = True
        files = []
        for key in header.get("fetch", []):
            p = job[key]
            if os.path.exists(p):
                with open(p, "rb") as f:
                    data = f.read()
                files.append({"key": key, "size": len(data)})
                payload.append(data)
        answer["files"] = files
    except AgentError as e:
        answer.update(error=str(e), kind=e.kind)
    except OSError as e:
        kind = "disk_full" if e.errno == errno.ENOSPC else "os"
        answer.update(error="%s: %s" % (e.__class__.__name__, e), kind=kind)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        answer["cleaned"] = not os.path.exists(run_dir)
    if lost.is_set() and answer.get("kind") == "connection":
        return 1
    try:
        stdout.write((MAGIC + " " + json.dumps(answer) + "\n").encode("utf-8"))
        for data in payload:
            stdout.write(data)
        stdout.flush()
    except OSError:
        return 1
    return 0


def main():
    sys.exit(serve(sys.stdin.buffer, sys.stdout.buffer))


if __name__ == "__main__":
    main()
