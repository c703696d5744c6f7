"""The browser device: onnxruntime-web in a real headless Chromium on this host.

``find_chromium()`` locates the binary (the Debian ``chromium`` package, or $EDGEPACK_CHROMIUM);
``ort_web_dir()`` the onnxruntime-web files (npm package ORT_WEB_VERSION, never downloaded here).
``BrowserTransport.execute`` runs a runner job (edgepack/devices/runner.py's modes) in the page: a static
server on 127.0.0.1 (stdlib http.server in a thread) serves the target folder (index.html + runner.js,
the same page the bundle ships), the ort-web files under /ort/, the job and its input tensors; headless
Chromium loads it, the page POSTs its result and outputs back; Chromium is killed afterwards. The result
has the runner's bench/memory/probe structure, so validation reads it like any device's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..errors import BadInputError, StageError
from . import Transport, remaining_timeout

ORT_WEB_VERSION = "1.23.0"  # the onnxruntime-web npm package the runner page is tested with
ORT_WEB_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
GET_ORT = (f"npm pack onnxruntime-web@{ORT_WEB_VERSION} && mkdir -p ~/.edgepack/ort-web && "
           f"tar xzf onnxruntime-web-{ORT_WEB_VERSION}.tgz -C ~/.edgepack/ort-web "
           f"(or set EDGEPACK_ORT_WEB to an onnxruntime-web package folder)")
TYPES = {".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
         ".json": "application/json"}


def find_chromium(binary: str | None = None) -> str | None:
    """The Chromium binary: ``binary`` (a profile's transport.browser), $EDGEPACK_CHROMIUM, then PATH."""
    for cand in (binary, os.environ.get("EDGEPACK_CHROMIUM")):
        if cand:
            return shutil.which(os.path.expanduser(cand))
    return next((p for p in map(shutil.which, NAMES) if p), None)


def chromium_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return next((ln.strip() for ln in out.splitlines() if "chrom" in ln.lower()), out.strip() or "unknown")


def ort_web_dir() -> Path | None:
    """The onnxruntime-web ``dist`` folder: $EDGEPACK_ORT_WEB (the npm package folder or its dist/), else
    $EDGEPACK_HOME/ort-web/package; None when its files are not there."""
    from ..cache import edgepack_home

    env = os.environ.get("EDGEPACK_ORT_WEB")
    roots = [Path(env).expanduser()] if env else [edgepack_home() / "ort-web" / "package"]
    for root in roots:
        for d in (root / "dist", root):
            if all((d / f).is_file() for f in ORT_WEB_FILES):
                return d
    return None


def ort_web_version(dist: Path) -> str:
    try:
        return json.loads((dist.parent / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return "unknown"


def check_ready(profile) -> None:
    """Pre-flight: Chromium and the ort-web files are here (BadInputError, one line, otherwise)."""
    if find_chromium(profile.transport.browser) is None:
        given = profile.transport.browser or os.environ.get("EDGEPACK_CHROMIUM")
        looked = (f"transport.browser {given}" if profile.transport.browser else f"EDGEPACK_CHROMIUM={given}") if given else ", ".join(NAMES) + " on PATH"
        raise BadInputError(f"device {profile.name}: no Chromium binary found ({looked})",
                            hint="apt-get install chromium, or set transport.browser / EDGEPACK_CHROMIUM to its path")
    if ort_web_dir() is None:
        where = os.environ.get("EDGEPACK_ORT_WEB") or "$EDGEPACK_HOME/ort-web/package"
        raise BadInputError(f"device {profile.name}: the onnxruntime-web files ({', '.join(ORT_WEB_FILES)}) are not in {where}",
                            hint=GET_ORT)


class _Server:
    """127.0.0.1 static server: url path -> local file; POST /r/NAME stores the body."""

    def __init__(self, routes: dict[str, Path], ort_dir: Path, on_post):
        self.routes, self.ort_dir = routes, ort_dir
        self.posted: dict[str, bytes] = {}
        self.done = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code, body=b"", ctype="text/plain"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cross-Origin-Opener-Policy", "same-origin")  # crossOriginIsolated: wasm threads
                self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                local = server.routes.get(path)
                if local is None and path.startswith("/ort/") and "/" not in path[5:]:
                    local = server.ort_dir / path[5:]
                if local is None or not local.is_file():
                    return self._send(404, b"not found")
                self._send(200, local.read_bytes(), TYPES.get(local.suffix, "application/octet-stream"))

            def do_POST(self):  # noqa: N802
                name = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.posted[name] = body
                on_post(name)
                self._send(200, b"ok")
                if name == "result":
                    server.done.set()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="edgepack-browser-server", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def headless_args(profile_dir: str) -> list[str]:
    """Flags of every headless Chromium edgepack (and its tests) start: a private profile, no first-run or
    background traffic, the page's console on stderr; --no-sandbox only as root (Chromium refuses otherwise)."""
    return ["--headless=new", *(["--no-sandbox"] if os.geteuid() == 0 else []), f"--user-data-dir={profile_dir}",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--enable-logging=stderr", "--v=0"]


def launch(binary: str, url: str, profile_dir: str, flags: tuple[str, ...] = ()) -> subprocess.Popen:
    """Headless Chromium on ``url`` in its own process group (``stop`` kills the whole group); its log
    (console lines included) goes to PROFILE_DIR.log."""
    cmd = [binary, *headless_args(profile_dir), *flags, url]
    os.makedirs(profile_dir, exist_ok=True)
    with open(profile_dir + ".log", "w") as log:  # a file, not a pipe: a chatty Chromium never blocks on it
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
                                env={**os.environ, "HOME": profile_dir})


def stop(proc: subprocess.Popen) -> None:
    """Kill Chromium's whole process group (renderers, GPU and zygote processes too)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _log(profile_dir: str) -> str:
    try:
        return Path(profile_dir + ".log").read_text(errors="replace")
    except OSError:
        return ""


def _console(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    return (lines[-1] if lines else (stderr.strip().splitlines() or ["no output"])[-1])[:300]


def _renderers(root: int) -> list[int]:
    """Pids of Chromium's renderer processes below ``root``."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if b"--type=renderer" in cmd and _in_group(d.name, root):
                pids.append(int(d.name))
    return pids


def _in_group(pid: str, root: int) -> bool:
    try:
        return os.getpgid(int(pid)) == root
    except OSError:
        return False


def _status_mb(pid: int, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class BrowserTransport(Transport):
    """Runs runner jobs in headless Chromium with onnxruntime-web (see the module docstring)."""

    def execute(self, job, files, fetch, timeout=None):
        from . import web_job

        check_ready(self.profile)
        binary = find_chromium(self.profile.transport.browser)
        dist = ort_web_dir()
        assert binary is not None and dist is not None
        if job.get("mode") == "probe":
            from .runner import host_info

            return {"ok": True, "host": host_info(), "numpy": _numpy_version(), "browser": chromium_version(binary),
                    "runtimes": {"onnxruntime-web": ort_web_version(dist)}}
        if job.get("runtime") != "onnxruntime-web":
            raise StageError(f"device {self.profile.name}: the browser runs onnxruntime-web artifacts, not '{job.get('runtime')}'")
        timeout = remaining_timeout(timeout or self.profile.transport.step_timeout_s, f"device {self.profile.name}")
        with tempfile.TemporaryDirectory(prefix="edgepack-browser-") as tmp:
            page_job, routes = web_job.prepare(job, files, Path(tmp))
            routes["/job.json"] = Path(tmp) / "job.json"
            routes["/job.json"].write_text(json.dumps(page_job))
            raw, memory = self._run_page(binary, dist, routes, tmp, job.get("mode") == "memory", timeout)
        if not raw.get("ok"):
            raise StageError(f"device {self.profile.name}: the page failed: {raw.get('error')}")
        if job.get("mode") == "memory":
            return web_job.memory_result(raw, memory, ort_web_version(dist), chromium_version(binary))
        return web_job.bench_result(job, page_job, raw, fetch, ort_web_version(dist), chromium_version(binary))

    def _run_page(self, binary, dist, routes, tmp, memory_mode, timeout):
        marks: dict[int, float] = {}
        state = {"proc": None}

        def on_post(name):
            if name == "mark" and state["proc"] is not None:  # baseline: renderer RSS, peak reset (Linux)
                for pid in _renderers(state["proc"].pid):
                    marks[pid] = _status_mb(pid, "VmRSS") or 0.0
                    try:
                        Path(f"/proc/{pid}/clear_refs").write_text("5")
                    except OSError:
                        pass

        with _Server(routes, dist, on_post) as server:
            profile_dir = os.path.join(tmp, "profile")
            flags = ("--enable-unsafe-webgpu",) if json.loads(routes["/job.json"].read_text()).get("execution_provider") == "webgpu" else ()
            url = f"{server.url}/index.html?job=/job.json&ort=/ort/&result={server.url}/r"
            proc = launch(binary, url, profile_dir, flags)
            state["proc"] = proc
            deadline = time.monotonic() + timeout
            try:
                while not server.done.wait(0.2):
                    if proc.poll() is not None:
                        raise StageError(f"device {self.profile.name}: Chromium exited (code {proc.returncode}) before the page "
                                         f"posted its result: {_console(_log(profile_dir))}")
                    if time.monotonic() > deadline:
                        raise StageError(f"device {self.profile.name}: the page posted no result within {timeout:.0f}s: "
                                         f"{_console(_log(profile_dir))}")
                peaks = {pid: _status_mb(pid, "VmHWM") for pid in marks} if memory_mode else {}
            finally:
                if proc.poll() is None:
                    stop(proc)
            raw = json.loads(server.posted["result"])
            if "result" not in server.posted:
                raise StageError(f"device {self.profile.name}: the page posted no result")
            if "outputs" in server.posted:
                raw["_outputs_blob"] = server.posted["outputs"]
        return raw, {"baseline": marks, "peaks": peaks}


def _numpy_version():
    import numpy

    return numpy.__version__
