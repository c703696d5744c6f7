"""Engine and cache contracts: keys, atomic entries, and stages that must not touch their inputs."""

from pathlib import Path

import pytest

from edgepack.artifact import Artifact
from edgepack.cache import StageCache
from edgepack.engine import Engine, Stage, StageResult
from edgepack.errors import StageError


class Copy(Stage):
    kind = "test.copy"

    def __init__(self, scribble=False, tag="a"):
        self.scribble = scribble
        self.tag = tag

    def config(self):
        return {"tag": self.tag}

    def run(self, inputs, workdir):
        src = inputs["x"].path
        if self.scribble:  # what onnx2tf does to the ONNX file it is given
            src.write_bytes(src.read_bytes() + b"!")
        out = workdir / "out.bin"
        out.write_bytes(src.read_bytes())
        return StageResult({"y": Artifact(out, "bin")}, {"bytes": out.stat().st_size})


def _input(tmp_path: Path, data=b"hello", meta=None) -> Artifact:
    p = tmp_path / "in.bin"
    p.write_bytes(data)
    return Artifact(p, "bin", meta=meta or {})


def test_hit_after_miss_and_config_changes_key(tmp_path):
    eng = Engine(StageCache(tmp_path / "cache"))
    x = _input(tmp_path)
    first = eng.run("copy", Copy(), {"x": x})
    again = eng.run("copy", Copy(), {"x": x})
    assert not first.cached and again.cached and first.key == again.key
    assert again.outputs["y"].path.read_bytes() == b"hello"
    assert not eng.run("copy", Copy(tag="b"), {"x": x}).cached


def test_meta_is_part_of_the_key_but_absolute_paths_are_not(tmp_path):
    eng = Engine(StageCache(tmp_path / "cache"))
    base = eng.key_for(Copy(), {"x": _input(tmp_path, meta={"input_map": [{"perm": [0, 2, 3, 1]}]})})
    other = eng.key_for(Copy(), {"x": _input(tmp_path, meta={"input_map": [{"perm": [0, 1, 2, 3]}]})})
    assert base != other
    a = eng.key_for(Copy(), {"x": _input(tmp_path, meta={"weights": "/home/a/w.pt"})})
    b = eng.key_for(Copy(), {"x": _input(tmp_path, meta={"weights": "/srv/b/w.pt"})})
    assert a == b


def test_a_stage_that_modifies_its_input_fails_and_the_entry_is_evicted(tmp_path):
    cache = StageCache(tmp_path / "cache")
    eng = Engine(cache)
    produced = eng.run("copy", Copy(), {"x": _input(tmp_path)}).outputs["y"]  # lives in the cache
    with pytest.raises(StageError, match="modified its input 'x'"):
        eng.run("scribble", Copy(scribble=True, tag="s"), {"x": produced})
    assert not produced.path.exists()  # the corrupted entry is gone, so the next build re-runs it
    assert not list((tmp_path / "cache" / "tmp").iterdir())  # and the failed stage left no workdir


def test_a_hit_whose_files_were_overwritten_is_evicted_and_the_stage_reruns(tmp_path):
    import io

    from edgepack.engine import Progress

    cache = StageCache(tmp_path / "cache")
    x = _input(tmp_path, b"the real model")
    first = Engine(cache).run("copy", Copy(), {"x": x}).outputs["y"]
    first.path.write_bytes(b"the evil model")  # same size: only the digest can tell
    out = io.StringIO()
    eng = Engine(cache, Progress(stream=out))
    again = eng.run("copy", Copy(), {"x": x})
    assert not again.cached and again.outputs["y"].path.read_bytes() == b"the real model"
    assert f"copy: cache entry {again.key[:12]} failed its check (out.bin: sha256 mismatch); evicted, re-running" in out.getvalue()
    assert eng.lineage[-1]["evicted"] == "out.bin: sha256 mismatch"
    assert Engine(cache).run("copy", Copy(), {"x": x}).cached  # the re-run entry is whole again
    (again.outputs["y"].path.parent / "extra.bin").write_bytes(b"")
    assert cache.lookup(again.key) == (None, "extra.bin: not listed in entry.json")
