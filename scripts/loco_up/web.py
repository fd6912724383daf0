"""The page server of `./loco up`: the WebXR page (www/dist), the plain-JS page on /wall/ and a
`desktops.json` naming the agents on the host the browser used."""
from __future__ import annotations

import http.server
import json
import re
from urllib.parse import urlsplit

from .common import WALL_DIR, WEB_DIR


class WallServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, family, up):
        self.address_family = family
        self.up = up
        super().__init__(addr, WallHandler)


_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d+)?$")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".json": "application/json", ".svg": "image/svg+xml",
          ".png": "image/png", ".ico": "image/x-icon", ".wasm": "application/wasm"}


class WallHandler(http.server.BaseHTTPRequestHandler):
    server_version = "loco-up"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # into the runtime dir, not the terminal
        try:
            with open(self.server.up.http_log, "a") as f:
                f.write("%s %s\n" % (self.address_string(), fmt % args))
        except OSError:
            pass

    def _send(self, status, body: bytes, ctype="text/plain; charset=utf-8", head=False):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _host_for_urls(self) -> str:
        """The host name the browser used to reach this page: the agents are on the same host."""
        h = (self.headers.get("Host") or "").strip()
        m = _HOST_RE.match(h)
        if m:
            return m.group(1)
        return self.server.up.default_url_host()

    def do_GET(self, head=False):
        path = urlsplit(self.path).path
        if path == "/":
            path = "/index.html"
        if path == "/wall":
            path = "/wall/"
        if path in ("/desktops.json", "/wall/desktops.json"):
            body = json.dumps(self.server.up.desktops(self._host_for_urls()), indent=1).encode() + b"\n"
            return self._send(200, body, "application/json", head)
        base, rel = (WALL_DIR, path[len("/wall/"):]) if path.startswith("/wall/") else (WEB_DIR, path.lstrip("/"))
        rel = rel or "index.html"
        # Plain names in plain folders only (wasm-bindgen puts snippets in a subfolder).
        if all(re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", part) for part in rel.split("/")):
            f = base / rel
            if f.is_file():
                ctype = _TYPES.get(f.suffix, "application/octet-stream")
                return self._send(200, f.read_bytes(), ctype, head)
        if path == "/favicon.ico":
            return self._send(204, b"", head=head)
        return self._send(404, b"not found\n", head=head)

    def do_HEAD(self):
        self.do_GET(head=True)
