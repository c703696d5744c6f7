"""Fleet runs: the same work on several devices at once, each with its own time limit.

Every device gets a thread; its transport calls see the device's deadline (``DEADLINE``), so a
step never outlives it. A device that fails or runs out of time is reported as such and the others
finish. One device never runs two jobs at once (timings would disturb each other): callers run a
device's jobs one after the other inside ``fn``.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from ..errors import EdgepackError
from . import DEADLINE, DeviceProfile

GRACE_S = 5.0  # after a deadline, how long to wait for the device's thread to report its own error


@dataclass
class DeviceOutcome:
    device: str
    status: str  # ok | failed | timeout
    value: Any = None
    error: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict:
        d = {"status": self.status, "seconds": round(self.seconds, 3)}
        if self.error:
            d["error"] = self.error
        return d


def _call(fn, profile, deadline):
    DEADLINE.set(deadline)
    return fn(profile)


def run_fleet(profiles: list[DeviceProfile], fn: Callable[[DeviceProfile], Any],
              timeout_s: float | None = None) -> dict[str, DeviceOutcome]:
    """Run ``fn(profile)`` for every device in parallel; outcomes by device name, in input order.

    ``timeout_s`` overrides each profile's ``transport.run_timeout_s``.
    """
    if not profiles:
        return {}
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        from ..errors import BadInputError

        raise BadInputError(f"two devices share a name in {names}", hint="give each device profile a distinct 'name'")
    pool = ThreadPoolExecutor(max_workers=len(profiles), thread_name_prefix="edgepack-device")
    started = time.monotonic()
    futures = {}
    for p in profiles:
        limit = timeout_s if timeout_s is not None else p.transport.run_timeout_s
        deadline = started + limit
        futures[p.name] = (pool.submit(contextvars.copy_context().run, _call, fn, p, deadline), deadline, limit)
    outcomes: dict[str, DeviceOutcome] = {}
    for name, (fut, deadline, limit) in futures.items():
        try:
            value = fut.result(timeout=max(0.0, deadline - time.monotonic()) + GRACE_S)
            outcomes[name] = DeviceOutcome(name, "ok", value, seconds=time.monotonic() - started)
        except FutureTimeout:
            outcomes[name] = DeviceOutcome(name, "timeout", error=f"device {name}: did not finish within its limit of "
                                           f"{limit:.0f}s (transport.run_timeout_s); its other results were dropped",
                                           seconds=time.monotonic() - started)
        except EdgepackError as e:
            outcomes[name] = DeviceOutcome(name, "failed", error=e.one_line(), seconds=time.monotonic() - started)
        except Exception as e:  # a bug or an unexpected backend error: this device only
            outcomes[name] = DeviceOutcome(name, "failed", error=f"device {name}: {e.__class__.__name__}: {e}",
                                           seconds=time.monotonic() - started)
    pool.shutdown(wait=False, cancel_futures=True)
    return outcomes
