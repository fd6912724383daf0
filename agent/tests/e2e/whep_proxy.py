"""A small HTTP reverse proxy in front of an agent that lets a test rewrite the SDP of a WHEP
exchange: the offer on its way to the agent and the answer on its way back. Everything else
(CORS preflights, DELETE, PATCH, /healthz) passes through unchanged, headers included, so a
browser page can use it exactly as it would use the agent.

The impairment tests use it to put udp_impair.py between headless Chromium and the agent: the
browser's page cannot be told to rewrite SDP, but its WHEP POST can go through this proxy.
"""
from __future__ import annotations

import http.client
import http.server
import threading
import urllib.parse
from typing import Callable

from loco_testkit.waits import free_port

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "proxy-connection"}


class WhepProxy:
    def __init__(self, agent_url: str, rewrite_offer: Callable[[str], str],
                 rewrite_answer: Callable[[str], str]):
        target = urllib.parse.urlsplit(agent_url)
        self.target = (target.hostname, target.port)
        self.exchanges = 0
        self.errors: list[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _forward(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                whep_post = self.command == "POST" and urllib.parse.urlsplit(self.path).path == "/whep"
                if whep_post:
                    body = rewrite_offer(body.decode()).encode()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                conn = http.client.HTTPConnection(*proxy.target, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    r = conn.getresponse()
                    out = r.read()
                    if whep_post and r.status == 201:
                        try:
                            out = rewrite_answer(out.decode()).encode()
                            proxy.exchanges += 1
                        except Exception as e:  # noqa: BLE001 - reported by the test
                            proxy.errors.append(repr(e))
                            raise
                    self.send_response(r.status, r.reason)
                    for k, v in r.getheaders():
                        if k.lower() not in _HOP:
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                finally:
                    conn.close()

            do_GET = do_POST = do_DELETE = do_PATCH = do_OPTIONS = _forward

        self.port = free_port()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True, name="whep-proxy").start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
