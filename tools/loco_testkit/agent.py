"""One loco-agent process: started in its own process group with its output in a log file, asked
over HTTP (/healthz, /metrics), stopped as a group.

    a = Agent.start(vnc="127.0.0.1:5901", log_path=work / "agent.log", codec="h264")
    a.wait_http()                     # its HTTP answers (raises ProcessExited if it died)
    a.wait_screen((1024, 768))        # it reads the VNC server and knows the screen's size
    a.metric("loco_frames_encoded_total")
    a.stop()
"""
from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .httpio import HttpResponse, Metrics, http_request, parse_metrics
from .paths import agent_binary
from .procs import kill_group, spawn, tail
from .waits import ProcessExited, free_port, wait_until


@dataclass
class Agent:
    argv: list[str]
    port: int
    log_path: Path
    proc: subprocess.Popen | None = None
    stopped: bool = False
    stop_rc: int | None = None
    token: str | None = None
    name: str = "loco-agent"
    env: dict = field(default_factory=dict, repr=False)

    @classmethod
    def start(cls, vnc: str, log_path: str | os.PathLike, *, codec: str | None = None,
              token: str | None = None, extra_args=(), listen_port: int | None = None,
              binary: str | os.PathLike | None = None, rust_log: str = "info",
              name: str = "loco-agent") -> "Agent":
        """Start loco-agent reading `vnc` ("host:port" or "unix:/path") and serving HTTP on
        127.0.0.1:listen_port (a free port when None). Returns at once; see wait_http()."""
        port = listen_port or free_port()
        argv = [str(binary or agent_binary()), "--vnc", vnc, "--listen", f"127.0.0.1:{port}"]
        if codec:
            argv += ["--codec", codec]
        log_path = Path(log_path)
        if token:  # from a file, as deployments do: a key never goes into argv (or the log's first line)
            token_file = log_path.with_suffix(".token")
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
            argv += ["--token-file", str(token_file)]
        argv += [str(a) for a in extra_args]
        log_path.write_text("$ " + " ".join(argv) + "\n")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", rust_log)
        env.setdefault("RUST_BACKTRACE", "1")
        a = cls(argv, port, log_path, token=token, name=name, env=env)
        a.proc = spawn(argv, log_path=log_path, env=env, name=name)
        return a

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _check_alive(self, doing: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ProcessExited(f"{self.name} exited rc={self.proc.returncode} {doing}\n"
                                f"--- its log ---\n{self.log()[-3000:]}")

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None, timeout: float = 10.0) -> HttpResponse:
        url = path if path.startswith(("http://", "https://")) else self.url + path
        return http_request(method, url, body, headers, timeout)

    def wait_http(self, timeout: float = 30.0) -> None:
        """Until its HTTP answers at all; ProcessExited if it dies first."""
        def answers():
            self._check_alive("while starting")
            try:
                self.request("GET", "/healthz", timeout=2)
                return True
            except OSError:
                return False
        wait_until(answers, timeout, 0.1, f"{self.name} HTTP on port {self.port}")

    def healthz(self) -> tuple[int, dict]:
        r = self.request("GET", "/healthz")
        try:
            body = r.json()
        except ValueError as e:
            raise AssertionError(f"/healthz answered {r.status} with non-JSON {r.text[:300]!r}") from e
        return r.status, body

    def wait_vnc(self, connected: bool = True, timeout: float = 20.0) -> dict:
        """Until /healthz says the VNC connection is (or is not) up; its body."""
        want = 200 if connected else 503

        def ok():
            st, body = self.healthz()
            return body if (st == want and body.get("vnc_connected") is connected) else None
        try:
            return wait_until(ok, timeout, 0.1, f"/healthz {want} vnc_connected={connected}")
        except TimeoutError as e:
            try:
                last = self.healthz()
            except Exception as e2:  # noqa: BLE001
                last = repr(e2)
            raise AssertionError(f"{e}; last /healthz: {last}; agent alive={self.alive()}") from e

    def wait_screen(self, size: tuple[int, int], timeout: float = 30.0) -> dict:
        """Until the agent reads its VNC server and the screen is `size`; its /healthz body."""
        last: dict = {}

        def ok():
            nonlocal last
            self._check_alive("before the screen showed up")
            try:
                st, last = self.healthz()
            except OSError:
                return None
            return last if (st == 200 and last.get("vnc_connected")
                            and (last.get("width"), last.get("height")) == tuple(size)) else None
        try:
            return wait_until(ok, timeout, 0.2, f"{self.name}: /healthz with a {size[0]}x{size[1]} screen")
        except TimeoutError as e:
            raise TimeoutError(f"{e}; last /healthz: {last}") from e

    def metrics(self) -> Metrics:
        r = self.request("GET", "/metrics")
        assert r.status == 200, f"/metrics answered {r.status}: {r.text[:300]}"
        return parse_metrics(r.text)

    def metric(self, name: str, default: float | None = 0.0, **labels) -> float | None:
        return self.metrics().get(name, default, **labels)

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> int | None:
        self.stopped = True
        if self.proc is not None:
            self.stop_rc = kill_group(self.proc, sig, grace=grace)
        return self.stop_rc

    def died_unexpectedly(self) -> str | None:
        """A sentence when the agent exited although nobody stopped it; None otherwise."""
        if not self.stopped and self.proc is not None and self.proc.poll() is not None:
            return (f"{self.name} {self.argv} exited unexpectedly with rc={self.proc.returncode}\n"
                    f"--- log ---\n{self.log()}")
        return None

    def log(self) -> str:
        return tail(self.log_path)
