"""A real round-robin HTTP proxy for tests: each request goes to the next backend in turn, on a
fresh connection, the way a load balancer without session affinity spreads a trainer's requests
over replicas (or a kernel spreads connections over ``serve --workers`` processes)."""

from __future__ import annotations

import itertools
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class RoundRobinProxy:
    def __init__(self, backends: list[str]):
        self.backends = backends
        self.sent: list[str] = []
        """The backend each request went to, in order."""
        turn = itertools.cycle(range(len(backends)))
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with lock:
                    backend = proxy.backends[next(turn)]
                    proxy.sent.append(backend)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                with httpx.Client(base_url=backend, timeout=60) as c:  # a fresh connection per request
                    r = c.request(self.command, self.path, content=body, headers=headers)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                self.send_header("content-length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RoundRobinProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
