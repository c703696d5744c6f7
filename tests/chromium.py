"""Headless Chromium for tests (the Debian `chromium` package; scripts/setup-tests.sh installs it).

``find()`` returns the binary (edgepack/devices/browser.py's lookup, the one the web target's device uses); ``run(url, ...)``
starts one headless Chromium process for a screenshot or a ``--dump-dom``, with console messages on stderr.
No DevTools client, no downloaded browser.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path


def find() -> str | None:
    """The binary edgepack's browser device uses (edgepack/devices/browser.py: $EDGEPACK_CHROMIUM, then PATH)."""
    from edgepack.devices.browser import find_chromium

    return find_chromium()


def skip_reason() -> str | None:
    return None if find() else "chromium is not installed (scripts/setup-tests.sh installs the Debian package)"


def run(url: str, *args: str, width: int = 1200, height: int = 2400, timeout: float = 60) -> subprocess.CompletedProcess:
    """One headless Chromium run on ``url`` (a file:// URL); a private profile, no network needed."""
    with tempfile.TemporaryDirectory(prefix="edgepack-chromium-") as profile:
        from edgepack.devices.browser import headless_args  # the flags the web target's device uses

        cmd = [find() or "chromium", *headless_args(profile), "--disable-gpu", "--hide-scrollbars",
               f"--window-size={width},{height}", "--virtual-time-budget=3000", *args, url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={"HOME": profile, "PATH": "/usr/bin:/bin"})


def console_messages(stderr: str) -> list[str]:
    """Lines Chromium logs for the page's console (``INFO:CONSOLE:LINE] "message"``) and its CSP/resource errors."""
    pat = re.compile(r"CONSOLE[:(]\d+|Content Security Policy|Refused to|Failed to load resource|Uncaught")
    return [line for line in stderr.splitlines() if pat.search(line)]


def screenshot(url: str, dest: Path, **kw) -> subprocess.CompletedProcess:
    return run(url, f"--screenshot={dest}", **kw)


def dump_dom(url: str, **kw) -> subprocess.CompletedProcess:
    return run(url, "--dump-dom", **kw)
