"""The guest LAN on one host: the loco-lan switch on a Unix socket and the LAN's DHCP server
(ISC Kea's kea-dhcp4, on loopback, reached through the switch's relay; no privilege needed), as
./loco up and the tests run them. The addresses, names and Kea settings come from
packer/guestlan.py (shared with the runner and the chart).

    lan = GuestLan(workdir, vms=3).start()
    vm = StandinVM("vm1", lan=lan.spec, lan_index=1).start()   # QEMU joins as VM 1: 10.98.0.101
    lan.metric("loco_lan_ports")
    lan.stop()

`commands()` gives the two command lines without starting them (./loco up starts them as its
own children).
"""
from __future__ import annotations

import os
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


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port free on host now (for the DHCP server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def kea_binary() -> str | None:
    """kea-dhcp4 (Debian puts it in /usr/sbin, which a non-root PATH may lack), or None."""
    return shutil.which("kea-dhcp4") or ("/usr/sbin/kea-dhcp4" if os.path.exists("/usr/sbin/kea-dhcp4") else None)


@dataclass
class LanCommands:
    switch: list[str]
    dhcp: list[str]
    spec: str           # what QEMU joins: unix:PATH (tcp:127.0.0.1:PORT where the path is too long)
    metrics_port: int


def commands(state_dir: Path, vms: int, *, socket_path: Path | None = None,
             metrics_port: int | None = None, dhcp_port: int | None = None) -> LanCommands:
    """Writes kea-dhcp4's configuration into state_dir and returns both command lines (the DHCP
    server's with its environment: where it keeps its pid and lock files)."""
    kea = kea_binary()
    if kea is None:
        raise FileNotFoundError("kea-dhcp4 is not installed (apt-get install -y kea-dhcp4-server): the guest "
                                "LAN's DHCP server")
    binary = lan_binary()
    if not binary.is_file():
        raise FileNotFoundError(f"{binary} is not built (./loco build builds it with the agent)")
    state_dir.mkdir(parents=True, exist_ok=True)
    dhcp_port = dhcp_port or free_udp_port()
    metrics_port = metrics_port or free_port()
    sock = socket_path or state_dir / "lan.sock"
    if len(str(sock)) <= 107:  # sun_path
        listen = spec = f"unix:{sock}"
    else:  # too deep for a Unix socket: loopback TCP
        listen = spec = f"tcp:127.0.0.1:{free_port()}"
    conf = state_dir / "kea-dhcp4.json"
    conf.write_text(guestlan.kea_conf(vms, dhcp_port=dhcp_port))
    dhcp = ["env", f"KEA_PIDFILE_DIR={state_dir}", f"KEA_LOCKFILE_DIR={state_dir}",
            kea, "-c", str(conf), "-p", str(dhcp_port)]
    switch = [str(binary), "--listen", listen, "--dhcp-server", f"127.0.0.1:{dhcp_port}",
              "--relay-bind", f"{guestlan.RELAY_ADDR}:0", "--lan-ip", str(guestlan.LAN_IP),
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
        self.dhcp = spawn(self.cmds.dhcp, log_path=self.state_dir / "kea-dhcp4.log", name="LAN kea-dhcp4")
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
            raise RuntimeError(f"kea-dhcp4 exited: {(self.state_dir / 'kea-dhcp4.log').read_text()[-2000:]}")
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
                                                              self.state_dir / "kea-dhcp4.log") if p.exists())

    def stop(self) -> None:
        self.stop_switch()
        if self.dhcp is not None:
            kill_group(self.dhcp)
            self.dhcp = None
