"""A real local Ray cluster for tests: `ray start --head` on 127.0.0.1 plus worker node processes.

``RayCluster(tmp, workers=1).start()`` starts a head node (``head_cpus``) and the worker nodes, one
after another (Ray gives a starting node 30 s to register, which a loaded 2-core machine can miss
when several start at once; a failed start is retried once), each with its own
``EDGEPACK_HOME`` (its own stage cache: artifacts can only move through the shared store). Every
process of the cluster inherits an environment marker, so ``pids(node)`` finds exactly this
cluster's processes, ``kill_node(name)`` SIGKILLs one node (its raylet and its task workers: a
machine lost mid-build) and ``stop()`` SIGKILLs the rest by pid; nothing else on the machine
(another Ray cluster) is touched.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

MARK = "EDGEPACK_TEST_RAY_CLUSTER"
NODE = "EDGEPACK_TEST_RAY_NODE"


def available() -> str | None:
    """None when Ray is installed, else the reason to skip."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return "ray is not installed (pip install 'edgepack[ray]'; scripts/setup-tests.sh installs it)"
    return None


def _ray_cli() -> list[str]:
    exe = Path(sys.executable).with_name("ray")
    return [str(exe)] if exe.is_file() else [shutil.which("ray") or "ray"]


class RayCluster:
    def __init__(self, root: Path, workers: int = 1, cpus_per_worker: int = 2, head_cpus: int = 1):
        from registry_server import free_port

        self.root = Path(root)
        self.token = secrets.token_hex(6)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.workers = [f"w{i + 1}" for i in range(workers)]
        self.cpus, self.head_cpus = cpus_per_worker, head_cpus
        import tempfile

        self.ray_tmp = tempfile.mkdtemp(prefix="ep-ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes

    def env(self, node: str, **extra) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        env.update({MARK: self.token, NODE: node, "EDGEPACK_HOME": str(self.root / f"{node}-home"),
                    "RAY_USAGE_STATS_ENABLED": "0",
                    # a killed node is declared dead in a few seconds, and its tasks rescheduled
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "5000",
                    "RAY_health_check_failure_threshold": "3", **extra})
        env.pop("EDGEPACK_CACHE", None)
        return env

    def _start(self, node: str, args: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{node}.log", "wb")
        return subprocess.Popen([*_ray_cli(), "start", *args, "--node-ip-address", "127.0.0.1", "--disable-usage-stats"],
                                env=self.env(node), stdout=log, stderr=subprocess.STDOUT)

    def _wait(self, procs: dict[str, subprocess.Popen], timeout: float = 240) -> None:
        for node, p in procs.items():
            try:
                rc = p.wait(timeout)
            except subprocess.TimeoutExpired:
                rc = None
            if rc != 0:
                self.stop()
                raise RuntimeError(f"ray start ({node}) failed: {(self.root / f'{node}.log').read_text()[-2000:]}")

    def start(self) -> "RayCluster":
        self.root.mkdir(parents=True, exist_ok=True)
        head = ["--head", "--port", str(self.port), "--num-cpus", str(self.head_cpus), "--include-dashboard=false", "--temp-dir", self.ray_tmp]
        for _attempt in (1, 2):  # Ray gives the raylet 30 s to register: a loaded machine can miss it
            p = self._start("head", head)
            if p.wait(240) == 0:
                break
            self.kill_node("head")
        else:
            self._wait({"head": p})  # raises with the log
        for w in self.workers:
            self.start_worker(w)  # `ray start` returns once the node's raylet registered
        return self

    def start_worker(self, name: str) -> None:
        for _attempt in (1, 2):
            p = self._start(name, ["--address", self.address, "--num-cpus", str(self.cpus)])
            if p.wait(240) == 0:
                return
            self.kill_node(name)
        self._wait({name: p})  # raises with the log

    def pids(self, node: str | None = None) -> list[int]:
        """This cluster's processes (of one node, or all)."""
        want = {f"{MARK}={self.token}".encode()} | ({f"{NODE}={node}".encode()} if node else set())
        out = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                env = set((d / "environ").read_bytes().split(b"\0"))
            except OSError:
                continue
            if want <= env:
                out.append(int(d.name))
        return out

    def task_pids(self, node: str) -> list[int]:
        """Processes of ``node`` running an edgepack task (Ray titles a busy worker ``ray::TASK NAME``)."""
        out = []
        for pid in self.pids(node):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::edgepack "):  # the executor names each task "edgepack NODE"
                out.append(pid)
        return out

    def kill_node(self, node: str) -> None:
        for pid in self.pids(node):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        for _ in range(3):  # a dying raylet may still be starting a worker
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
