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
    exit_code = ExitCode.BUILD_ERROR

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = " ".join(self.message.split())
        if self.hint:
            text += f" ({' '.join(self.hint.split())})"
        return text

    # Exceptions cross process boundaries (worker stages); keep them picklable.
    def __reduce__(self):
        return (self.__class__, (self.message, self.hint))

    def prefixed(self, prefix: str) -> "EdgepackError":
        """The same error (same class, same extra fields) with ``prefix: `` before its message."""
        import copy

        e = copy.copy(self)  # through __reduce__: subclasses keep their fields
        e.message = f"{prefix}: {self.message}"
        e.args = (e.message,)
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

    def __init__(self, message: str, hint: str | None = None, record: dict | None = None):
        super().__init__(message, hint)
        self.record = record or {}

    def __reduce__(self):  # picklable across the worker boundary, record included
        return (self.__class__, (self.message, self.hint, self.record))


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
