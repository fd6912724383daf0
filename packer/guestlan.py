#!/usr/bin/env python3
"""The guest LAN's plan: one Ethernet segment for a deployment's VMs (loco-lan, the switch), with
addresses handed out by ISC Kea (kea-dhcp4) through the switch's DHCP relay. The one place that says which MAC
address, IP address and name VM n has, and how QEMU joins the segment; used by ./loco up, the VM
runner (runner/start.sh through packer/qemuargs.py --lan), the tests and the Helm chart (which
renders the same Kea settings; charts/tests check they agree).

    guestlan.mac(3)        -> "52:54:00:4c:00:03"
    guestlan.address(3)    -> "10.98.0.103"
    guestlan.netdev("tcp:loco-lan:9798")  -> QEMU's -netdev value (reconnects by itself)

CLI:
    packer/guestlan.py kea-conf --vms 9 --dhcp-port 1067   # kea-dhcp4's config (JSON)
    packer/guestlan.py mac N | address N | name N

Standard library only.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import sys

SUBNET = ipaddress.IPv4Network("10.98.0.0/24")
LAN_IP = ipaddress.IPv4Address("10.98.0.1")   # the switch's own address (DHCP relay), never a router
FIRST_VM_HOST = 100                            # VM n is 10.98.0.(100+n)
MAX_VMS = 150                                  # .101 ... .250
DYNAMIC = (ipaddress.IPv4Address("10.98.0.20"), ipaddress.IPv4Address("10.98.0.99"))  # other hosts
STATIC_HINT = "10.98.0.2 - 10.98.0.19 and 10.98.0.251 - 10.98.0.254 are never handed out (for static addressing)"
MAC_PREFIX = "52:54:00:4c:"                    # QEMU's OUI, then 4c ("L") and the index
DHCP_PORT = 1067                               # kea-dhcp4's port (-p; unprivileged) on 127.0.0.1
RELAY_ADDR = "127.0.0.2"                       # the relay's giaddr (any port): loopback, so replies stay in the pod
INFINITE = 0xFFFFFFFF                          # DHCP's infinite lease time
RECONNECT_MS = 1000


def _index(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_VMS:
        raise ValueError(f"a VM index is a whole number from 1 to {MAX_VMS}, not {n!r}")
    return n


def mac(n: int) -> str:
    n = _index(n)
    return f"{MAC_PREFIX}{n >> 8:02x}:{n & 0xff:02x}"


def address(n: int) -> str:
    return str(SUBNET.network_address + FIRST_VM_HOST + _index(n))


def name(n: int) -> str:
    return f"vm{_index(n)}"


def parse_endpoint(spec: str) -> tuple[str, str, int | None]:
    """"unix:PATH" -> ("unix", PATH, None); "tcp:HOST:PORT" -> ("tcp", HOST, PORT). ValueError with a
    sentence for anything else."""
    if spec.startswith("unix:") and len(spec) > 5:
        return "unix", spec[5:], None
    if spec.startswith("tcp:"):
        host, sep, port = spec[4:].rpartition(":")
        if sep and host and port.isdigit() and 0 < int(port) < 65536:
            return "tcp", host.strip("[]"), int(port)
    raise ValueError(f"a LAN address is unix:PATH or tcp:HOST:PORT, not {spec!r}")


def netdev(spec: str, netdev_id: str = "lan") -> str:
    """QEMU's -netdev value joining the switch at spec as a client that reconnects by itself (the
    switch may start after the VM, or restart)."""
    kind, where, port = parse_endpoint(spec)
    if "," in where:
        raise ValueError(f"a LAN address may not contain a comma (QEMU's option separator): {spec!r}")
    if kind == "unix":
        addr = f"addr.type=unix,addr.path={where}"
    else:
        addr = f"addr.type=inet,addr.host={where},addr.port={port}"
    return f"stream,id={netdev_id},server=off,{addr},reconnect-ms={RECONNECT_MS}"


def qemu_args(spec: str, n: int, model: str) -> list[str]:
    """-netdev and -device for VM n on the LAN at spec, with the NIC model of its profile."""
    return ["-netdev", netdev(spec), "-device", f"{model},netdev=lan,mac={mac(n)}"]


def qmp_hotplug(spec: str, n: int, model: str) -> list[tuple[str, dict]]:
    """The QMP commands that plug VM n's LAN NIC into a running VM (the same netdev and device as
    qemu_args): for a guest started from a saved state taken without a NIC."""
    kind, where, port = parse_endpoint(spec)
    addr = {"type": "unix", "path": where} if kind == "unix" else {"type": "inet", "host": where, "port": str(port)}
    return [("netdev_add", {"type": "stream", "id": "lan", "server": False, "addr": addr,
                            "reconnect-ms": RECONNECT_MS}),
            ("device_add", {"driver": model, "id": "lan-nic", "netdev": "lan", "mac": mac(n)})]


def kea_conf(vms: int, *, dhcp_port: int = DHCP_PORT, listen_interface: str = "lo") -> str:
    """ISC Kea's (kea-dhcp4) whole configuration, JSON: DHCP on loopback's UDP socket for requests
    the switch relays (the relay asks for replies on its own port, RFC 8357, and names the LAN's
    subnet, RFC 3011, so the server needs no interface on the LAN, no raw socket, no port 67 and
    no capability); VM n's MAC always gets address(n) and the name vmN; leases never expire (no
    renewals to relay, and a VM keeps its address across restarts) and live in memory only."""
    _index(vms)
    if not 0 < dhcp_port < 65536:
        raise ValueError(f"a UDP port is 1-65535, not {dhcp_port!r}")
    reservations = [{"hw-address": mac(n), "ip-address": address(n), "hostname": name(n),
                     "option-data": [{"name": "host-name", "data": name(n), "always-send": True}]}
                    for n in range(1, vms + 1)]
    conf = {"Dhcp4": {
        "interfaces-config": {"interfaces": [listen_interface], "dhcp-socket-type": "udp"},
        "lease-database": {"type": "memfile", "persist": False},
        "valid-lifetime": INFINITE,
        "authoritative": True,
        "subnet4": [{
            "id": 1,
            "subnet": str(SUBNET),
            # Isolated: no routers option (no default route), no DNS servers.
            "pools": [{"pool": f"{DYNAMIC[0]} - {DYNAMIC[1]}"}],
            "reservations": reservations,
        }],
        "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": "stderr"}], "severity": "INFO"}],
    }}
    return json.dumps(conf, indent=2) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="The guest LAN's addresses and DHCP server (kea-dhcp4) configuration.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("kea-conf", help="print kea-dhcp4's configuration (JSON)")
    c.add_argument("--vms", type=int, default=9)
    c.add_argument("--dhcp-port", type=int, default=DHCP_PORT)
    for what in ("mac", "address", "name"):
        s = sub.add_parser(what, help=f"VM n's {what}")
        s.add_argument("n", type=int)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "kea-conf":
            sys.stdout.write(kea_conf(a.vms, dhcp_port=a.dhcp_port))
        else:
            print({"mac": mac, "address": address, "name": name}[a.cmd](a.n))
    except ValueError as e:
        print(f"guestlan: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
