"""One error base for everything a user can act on.

Library code raises an `EdgepackError` subclass with a message (what went wrong, naming the file,
field or node) and a hint (what to do). The CLI is the only place that turns these into exit codes.
Causes are chained with ``raise ... from e`` so ``--verbose`` shows the backend's own message.
"""

from __future__ import annotations


class ExitCode:
    """Documented process exit codes (docs/cli.md)."""

    OK = 0
    BUILD_ERROR = 1  # a stage failed (conversion, optimization, compilation, validation run)
    BAD_INPUT = 2  # recipe, data, model file, key or path problems; also CLI usage errors
    GATE_FAILED = 3  # validation ran but a gate failed; report written, nothing signed/published
    VERIFICATION_FAILED = 4  # a bundle or registry artifact failed digest or signature checks
    PARTIAL = 5  # some targets failed while others were built and validated


class EdgepackError(Exception):
    """``message``: what went wrong; ``where``: the file, field or node it is about (``recipe.yaml:3:5
    model.path``, ``data/val.npz``, ``node 'Conv_3'``); ``stage``: the plan node it arose in (``compile ort-int8``),
    set by the engine; ``hint``: what to do. The fields stay separate (``fields()``, ``--json``, report.json) and are
    composed into one line only by ``one_line()``: ``stage: where: message (hint)``."""

    exit_code = ExitCode.BUILD_ERROR

    def __init__(self, message: str, hint: str | None = None, *, where: object = None, stage: str | None = None):
        self.message = message
        self.hint = hint
        self.where = None if where is None else str(where)
        self.stage = stage
        super().__init__(self.text())

    def text(self) -> str:
        """``stage: where: message`` (what ``str()`` shows), without the hint."""
        return ": ".join(p for p in (self.stage, self.where, self.message) if p)

    def one_line(self) -> str:
        text = " ".join(self.text().split())
        if self.hint:
            text += f" ({' '.join(self.hint.split())})"
        return text

    def fields(self) -> dict:
        """The structured error, for ``--json`` output and report.json."""
        return {"type": self.__class__.__name__, "exit_code": self.exit_code, "stage": self.stage, "where": self.where,
                "message": self.message, "hint": self.hint}

    # Exceptions cross process boundaries (worker stages); keep them picklable with every field a subclass adds.
    def __reduce__(self):
        return (_rebuild, (self.__class__, dict(self.__dict__)))

    def recast(self, cls: type["EdgepackError"], **changes) -> "EdgepackError":
        """This error as a ``cls`` (same message, hint, where and stage), with ``changes`` to its fields."""
        e = cls.__new__(cls)
        e.__dict__.update({**self.__dict__, **changes})
        e.args = (e.text(),)
        return e

    def in_stage(self, stage: str) -> "EdgepackError":
        """The same error (same class, same extra fields) raised inside ``stage``; an outer stage goes first."""
        import copy

        e = copy.copy(self)  # through __reduce__: subclasses keep their fields
        if self.stage != stage and not (self.stage or "").startswith(f"{stage}: "):
            e.stage = f"{stage}: {self.stage}" if self.stage else stage
        e.args = (e.text(),)
        return e


def _rebuild(cls: type[EdgepackError], state: dict) -> EdgepackError:
    e = cls.__new__(cls)
    e.__dict__.update(state)
    e.args = (e.text(),)
    return e


class BadInputError(EdgepackError):
    exit_code = ExitCode.BAD_INPUT


class RecipeError(BadInputError):
    pass


class StageError(EdgepackError):
    exit_code = ExitCode.BUILD_ERROR


class PassFailedError(StageError):
    """An optimize pass failed (an error inside it, or a missed budget). ``record`` is what the pass had
    measured when it failed (effect, accuracy-aware sensitivities and steps): the build keeps it in the report."""

    def __init__(self, message: str, hint: str | None = None, record: dict | None = None, **fields):
        super().__init__(message, hint, **fields)
        self.record = record or {}


class BackendMissingError(EdgepackError):
    exit_code = ExitCode.BUILD_ERROR


class GateFailedError(EdgepackError):
    exit_code = ExitCode.GATE_FAILED


class VerificationError(EdgepackError):
    exit_code = ExitCode.VERIFICATION_FAILED


class PartialBuildError(EdgepackError):
    exit_code = ExitCode.PARTIAL


def require_backend(module: str, extra: str) -> None:
    """Fail with the pip extra to install when a heavy optional backend is absent."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise BackendMissingError(
            f"the '{module}' package is not installed",
            hint=f"pip install 'edgepack[{extra}]'",
        )
