"""SSH transport: the system OpenSSH client, key authentication, host key checking on by default.

One ``ssh`` connection per job. Its stdin carries the agent (agent.py, standard library only), the
runner and the job's files, each followed by its sha256 which the agent checks on the device. The
agent runs the runner in a per-run folder, answers on stdout and removes the folder in every case;
if the connection drops, it sees EOF on stdin, kills the runner and cleans up. After a failure the
client also tries one short ``rm -rf`` of the run folder over a fresh connection.

ssh options used (see docs/benchmark-protocol.md): ``-T -o BatchMode=yes`` (never prompt),
``-o StrictHostKeyChecking=yes`` (``accept-new`` only when the profile says
``accept_new_host_key: true``), ``-o UserKnownHostsFile=<known_hosts>``, ``-o ConnectTimeout``,
``-o ServerAliveInterval=5 -o ServerAliveCountMax=3`` (a silent peer counts as a dropped link),
``-i <key> -o IdentitiesOnly=yes``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import threading
import time
import uuid
from pathlib import Path

from ..artifact import iter_files
from ..errors import BadInputError, StageError
from . import RUNNER_FILES, Transport, remaining_timeout

AGENT = Path(__file__).with_name("agent.py")
MAGIC = b"EDGEPACK-AGENT-1 "
CHUNK = 1 << 20
BOOTSTRAP = (
    "import sys;i=sys.stdin.buffer;n=int(i.readline());g={'__name__':'edgepack_agent'};"
    "exec(compile(i.read(n),'edgepack_agent.py','exec'),g);g['main']()"
)

# ssh's stderr -> (what happened, what to do). First match wins.
_SSH_ERRORS = [
    (r"REMOTE HOST IDENTIFICATION HAS CHANGED", "the host key changed since it was recorded",
     "if the device was reinstalled, remove its old line from known_hosts (ssh-keygen -R HOST); otherwise do not connect"),
    (r"Host key verification failed|No \S+ host key is known|host key for .* is unknown", "unknown host key",
     "add the device's key to the profile's known_hosts (ssh-keyscan -p PORT HOST >> FILE, after checking its fingerprint) "
     "or set transport.accept_new_host_key: true"),
    (r"Permission denied \(|Too many authentication failures", "the device refused the key",
     "check transport.user and transport.key, and that the public key is in the device's authorized_keys"),
    (r"Load key .*: (invalid format|bad permissions|error in libcrypto)", "the private key cannot be used",
     "check transport.key (an unencrypted OpenSSH private key readable only by you)"),
    (r"Could not resolve hostname|Name or service not known|Temporary failure in name resolution", "unreachable: unknown host name",
     "check transport.host"),
    (r"Connection refused|No route to host|Network is unreachable|connect to host .* (timed out|Operation timed out)|"
     r"Connection timed out during banner exchange", "unreachable",
     "check that the device is on, reachable, and runs sshd on transport.port"),
    (r"Connection closed|Connection reset|Broken pipe|closed by remote host|Timeout, server .* not responding|"
     r"client_loop: send disconnect", "the connection dropped during the run", "check the device and its network, then rerun"),
]


class DeviceUnreachableError(StageError):
    """The device could not be reached or refused us (host, key, host key): no job on it can run."""


def classify_ssh_error(stderr: str) -> tuple[str, str | None]:
    for pattern, what, hint in _SSH_ERRORS:
        if re.search(pattern, stderr):
            return what, hint
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip() and not ln.startswith("Warning: Permanently added")]
    return (f"ssh failed: {lines[-1].strip()}" if lines else "ssh failed without a message"), None


def describe_runner_error(error: str) -> tuple[str, str | None]:
    """The runner's own error (it reached the device and ran) with a hint for the usual causes."""
    m = re.search(r"No module named '([\w.]+)'", error or "")
    if m:
        module = m.group(1).split(".")[0]
        return (f"the runtime '{module}' is not installed on the device ({error})",
                f"pip install {module} in the device's Python, or drop it from the profile's runtimes")
    return error or "the runner failed without a message", None


class SSHTransport(Transport):
    def __init__(self, profile):
        super().__init__(profile)
        t = profile.transport
        if not t.host:
            raise BadInputError(f"device {profile.name}: transport.host is required for an ssh transport",
                                hint="set transport.host (and usually user and key) in the device profile")
        for field in ("key", "known_hosts"):
            value = getattr(t, field)
            if value and not Path(os.path.expanduser(value)).is_file():
                raise BadInputError(f"device {profile.name}: transport.{field} {value} does not exist",
                                    hint=f"fix transport.{field} in the device profile")
        self.target = f"{t.user}@{t.host}" if t.user else t.host
        self.where = f"device {profile.name} ({self.target}:{t.port})"

    # ------------------------------------------------------------ ssh command line

    def ssh_argv(self, remote_command: str) -> list[str]:
        t = self.profile.transport
        argv = ["ssh", "-T", "-p", str(t.port), "-o", "BatchMode=yes", "-o", "PasswordAuthentication=no",
                "-o", "KbdInteractiveAuthentication=no",
                "-o", f"StrictHostKeyChecking={'accept-new' if t.accept_new_host_key else 'yes'}",
                "-o", f"ConnectTimeout={max(1, int(round(t.connect_timeout_s)))}",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR"]
        if t.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={os.path.expanduser(t.known_hosts)}"]
        if t.key:
            argv += ["-i", os.path.expanduser(t.key), "-o", "IdentitiesOnly=yes"]
        return argv + [self.target, remote_command]

    def _python(self) -> str:
        return self.profile.python or "python3"

    # ------------------------------------------------------------ one job

    def _plan_files(self, files: dict[str, Path]) -> list[dict]:
        out: list[dict] = [{"name": p.name, "path": p} for p in RUNNER_FILES]
        for key, path in files.items():
            path = Path(path)
            if path.is_dir():
                for rel in iter_files(path):
                    out.append({"name": f"{key}/{path.name}/{rel.as_posix()}", "path": path / rel, "key": key,
                                "root": f"{key}/{path.name}"})
            elif path.is_file():
                out.append({"name": f"{key}/{path.name}", "path": path, "key": key})
            else:
                raise BadInputError(f"{key} file {path} does not exist", where=self.where)
        for f in out:
            f["size"] = f["path"].stat().st_size
        return out

    def _send(self, proc, header: dict, plan: list[dict], errors: list):
        try:
            agent = AGENT.read_bytes()
            proc.stdin.write(f"{len(agent)}\n".encode() + agent)
            proc.stdin.write((json.dumps(header) + "\n").encode())
            for f in plan:
                h = hashlib.sha256()
                with open(f["path"], "rb") as src:
                    for block in iter(lambda: src.read(CHUNK), b""):
                        h.update(block)
                        proc.stdin.write(block)
                proc.stdin.write(h.hexdigest().encode())
            proc.stdin.flush()
        except (OSError, ValueError) as e:  # the far end went away: the reader reports it
            errors.append(e)

    def execute(self, job, files, fetch, timeout=None):
        timeout = remaining_timeout(timeout or self.profile.transport.step_timeout_s, self.where)
        plan = self._plan_files(files)
        run_id = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
        header = {
            "run_id": run_id, "base": self.profile.transport.remote_dir, "timeout": timeout, "job": job,
            "fetch": list(fetch), "python": self._python(),
            "files": [{k: f[k] for k in ("name", "size", "key", "root") if k in f} for f in plan],
        }
        upload = sum(f["size"] for f in plan)
        # the link gets connect time plus 1 s per MB of upload on top of the runner's own limit
        client_timeout = timeout + self.profile.transport.connect_timeout_s + 10 + upload / 1e6
        argv = self.ssh_argv(f"{shlex.quote(self._python())} -u -c {shlex.quote(BOOTSTRAP)}")
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as e:
            raise StageError(f"cannot start ssh: {e}", hint="install the OpenSSH client", where=self.where) from e
        timed_out = threading.Event()

        def on_timeout():
            timed_out.set()
            proc.kill()

        timer = threading.Timer(client_timeout, on_timeout)
        timer.daemon = True
        timer.start()
        stderr_chunks: list[bytes] = []
        err_reader = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True)
        err_reader.start()
        send_errors: list = []
        sender = threading.Thread(target=self._send, args=(proc, header, plan, send_errors), daemon=True)
        sender.start()
        answer, noise, blobs = None, [], {}
        try:
            for line in iter(proc.stdout.readline, b""):
                if line.startswith(MAGIC):
                    answer = json.loads(line[len(MAGIC):])
                    for f in answer.get("files", []):
                        blobs[f["key"]] = proc.stdout.read(f["size"])
                        if len(blobs[f["key"]]) != f["size"]:
                            answer = {"ok": False, "cleaned": True, "error": f"the connection dropped while {f['key']} "
                                      f"was coming back ({len(blobs[f['key']])} of {f['size']} bytes)"}
                            break
                    break
                noise.append(line)
        finally:
            sender.join(timeout=5)
            try:
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            timer.cancel()
            err_reader.join(timeout=5)
        stderr = b"".join(c for c in stderr_chunks if c).decode("utf-8", "replace")
        wall = time.perf_counter() - t0
        if answer is None:
            self._cleanup(run_id)
            if timed_out.is_set():
                raise StageError(f"no answer within {client_timeout:.0f}s (runner hung or link stalled); "
                                 f"run folder edgepack-run-{run_id} removal attempted",
                                 hint="raise transport.step_timeout_s if the model is slow, or check the device", where=self.where)
            if proc.returncode == 127:
                raise StageError(f"Python '{self._python()}' not found on the device",
                                 hint="set 'python' in the device profile to the interpreter that has numpy and the runtime", where=self.where)
            what, hint = classify_ssh_error(stderr)
            cls = StageError if what.startswith(("the connection dropped", "ssh failed")) else DeviceUnreachableError
            raise cls(f"{self.where}: {what} (ssh exit {proc.returncode})", hint=hint)
        if not answer.get("ok"):
            if not answer.get("cleaned", True):
                self._cleanup(run_id)
            what = answer.get("error") or "unknown error"
            hint = {"disk_full": "free space on the device or set transport.remote_dir to a larger disk",
                    "hang": "raise transport.step_timeout_s if the model is slow"}.get(answer.get("kind"))
            raise StageError(f"{what}", hint=hint, where=self.where)
        result = answer["result"]
        if not result.get("ok"):
            what, hint = describe_runner_error(result.get("error"))
            raise StageError(f"{what}", hint=hint, where=self.where)
        for key, dest in fetch.items():
            if key in blobs:
                dest = Path(dest)
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(dest.name + ".part")
                tmp.write_bytes(blobs[key])
                os.replace(tmp, dest)
        result["transport"] = {"type": "ssh", "target": f"{self.target}:{self.profile.transport.port}",
                               "run_dir": answer.get("run_dir"), "cleaned": answer.get("cleaned"),
                               "upload_bytes": upload, "wall_s": round(wall, 3)}
        return result

    def _cleanup(self, run_id: str) -> bool:
        """Best effort: remove the run folder over a fresh connection (the agent normally did)."""
        code = ("import os,shutil,tempfile,sys;b=sys.argv[1] or tempfile.gettempdir();"
                "shutil.rmtree(os.path.join(os.path.expanduser(b),'edgepack-run-'+sys.argv[2]),True)")
        cmd = " ".join(shlex.quote(x) for x in (self._python(), "-c", code, self.profile.transport.remote_dir or "", run_id))
        try:
            return subprocess.run(self.ssh_argv(cmd), capture_output=True, stdin=subprocess.DEVNULL,
                                  timeout=self.profile.transport.connect_timeout_s + 10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False
