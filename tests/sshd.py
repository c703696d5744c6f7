"""A real OpenSSH server on 127.0.0.1 for device tests (Debian's openssh-server, see scripts/setup-tests.sh).

``SSHServer.start(tmp)`` generates a host key and a user key with ssh-keygen, writes an sshd_config
that accepts only that user key, starts ``/usr/sbin/sshd -D`` on a free port as the current user and
waits until it answers. ``stop()`` kills it (by its own pid). ``profile(...)`` writes a device
profile that reaches it with host key checking on.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

SSHD = "/usr/sbin/sshd"


def available() -> str | None:
    """None when a test sshd can run here, else the reason."""
    if not Path(SSHD).exists():
        return "openssh-server is not installed (scripts/setup-tests.sh installs it: apt-get install openssh-server)"
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (openssh-client)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SSHServer:
    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.user = getpass.getuser()
        self.host_key = root / "ssh_host_ed25519_key"
        self.user_key = root / "id_ed25519"
        self.other_key = root / "id_other"  # a key the server does not accept
        self.known_hosts = root / "known_hosts"
        self.proc: subprocess.Popen | None = None

    @classmethod
    def start(cls, root: Path) -> SSHServer:
        root.mkdir(parents=True, exist_ok=True)
        server = cls(root)
        server._keys()
        server._config()
        server._launch()
        return server

    def _keys(self):
        for path, comment in ((self.host_key, "edgepack-test-host"), (self.user_key, "edgepack-test-user"),
                              (self.other_key, "edgepack-test-other")):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
        pub = self.host_key.with_suffix(".pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n")

    def _config(self):
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation directory
        (self.root / "sshd_config").write_text(
            f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
PidFile {self.root / 'sshd.pid'}
AuthorizedKeysFile {self.user_key}.pub
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
AllowUsers {self.user}
MaxStartups 50:30:100
MaxSessions 50
LogLevel ERROR
Subsystem sftp internal-sftp
"""
        )

    def _launch(self):
        self.log = open(self.root / "sshd.log", "wb")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited {self.proc.returncode}: {(self.root / 'sshd.log').read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("sshd did not start listening within 15s")

    def session_pids(self) -> list[int]:
        """Per-connection sshd processes (children of the listener): killing one drops that connection."""
        out = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if self.proc is not None and ppid == self.proc.pid:
                out.append(int(d.name))
        return out

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            for pid in self.session_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()

    def profile(self, path: Path, name: str = "loopback", key: Path | None = None, known_hosts: Path | None | bool = None,
                python: str | None = None, remote_dir: Path | None = None, **transport) -> Path:
        kh = self.known_hosts if known_hosts is None else known_hosts
        doc = {
            "name": name,
            "description": "this host reached over ssh (test sshd)",
            "arch": os.uname().machine,
            "os": "linux",
            "transport": {"type": "ssh", "host": "127.0.0.1", "port": self.port, "user": self.user,
                          "key": str(key or self.user_key), "connect_timeout_s": 5, "step_timeout_s": 120, **transport},
            "python": python or sys.executable,
            "runtimes": ["onnxruntime"],
        }
        if kh:
            doc["transport"]["known_hosts"] = str(kh)
        if remote_dir is not None:
            doc["transport"]["remote_dir"] = str(remote_dir)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path


# ------------------------------------------------------------------ tiny models and bundles for device tests


def tiny_onnx_model(path: Path, features: int = 64, hidden: int = 32, classes: int = 10, seed: int = 0) -> Path:
    """input [batch, features] -> MatMul -> Relu -> MatMul -> logits [batch, classes], built with onnx.helper."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((features, hidden)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, classes)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def tiny_bundle(dest: Path, features: int = 64, hidden: int = 32) -> Path:
    """An (unsigned) bundle with one onnxruntime target 'ort', written with the real bundle writer."""
    from edgepack.bundle.manifest import write_bundle

    model = tiny_onnx_model(dest.parent / f"{dest.name}-model.onnx", features, hidden)
    spec_in = {"name": "input", "shape": ["batch", features], "dtype": "float32", "layout": None}
    spec_out = {"name": "logits", "shape": ["batch", 10], "dtype": "float32", "layout": None}
    manifest = {"name": "tiny", "version": "0.1", "targets": {"ort": {
        "type": "onnxruntime", "path": "targets/ort/model.onnx", "format": "onnx", "runtime": "onnxruntime",
        "precision": "fp32", "inputs": [spec_in], "outputs": [spec_out], "runner": {}, "validated_on": []}}}
    return write_bundle(dest, {"targets/ort/model.onnx": model}, manifest, {"targets": {}})
