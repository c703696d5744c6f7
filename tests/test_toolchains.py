"""Toolchains (issue 14 item 1), the fast part: the static table and its locks, the worker in another interpreter,
pre-flight naming the install command, `edgepack toolchains ls`. The managed environment itself (a real venv built
from the tflite lock, a TFLite compile through it) is tests/test_toolchain_env.py."""

from __future__ import annotations

import functools
import json
import platform
import sys
import tomllib

import pytest
from conftest import REPO, TINY_RECIPE, run_cli

from edgepack import toolchains
from edgepack.errors import BadInputError, StageError
from edgepack.toolchains.env import _candidates, _version_of
from edgepack.worker import run_isolated


def _other_python() -> str | None:
    """An interpreter of another minor version than the running one (pyenv or python3.X on PATH)."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}."
    for exe in _candidates():
        v = _version_of(exe)
        if v and v.startswith("3.") and not v.startswith(here) and int(v.split(".")[1]) >= 11:
            return exe
    return None


OTHER = _other_python()
needs_other = pytest.mark.skipif(OTHER is None, reason="no second Python 3.11+ interpreter on this machine")


def test_every_toolchain_has_a_lock_that_parses():
    for name in toolchains.TOOLCHAINS:
        lock = toolchains.read_lock(name)
        assert lock.python and lock.requires, name
        assert len(lock.digest) == 12
        for req in lock.requires:  # every exact direct pin is also a resolved line of the lock
            n, sep, v = req.partition("==")
            if sep:
                assert lock.pins.get(toolchains.canonical(n)) == v, (name, req)


def test_extras_pin_what_the_locks_pin():
    """pyproject's toolchain extras (the single-environment install) ask for the locks' exact versions."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    checked = 0
    for name, tc in toolchains.TOOLCHAINS.items():
        lock = toolchains.read_lock(name)
        direct = {toolchains.canonical(r.partition("==")[0]): r.partition("==")[2] for r in lock.requires if "==" in r}
        for req in extras.get(tc.extra or "", []):
            n, sep, v = req.partition("==")
            if sep and toolchains.canonical(n) in direct:
                assert direct[toolchains.canonical(n)] == v, (name, req)
                checked += 1
    assert checked >= 6


def test_unknown_toolchain_is_bad_input():
    with pytest.raises(BadInputError, match="not known") as e:
        toolchains.get("tflit")
    assert "did you mean 'tflite'" in e.value.one_line()
    res = run_cli("toolchains", "install", "tflit")
    assert res.returncode == 2 and "did you mean 'tflite'" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@needs_other
def test_worker_runs_in_another_interpreter_with_only_edgepack_on_its_path():
    assert run_isolated(platform.python_version, python=OTHER) == _version_of(OTHER)
    path = run_isolated(functools.partial(eval, "__import__('sys').path"), python=OTHER)
    here = {p for p in sys.path if "site-packages" in p}
    assert not here & set(path), path  # never the running environment's site-packages
    assert path[0].endswith(tuple("0123456789abcdef")) and "/.src/" in path[0]
    assert run_isolated(functools.partial(eval, "__import__('edgepack').__file__"), python=OTHER).startswith(path[0])


@needs_other
def test_errors_and_crashes_in_another_interpreter(tmp_path):
    log = tmp_path / "w.log"
    with pytest.raises(BadInputError, match="from the other side"):  # an EdgepackError crosses back as itself
        run_isolated(functools.partial(exec, "from edgepack.errors import BadInputError\nraise BadInputError('from the other side')"),
                     python=OTHER, log_path=log)
    with pytest.raises(StageError, match=r"crashed \(exit code 3\)"):
        run_isolated(functools.partial(eval, "__import__('os')._exit(3)"), python=OTHER, what="w", log_path=log)
    with pytest.raises(StageError, match="timed out"):
        run_isolated(functools.partial(eval, "__import__('time').sleep(60)"), python=OTHER, timeout=2, what="w", log_path=log)


def test_running_environment_is_used_when_it_satisfies_the_lock(monkeypatch, tmp_path):
    name = next((n for n in toolchains.TOOLCHAINS if toolchains.unsatisfied(n) is None), None)
    if name is None:
        pytest.skip("no toolchain lock is satisfied by this environment")
    env = toolchains.resolve(name)
    assert env.where == "running" and env.python is None
    monkeypatch.setenv("EDGEPACK_TOOLCHAINS", "managed")  # forced managed, nothing installed there
    monkeypatch.setenv("EDGEPACK_TOOLCHAINS_DIR", str(tmp_path / "none"))
    with pytest.raises(toolchains.ToolchainMissingError) as e:
        toolchains.resolve(name)
    assert f"edgepack toolchains install {name}" in e.value.one_line()


def test_preflight_names_the_install_command(tiny_recipe, tmp_path):
    tiny_recipe.write_text(TINY_RECIPE.replace("gates:\n", "  - type: tflite\n    name: tfl\ngates:\n"))
    res = run_cli("build", tiny_recipe, "--no-publish", "-o", tiny_recipe.parent / "out", cwd=tiny_recipe.parent,
                  env={"EDGEPACK_TOOLCHAINS": "managed", "EDGEPACK_TOOLCHAINS_DIR": str(tmp_path / "none")})
    assert res.returncode == 2, res.stderr
    assert "targets[1]" in res.stderr and "tflite toolchain" in res.stderr and "edgepack toolchains install tflite" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "convert" not in res.stdout


def test_ls_lists_every_toolchain(tmp_path):
    res = run_cli("toolchains", "ls", "--json", env={"EDGEPACK_TOOLCHAINS": "managed", "EDGEPACK_TOOLCHAINS_DIR": str(tmp_path / "none")})
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert {r["toolchain"] for r in rows} == set(toolchains.TOOLCHAINS)
    assert all(r["install"] == f"edgepack toolchains install {r['toolchain']}" for r in rows if r["environment"] is None)


def test_source_link_is_made_safely_by_concurrent_nodes(monkeypatch, tmp_path):
    """On a new checkout the first compile nodes of a --jobs build make the toolchains' source link at once (the
    final fresh-clone CI caught two threads sharing one temp name: FileExistsError failed a compile)."""
    import threading
    from pathlib import Path

    from edgepack.toolchains.env import edgepack_path

    for round_ in range(5):
        monkeypatch.setenv("EDGEPACK_TOOLCHAINS_DIR", str(tmp_path / f"tc{round_}"))
        start, got, errors = threading.Barrier(8), [], []

        def make():
            start.wait()
            try:
                got.append(edgepack_path())
            except Exception as e:  # noqa: BLE001 - the assertion below names it
                errors.append(e)

        threads = [threading.Thread(target=make) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert len(set(got)) == 1 and (Path(got[0]) / "edgepack" / "toolchains").is_dir()
