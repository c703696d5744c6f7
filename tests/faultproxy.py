"""A fault-injecting HTTP proxy on 127.0.0.1 in front of the real test registry.

``FaultProxy(upstream="127.0.0.1:PORT").start()`` forwards every request to the registry (the
``Host`` header is kept, so the registry's ``Location`` headers point back at the proxy) and
records ``(method, path, Authorization)`` of each. ``proxy.add(method, path_regex, action,
times=1, **opts)`` makes the next ``times`` matching requests misbehave:

- ``"500"`` / ``"429"``: answer that status without forwarding (``retry_after`` for 429);
- ``"reset"``: close the connection with a TCP RST before answering;
- ``"stall"``: say nothing for ``seconds`` (default: until the client gives up), then close;
- ``"trickle"``: forward, then send the body one byte every ``interval`` seconds;
- ``"truncate"``: forward, declare the real length, send half the body and close;
- ``"endless"``: forward the headers without a length, then send zeros until the client leaves.

``routes={"/token": "127.0.0.1:PORT"}`` sends paths with that prefix to another upstream (a token
service behind the same host:port as the registry, as Harbor and GitLab serve theirs).
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade"}


class FaultProxy:
    def __init__(self, upstream: str = "", routes: dict[str, str] | None = None):
        from registry_server import free_port

        self.upstream, self.routes = upstream, dict(routes or {})
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.rules: list[dict] = []
        self.seen: list[tuple[str, str, str | None]] = []
        self.fired: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.httpd: ThreadingHTTPServer | None = None

    def add(self, method: str, path: str, action: str, times: int = 1, **opts) -> "FaultProxy":
        with self.lock:
            self.rules.append({"method": method, "path": re.compile(path), "action": action, "times": times, **opts})
        return self

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def _rule(self, method: str, path: str) -> dict | None:
        with self.lock:
            for r in self.rules:
                if r["times"] > 0 and r["method"] in (method, "*") and r["path"].search(path):
                    r["times"] -= 1
                    self.fired.append((method, path, r["action"]))
                    return r
        return None

    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: faults never leak into the next one

            def log_message(self, *args):
                pass

            def _any(self):
                proxy.seen.append((self.command, self.path, self.headers.get("Authorization")))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                rule = proxy._rule(self.command, self.path)
                action = rule["action"] if rule else None
                if action in ("500", "429"):
                    self.send_response(int(action))
                    if action == "429":
                        self.send_header("Retry-After", str(rule.get("retry_after", 1)))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if action == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    return
                if action == "stall":
                    proxy.stopping.wait(rule.get("seconds", 3600))
                    self.close_connection = True
                    return
                status, headers, data = proxy._forward(self.command, self.path, self.headers, body)
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in _HOP:
                        self.send_header(k, v)
                if self.command == "HEAD":
                    self.send_header("Content-Length", dict((k.lower(), v) for k, v in headers).get("content-length", "0"))
                elif action != "endless":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    if action == "trickle":
                        for i in range(len(data)):
                            if proxy.stopping.wait(rule.get("interval", 0.5)):
                                return
                            self.wfile.write(data[i:i + 1])
                            self.wfile.flush()
                    elif action == "truncate":
                        self.wfile.write(data[: len(data) // 2])
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)
                    elif action == "endless":
                        block = b"\0" * (1 << 16)
                        while not proxy.stopping.is_set():
                            self.wfile.write(block)
                    elif self.command != "HEAD":
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass  # the client gave up, as it should

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def _forward(self, method: str, path: str, headers, body: bytes):
        upstream = next((u for prefix, u in self.routes.items() if path.startswith(prefix)), self.upstream)
        conn = http.client.HTTPConnection(upstream, timeout=60)
        try:
            conn.request(method, path, body=body or None,
                         headers={k: v for k, v in headers.items() if k.lower() not in _HOP - {"content-length"}})
            r = conn.getresponse()
            data = r.read()
            return r.status, r.getheaders(), data
        finally:
            conn.close()

    def stop(self) -> None:
        self.stopping.set()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

