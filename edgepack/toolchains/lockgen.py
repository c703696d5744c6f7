"""(Re)write a toolchain lock's pinned lines from its header: ``python -m edgepack.toolchains.lockgen NAME...``.

Keeps the header (comments up to the first requirement line), resolves ``# requires:`` with the lock's Python
(pip ``install --dry-run --ignore-installed --report``, which downloads metadata only) and writes every resolved
distribution as ``name==version``, sorted. The result is used as pip constraints, so a platform that needs a
package this resolution did not pin still resolves it. A maintainer's tool: it needs the package index.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from . import canonical, lock_path, parse_lock


def resolve(requires: list[str], python: str) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text("\n".join(requires) + "\n")
        report = Path(tmp) / "report.json"
        subprocess.run([python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--disable-pip-version-check",
                        "--report", str(report), "-r", str(req)], check=True)
        data = json.loads(report.read_text())
    # a local label (torch's "+cpu" from a local wheel folder) is dropped: "==2.13.0" matches every build of it
    return {item["metadata"]["name"]: item["metadata"]["version"].split("+")[0] for item in data["install"]}


def regenerate(name: str) -> Path:
    from .env import find_python

    path = Path(str(lock_path(name)))
    text = path.read_text()
    lock = parse_lock(name, text)
    header = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            break
        if not line.startswith("# resolved with"):
            header.append(line)
    while header and not header[-1].strip():
        header.pop()
    python, version = find_python(name)
    pins = resolve(list(lock.requires), python)
    body = [f"{n}=={v}" for n, v in sorted(pins.items(), key=lambda kv: canonical(kv[0]))]
    path.write_text("\n".join(header + [f"# resolved with Python {version} on {sys.platform}", ""] + body) + "\n")
    return path


def main(argv: list[str]) -> None:
    for name in argv:
        print(regenerate(name))


if __name__ == "__main__":
    main(sys.argv[1:])
