"""Startup errors: a bad flag or an occupied listen port exit non-zero with one clear line on
stderr (no panic, no backtrace)."""
from __future__ import annotations

import os
import socket
import subprocess

import pytest

from loco_testkit.waits import free_port


def run_agent(agent_bin, *args, timeout: float = 20.0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG", "RUST_BACKTRACE")}
    try:
        return subprocess.run([str(agent_bin), *args], capture_output=True, text=True, timeout=timeout,
                              env=env, start_new_session=True, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"loco-agent {args} did not exit within {timeout}s "
                             f"(stderr so far: {e.stderr!r})") from e


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    ctx = f"rc={r.returncode}\n--- stderr ---\n{r.stderr}\n--- stdout ---\n{r.stdout}"
    assert r.returncode != 0, f"expected a non-zero exit; {ctx}"
    assert "panicked" not in r.stderr and "backtrace" not in r.stderr.lower(), f"panic; {ctx}"
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}; {ctx}"
    low = lines[0].lower()
    for n in needles:
        assert n.lower() in low, f"stderr line does not mention {n!r}; {ctx}"
    return lines[0]


@pytest.mark.timeout(60)
def test_bad_flag(agent_bin):
    r = run_agent(agent_bin, "--vnc", "127.0.0.1:5999", "--listen", f"127.0.0.1:{free_port()}",
                  "--no-such-flag")
    one_line_error(r, "--no-such-flag")


@pytest.mark.timeout(60)
def test_bad_codec_value(agent_bin):
    r = run_agent(agent_bin, "--vnc", "127.0.0.1:5999", "--listen", f"127.0.0.1:{free_port()}",
                  "--codec", "av1")
    one_line_error(r, "av1")


@pytest.mark.timeout(60)
def test_listen_port_in_use(agent_bin):
    port = free_port()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", port))
    s.listen(1)
    try:
        r = run_agent(agent_bin, "--vnc", f"127.0.0.1:{free_port()}", "--listen", f"127.0.0.1:{port}")
    finally:
        s.close()
    line = one_line_error(r, str(port))
    assert "in use" in line.lower() or "address" in line.lower(), line
