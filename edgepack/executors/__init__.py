"""Executors run a build plan (edgepack/plan.py): ``local`` (default, threads + isolated workers on this
machine) or ``ray`` / ``ray://HOST:PORT`` (edgepack/executors/ray.py, the ``edgepack[ray]`` extra)."""

from __future__ import annotations


def get_executor(name: str | None = None, jobs: int | None = None):
    """The executor for ``--executor NAME`` (None or "local": the local one with ``jobs`` at once)."""
    if not name or name == "local":
        from .local import LocalExecutor

        return LocalExecutor(jobs)
    if name == "ray" or name.startswith("ray://"):
        from ..errors import BadInputError

        try:
            from .ray import RayExecutor
        except ImportError as e:
            raise BadInputError(f"--executor {name}: the Ray executor is not available ({e})",
                                hint="pip install 'edgepack[ray]'") from e
        return RayExecutor(None if name == "ray" else name, jobs)
    from ..errors import BadInputError

    raise BadInputError(f"--executor {name}: unknown executor", hint="use local, ray or ray://HOST:PORT")
