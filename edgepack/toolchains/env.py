"""Managed toolchain environments: create one from its lock (``edgepack toolchains install``), list them
(``edgepack toolchains ls``), and the source shim that lets a foreign interpreter import this edgepack.

An environment is ``$EDGEPACK_HOME/toolchains/NAME-<lock digest>/``: a venv made with the lock's Python (the running
interpreter when it matches, else pyenv's or ``pythonX.Y`` on PATH), the lock's ``requires:`` installed with the lock
as constraints (``uv pip`` when uv is on PATH and the machine's pip index settings translate to it, pip otherwise),
checked from inside (the env satisfies its own lock and imports edgepack), and ``toolchain.json`` written last:
an environment without it is incomplete and is rebuilt. Installs of one environment take turns (flock).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import BadInputError, StageError
from . import canonical, env_dir, get, home, installed_record, python_ok, read_lock, unsatisfied

VERSION_PROBE = "import json, platform, importlib.metadata as m; print(json.dumps([platform.python_version(), " \
                "{d.metadata['Name']: d.version for d in m.distributions()}]))"


def edgepack_path() -> str:
    """A folder holding only a link named ``edgepack`` to this edgepack package: the one entry a toolchain
    interpreter gets on ``sys.path`` (never the core environment's site-packages)."""
    pkg = Path(__file__).resolve().parent.parent
    shim = home() / ".src" / hashlib.sha256(str(pkg).encode()).hexdigest()[:16]
    link = shim / "edgepack"
    if not (link.is_symlink() and Path(os.readlink(link)) == pkg):
        shim.mkdir(parents=True, exist_ok=True)
        # one temp name per thread: the compile nodes of a --jobs build reach here at once on a new checkout
        tmp = shim / f".edgepack.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(pkg, target_is_directory=True)
        os.replace(tmp, link)
    return str(shim)


def _version_of(python: str) -> str | None:
    try:
        out = subprocess.run([python, "-I", "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _candidates() -> list[str]:
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    found = sorted((str(p) for p in (root / "versions").glob("*/bin/python3")), reverse=True)
    for minor in range(14, 10, -1):
        exe = shutil.which(f"python3.{minor}")
        if exe:
            found.append(exe)
    return found


def find_python(name: str) -> tuple[str, str]:
    """(interpreter, version) for the lock of ``name``: the running one if it matches, else the newest match."""
    spec = read_lock(name).python
    if python_ok(spec):
        return sys.executable, platform.python_version()
    matches = [(v, exe) for exe in _candidates() if (v := _version_of(exe)) and python_ok(spec, v)]
    if not matches:
        raise BadInputError(f"toolchain {name}: needs Python {spec}, and none was found (running {platform.python_version()}, "
                            "pyenv versions, python3.X on PATH)", hint=f"install one (e.g. pyenv install {spec.strip('>=<~ ').split(',')[0]})")
    from packaging.version import Version

    v, exe = max(matches, key=lambda m: Version(m[0]))
    return exe, v


# pip settings uv understands, as uv pip flags; any other index setting means uv is not used
_UV_FLAGS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
             "constraint": "--constraint"}
_IGNORED = {"default-timeout", "timeout", "disable-pip-version-check", "no-cache-dir", "root-user-action",
            "progress-bar", "no-input", "quiet", "verbose"}


def uv_flags() -> tuple[list[str], dict[str, str]] | None:
    """(``uv`` + ``uv pip install`` flags carrying this machine's pip index configuration, extra environment), or
    None when uv should not be used (not on PATH, EDGEPACK_INSTALLER=pip, or a pip setting it would not honour).
    pip looks at every index for the best version; uv's default takes the first index that has the package, so
    ``--index-strategy unsafe-best-match`` keeps pip's answer (uv otherwise fails where pip resolves)."""
    uv = shutil.which("uv")
    if not uv or os.environ.get("EDGEPACK_INSTALLER", "") == "pip":
        return None
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    flags, env = [uv, "--index-strategy", "unsafe-best-match"], {}
    for line in out.stdout.splitlines():
        key, _, value = line.partition("=")
        key = key.rpartition(".")[2]
        value = value.strip().strip("'\"")
        if key == "cert":
            env["SSL_CERT_FILE"] = value
        elif key in _IGNORED:
            continue
        elif key not in _UV_FLAGS:
            return None
        else:
            for v in value.split():
                flags += [_UV_FLAGS[key], v]
    return flags, env


def _run(cmd: list[str], log, what: str, env: dict | None = None) -> None:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}  # the new env's own
    res = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**clean, **(env or {})})
    if res.returncode != 0:
        raise StageError(f"{what} failed (exit {res.returncode})", hint=f"log: {log.name}")


def _create(name: str, d: Path, python: str, log) -> str:
    """Make the venv and install the lock; returns the installer used."""
    lock = read_lock(name)
    (d / "requirements.txt").write_text("\n".join(lock.requires) + "\n")
    (d / "lock.txt").write_text(lock.text)
    py = str(d / "bin" / "python")
    args = ["-r", str(d / "requirements.txt"), "-c", str(d / "lock.txt")]
    uv = uv_flags()
    if uv:
        (exe, *flags), env = uv
        try:
            _run([exe, "venv", "-q", "--allow-existing", "--python", python, str(d)], log, f"uv venv for {name}", env)
            _run([exe, "pip", "install", "--python", py, *flags, *args], log, f"uv pip install for {name}", env)
            return "uv"
        except StageError as e:
            log.write(f"uv did not work here ({e.one_line()}); using pip\n")
            for p in list(d.iterdir()):
                if p.name not in ("requirements.txt", "lock.txt", "install.log"):
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    _run([python, "-m", "venv", str(d)], log, f"creating the {name} venv")
    _run([py, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off", *args], log, f"pip install for {name}")
    return "pip"


def _probe(name: str, py: str, log) -> tuple[str, dict[str, str]]:
    """Check from inside the new env that it satisfies its own lock and imports edgepack; (python, versions)."""
    check = (f"import sys; sys.path.insert(0, {edgepack_path()!r}); import edgepack.engine, edgepack.worker; "
             f"from edgepack.toolchains import unsatisfied; why = unsatisfied({name!r}); print(why or ''); sys.exit(1 if why else 0)")
    env = {**os.environ, "EDGEPACK_TOOLCHAINS": "auto"}
    res = subprocess.run([py, "-I", "-c", check], capture_output=True, text=True, env=env)
    log.write(res.stdout + res.stderr)
    if res.returncode != 0:
        lines = (res.stdout.strip() or res.stderr.strip() or "no output").splitlines()
        raise StageError(f"toolchain {name}: the new environment does not satisfy its lock: {lines[-1]}", hint=f"log: {log.name}")
    out = subprocess.run([py, "-I", "-c", VERSION_PROBE], capture_output=True, text=True, check=True)
    version, dists = json.loads(out.stdout)
    return version, dict(sorted(dists.items(), key=lambda kv: canonical(kv[0])))


def install(name: str, force: bool = False, echo=print) -> dict:
    """Create (or reuse) the managed environment of ``name``; returns its toolchain.json record."""
    from ..locks import flocked

    get(name)
    d = env_dir(name)
    with flocked(home() / f".{d.name}.lock"):
        rec = installed_record(name)
        if rec is not None and not force:
            echo(f"{name}: already installed ({d.name}, Python {rec['python']})")
            return rec
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        python, version = find_python(name)
        echo(f"{name}: creating {d} (Python {version})")
        t0 = time.perf_counter()
        with open(d / "install.log", "w") as log:
            try:
                installer = _create(name, d, python, log)
                version, dists = _probe(name, str(d / "bin" / "python"), log)
            except BaseException:
                log.close()
                if not os.environ.get("EDGEPACK_KEEP_FAILED_TOOLCHAIN"):  # kept for debugging when set
                    shutil.rmtree(d, ignore_errors=True)
                raise
        lock = read_lock(name)
        rec = {"name": name, "lock": lock.digest, "python": version, "installer": installer,
               "seconds": round(time.perf_counter() - t0, 1), "requires": list(lock.requires), "versions": dists}
        from ..paths import write_json_atomic

        write_json_atomic(d / "toolchain.json", rec)
        echo(f"{name}: installed with {installer} in {rec['seconds']:.0f}s")
        return rec


def listing() -> list[dict]:
    """One row per known toolchain and environment: the running one when it satisfies the lock, managed ones."""
    from . import MODE_ENV, TOOLCHAINS, mode, versions

    rows = []
    for name, tc in TOOLCHAINS.items():
        lock = read_lock(name)
        why = unsatisfied(name) if mode() == "auto" else f"{MODE_ENV}=managed"
        if why is None:
            rows.append({"toolchain": name, "environment": "running", "lock": lock.digest, "python": platform.python_version(),
                         "versions": {k: v for k, v in versions(name).items() if k != "python"}, "current": True})
        for rec_path in sorted(home().glob(f"{name}-*/toolchain.json")):
            try:
                rec = json.loads(rec_path.read_text())
            except (OSError, ValueError):
                continue
            have = {canonical(k): v for k, v in rec.get("versions", {}).items()}
            rows.append({"toolchain": name, "environment": str(rec_path.parent), "lock": rec.get("lock"), "python": rec.get("python"),
                         "versions": {p: have.get(canonical(p), "not-installed") for p in tc.packages},
                         "current": rec.get("lock") == lock.digest})
        if not any(r["toolchain"] == name and r["current"] for r in rows):
            rows.append({"toolchain": name, "environment": None, "lock": lock.digest, "python": None, "versions": {},
                         "current": True, "missing": why, "install": f"edgepack toolchains install {name}"})
    return rows


def format_listing(rows: list[dict]) -> str:
    lines = [f"{'toolchain':<11}{'environment':<34}{'python':<9}versions"]
    for r in rows:
        if r["environment"] is None:
            lines.append(f"{r['toolchain']:<11}{'not installed':<34}{'':<9}{r['install']}  ({r['missing']})")
            continue
        where = "running (satisfies the lock)" if r["environment"] == "running" else Path(r["environment"]).name
        if not r["current"]:
            where += " (old lock)"
        vers = ", ".join(f"{k} {v}" for k, v in r["versions"].items() if v != "not-installed")
        lines.append(f"{r['toolchain']:<11}{where:<34}{r['python'] or '':<9}{vers}")
    return "\n".join(lines)
