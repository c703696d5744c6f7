"""Transport limits of registry traffic: upload chunk, deadlines, retries (docs/registry.md)."""

from __future__ import annotations

import os

from edgepack.errors import BadInputError

DEFAULT_CHUNK = 8 << 20
DEFAULT_TIMEOUT = 600.0  # overall, seconds (--timeout / EDGEPACK_REGISTRY_TIMEOUT)
REQUEST_TIMEOUT = 60.0  # per request (EDGEPACK_REGISTRY_REQUEST_TIMEOUT)
MIN_RATE = 1 << 20  # bytes/s a blob body is allowed on top of the per-request time
ATTEMPTS = 4  # one try and 3 retries
RETRY_STATUS = {429, 500, 502, 503, 504}


def chunk_size() -> int:
    """Upload chunk in bytes (``EDGEPACK_REGISTRY_CHUNK`` overrides; blobs up to it go in one PUT)."""
    return int(_env_number("EDGEPACK_REGISTRY_CHUNK", DEFAULT_CHUNK, minimum=1024))


def _env_number(name: str, default: float, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as e:
        raise BadInputError(f"{name}={raw!r} is not a number") from e
    if value <= 0:
        raise BadInputError(f"{name}={raw!r} must be positive")
    return max(minimum, value)


def timeouts(timeout: float | None = None) -> tuple[float, float]:
    """(overall, per request) seconds: ``timeout`` (``--timeout``) or the environment, else the defaults."""
    if timeout is not None and timeout <= 0:
        raise BadInputError(f"--timeout {timeout:g}: must be a positive number of seconds")
    overall = timeout if timeout is not None else _env_number("EDGEPACK_REGISTRY_TIMEOUT", DEFAULT_TIMEOUT)
    return overall, min(overall, _env_number("EDGEPACK_REGISTRY_REQUEST_TIMEOUT", REQUEST_TIMEOUT))
