"""Named fail points, for tests that hit crash windows deterministically (as etcd and TiKV do).

``EDGEPACK_FAILPOINTS="sign.after_write=kill,swap.exchange=error"`` arms fail points by name; the
code calls ``hit("sign.after_write")`` at that spot. Actions:

- ``kill``  SIGKILL this process (a real ``kill -9`` at that exact instant)
- ``stop``  SIGSTOP this process: a test sees it stopped (``T`` in /proc/PID/stat), then kills it
  or resumes it with SIGCONT (a live owner paused in the window); fires once
- ``error`` raise OSError(EINVAL) there (e.g. a filesystem without ``RENAME_EXCHANGE``)

A test facility: the variable is read once at import; unset (always, outside tests), ``hit`` is a
dict lookup on an empty dict. Names are listed in docs/design.md.
"""

from __future__ import annotations

import errno
import os
import signal
import threading

ACTIONS = ("kill", "stop", "error")


def _parse(spec: str) -> dict[str, str]:
    armed = {}
    for item in spec.split(","):
        name, sep, action = item.strip().rpartition("=")
        if sep and name and action in ACTIONS:
            armed[name] = action
    return armed


_ARMED: dict[str, str] = _parse(os.environ.get("EDGEPACK_FAILPOINTS", ""))


def hit(name: str) -> None:
    """Run the action armed for ``name``, if any."""
    action = _ARMED.get(name) if _ARMED else None
    if action is None:
        return
    if action == "kill":
        signal.pthread_kill(threading.get_ident(), signal.SIGKILL)  # kills the whole process
    elif action == "stop":
        del _ARMED[name]  # once: a resumed process runs on past this point
        # sent to this thread, so it stops before its next instruction (a process-directed SIGSTOP
        # may be taken by another thread while this one runs on for a few milliseconds)
        signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
    else:
        raise OSError(errno.EINVAL, f"fail point {name}")
