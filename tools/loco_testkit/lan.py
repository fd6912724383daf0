"""The guest LAN on one host: the loco-lan switch on a Unix socket and the LAN's dnsmasq (DHCP
only, on loopback, reached through the switch's relay), as ./loco up and the tests run them.
The addresses, names and dnsmasq settings come from packer/guestlan.py (shared with the runner
and the chart).

    lan = GuestLan(workdir, vms=3).start()
    vm = StandinVM("vm1", lan=lan.spec, lan_index=1).start()   # QEMU joins as VM 1: 10.98.0.101
    lan.metric("loco_lan_ports")
    lan.stop()

`commands()` gives the two command lines without starting them (./loco up starts them as its
own children).
"""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import guestlan  # packer/

from .httpio import Metrics, http_request
from .paths import lan_binary
from .procs import kill_group, spawn
from .waits import free_port, wait_until


def free_udp_port(*hosts: str) -> int:
    """A UDP port free on every one of hosts (dnsmasq's port on 127.0.0.1 and the relay's on
    127.0.0.2 are the same number)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        ok = True
        for h in hosts:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as t:
                try:
                    t.bind((h, port))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no free UDP port for the LAN's DHCP server")


@dataclass
class LanCommands:
    switch: list[str]
    dhcp: list[str]
    spec: str           # what QEMU joins: unix:PATH (tcp:127.0.0.1:PORT where the path is too long)
    metrics_port: int


def commands(state_dir: Path, vms: int, *, socket_path: Path | None = None,
             metrics_port: int | None = None, dhcp_port: int | None = None) -> LanCommands:
    """Writes dnsmasq's configuration into state_dir and returns both command lines."""
    if shutil.which("dnsmasq") is None:
        raise FileNotFoundError("dnsmasq is not installed (apt-get install -y dnsmasq-base): the guest LAN's "
                                "DHCP server")
    binary = lan_binary()
    if not binary.is_file():
        raise FileNotFoundError(f"{binary} is not built (./loco build builds it with the agent)")
    state_dir.mkdir(parents=True, exist_ok=True)
    dhcp_port = dhcp_port or free_udp_port("127.0.0.1", guestlan.RELAY_ADDR)
    metrics_port = metrics_port or free_port()
    sock = socket_path or state_dir / "lan.sock"
    if len(str(sock)) <= 107:  # sun_path
        listen = spec = f"unix:{sock}"
    else:  # too deep for a Unix socket: loopback TCP
        listen = spec = f"tcp:127.0.0.1:{free_port()}"
    conf = state_dir / "dnsmasq.conf"
    conf.write_text(guestlan.dnsmasq_conf(vms, state_dir=str(state_dir), dhcp_port=dhcp_port))
    # As root, dnsmasq would drop to "nobody", who may not write state_dir: stay who we are.
    user = pwd.getpwuid(os.getuid()).pw_name
    dhcp = ["dnsmasq", f"--conf-file={conf}", f"--user={user}"]
    switch = [str(binary), "--listen", listen, "--dhcp-server", f"127.0.0.1:{dhcp_port}",
              "--relay-bind", f"{guestlan.RELAY_ADDR}:{dhcp_port}", "--lan-ip", str(guestlan.LAN_IP),
              "--metrics-listen", f"127.0.0.1:{metrics_port}"]
    return LanCommands(switch=switch, dhcp=dhcp, spec=spec, metrics_port=metrics_port)


class GuestLan:
    def __init__(self, state_dir: Path, vms: int):
        self.state_dir, self.vms = Path(state_dir), vms
        self.cmds: LanCommands | None = None
        self.switch: subprocess.Popen | None = None
        self.dhcp: subprocess.Popen | None = None

    @property
    def spec(self) -> str:
        return self.cmds.spec

    def start(self) -> "GuestLan":
        self.cmds = commands(self.state_dir, self.vms)
        self.dhcp = spawn(self.cmds.dhcp, log_path=self.state_dir / "dnsmasq.log", name="LAN dnsmasq")
        self.start_switch()
        return self

    def start_switch(self) -> None:
        self.switch = spawn(self.cmds.switch, log_path=self.state_dir / "loco-lan.log", name="loco-lan")
        wait_until(lambda: self._healthy(), 15, what="loco-lan's /healthz")

    def stop_switch(self) -> None:
        if self.switch is not None:
            kill_group(self.switch)
            self.switch = None

    def _healthy(self) -> bool:
        if self.switch.poll() is not None:
            raise RuntimeError(f"loco-lan exited: {(self.state_dir / 'loco-lan.log').read_text()[-2000:]}")
        if self.dhcp.poll() is not None:
            raise RuntimeError(f"dnsmasq exited: {(self.state_dir / 'dnsmasq.log').read_text()[-2000:]}")
        try:
            return http_request("GET", f"http://127.0.0.1:{self.cmds.metrics_port}/healthz", timeout=2).status == 200
        except OSError:
            return False

    def metrics(self) -> Metrics:
        r = http_request("GET", f"http://127.0.0.1:{self.cmds.metrics_port}/metrics", timeout=5)
        return Metrics(r.text)

    def metric(self, name: str, **labels) -> float:
        return self.metrics().get(name, **labels)

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.state_dir / "loco-lan.log",
                                                              self.state_dir / "dnsmasq.log") if p.exists())

    def stop(self) -> None:
        self.stop_switch()
        if self.dhcp is not None:
            kill_group(self.dhcp)
            self.dhcp = None
