"""Talking to an agent over HTTP: one request with http.client, and its /metrics text parsed
(the Prometheus exposition format)."""
from __future__ import annotations

import http.client
import json
import re
import urllib.parse
from dataclasses import dataclass


# --------------------------------------------------------------------------- HTTP

@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]   # lower-cased names
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)


def http_request(method: str, url: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 10.0) -> HttpResponse:
    """One HTTP request with http.client; tolerates the server answering before the whole
    body was sent (as it should for 413) and closing the connection."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        hdrs = dict(headers or {})
        if body is not None and not any(k.lower() == "content-length" for k in hdrs):
            hdrs["Content-Length"] = str(len(body))
        for k, v in hdrs.items():
            conn.putheader(k, v)
        conn.endheaders()
        if body:
            try:
                view = memoryview(body)
                for i in range(0, len(body), 65536):
                    conn.send(view[i:i + 65536])
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server gave up on the body; its answer may still be readable
        resp = conn.getresponse()
        data = resp.read()
        return HttpResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


# --------------------------------------------------------------------------- Prometheus text

_SAMPLE_RE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)'
    r'(?:\{(?P<labels>.*)\})?'
    r'\s+(?P<value>\S+)(?:\s+\S+)?\s*$')
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def _unescape(v: str) -> str:
    return v.replace(r'\"', '"').replace(r"\n", "\n").replace("\\\\", "\\")


class Metrics:
    """Parsed Prometheus text exposition: samples plus # TYPE lines."""

    def __init__(self, text: str):
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = []
        self.types: dict[str, str] = {}
        for raw in text.splitlines():
            line = raw.strip()
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 4 and parts[1] == "TYPE":
                    self.types[parts[2]] = parts[3].strip()
                continue
            m = _SAMPLE_RE.match(line)
            if not m:
                raise ValueError(f"unparsable metrics line: {raw!r}")
            labels: dict[str, str] = {}
            ltxt = m.group("labels") or ""
            pos = 0
            while pos < len(ltxt):
                lm = _LABEL_RE.match(ltxt, pos)
                if not lm:
                    raise ValueError(f"bad labels in metrics line: {raw!r}")
                labels[lm.group(1)] = _unescape(lm.group(2))
                pos = lm.end()
            v = m.group("value")
            value = float("inf") if v == "+Inf" else float("-inf") if v == "-Inf" else float(v)
            self.samples.append((m.group("name"), labels, value))

    def has(self, name: str) -> bool:
        return any(n == name for n, _, _ in self.samples)

    def series(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [(l, v) for n, l, v in self.samples
                if n == name and all(l.get(k) == str(want) for k, want in labels.items())]

    def get(self, name: str, default: float | None = 0.0, **labels: str) -> float | None:
        """Sum of all samples of `name` whose labels include `labels` (default if none)."""
        s = self.series(name, **labels)
        if not s:
            return default
        return sum(v for _, v in s)

    def names(self) -> set[str]:
        return {n for n, _, _ in self.samples}

    def __repr__(self) -> str:
        return f"Metrics({len(self.samples)} samples)"


def parse_metrics(text: str) -> Metrics:
    return Metrics(text)
