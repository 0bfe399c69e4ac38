"""A real uvicorn server in a thread on a free loopback port, and a small JSON client for it."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from contextlib import contextmanager


class Client:
    """JSON over one loopback connection per call (http.client: no extra package, a real socket)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def request(
        self,
        method: str,
        path: str,
        body=None,
        headers: dict | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict, dict]:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            sent = (
                {"Content-Type": content_type, **(headers or {})} if data is not None else dict(headers or {})
            )
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            raw = response.read()
            heads = {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()
        return (
            response.status,
            json.loads(raw) if raw and "json" in heads.get("content-type", "") else {},
            heads,
        )

    def post(self, path: str, body=None, **kw) -> tuple[int, dict]:
        status, answer, _ = self.request("POST", path, body, **kw)
        return status, answer

    def get(self, path: str) -> tuple[int, dict]:
        status, answer, _ = self.request("GET", path)
        return status, answer

    def get_text(self, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode("utf-8")
        finally:
            conn.close()


@contextmanager
def running(app):
    """Serve `app` on 127.0.0.1 (a free port) in a thread; yields a `Client`; stops it afterwards."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield Client(sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
