#!/usr/bin/env python3
"""Figures for the guest LAN, from real stand-in guests on loco-lan + kea-dhcp4:

    PYTHONPATH=tools:packer:packer/testpattern ~/.cache/loco/venv/bin/python benchmark/lan_figures.py --vms 9

- ping between two guests (vm1 -> vm2, N pings 0.2 s apart): p50 and p99 round-trip time;
- TCP throughput between two guests (iperf3, vm2 -> vm1);
- UDP broadcast delivery: vm1 sends K datagrams to 10.98.0.255, each other guest counts them;
- loco-lan's CPU time and peak resident memory over the whole run (from /proc).

Boots the VMs cold on throw-away overlays (under TCG nine take a minute or two to their leases)
and prints one block of figures. Not part of ./loco test (packer/standin/test_lan.py checks the
same paths with three guests).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import guestlan  # packer/
from loco_testkit.lan import GuestLan
from loco_testkit.standin import BOOT_TIMEOUT, StandinVM


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS in KiB) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    hwm = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return cpu, int(hwm.group(1)) if hwm else 0


def main() -> int:
    ap = argparse.ArgumentParser(description="Figures for the guest LAN from real stand-in guests.")
    ap.add_argument("--vms", type=int, default=3, help="stand-in VMs on the LAN (2-9, default 3)")
    ap.add_argument("--pings", type=int, default=100)
    ap.add_argument("--broadcasts", type=int, default=50)
    ap.add_argument("--iperf-seconds", type=int, default=10)
    a = ap.parse_args()
    if not 2 <= a.vms <= 9:
        ap.error("--vms must be 2 to 9")
    work = Path(tempfile.mkdtemp(prefix="loco-lan-fig-"))
    lan = GuestLan(work / "lan", vms=a.vms).start()
    vms: dict[int, StandinVM] = {}
    t0 = time.monotonic()
    try:
        vms = {n: StandinVM(f"vm{n}", lan=lan.spec, lan_index=n).start() for n in range(1, a.vms + 1)}
        for n, vm in vms.items():
            vm.console.wait_for(rf"lan up \S+ {re.escape(guestlan.address(n))}/", BOOT_TIMEOUT * 2, alive=vm.alive)
        boot = time.monotonic() - t0
        vm1, vm2 = vms[1], vms[2]
        out = vm1.console.run(f"ping -n -c {a.pings} -i 0.2 -W 2 {guestlan.address(2)}", timeout=a.pings * 0.6 + 60)
        rtts = sorted(float(x) for x in re.findall(r"time=([\d.]+) ms", out))
        p50 = statistics.median(rtts)
        p99 = rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]

        vm1.console.background("iperf3 -s -1")
        time.sleep(1)
        out = vm2.console.run(f"iperf3 -c {guestlan.address(1)} -t {a.iperf_seconds} -f m",
                              timeout=a.iperf_seconds + 60)
        m = re.findall(r"([\d.]+) Mbits/sec.*receiver", out)
        tcp = float(m[-1]) if m else float("nan")

        port = 9100
        for n in range(2, a.vms + 1):
            vms[n].console.background(f"socat -u UDP-RECV:{port},reuseaddr OPEN:/tmp/bc,creat,append")
        time.sleep(2)
        vm1.console.run(f"for i in $(seq {a.broadcasts}); do echo b$i | socat -u - "
                        f"UDP-DATAGRAM:10.98.0.255:{port},broadcast; sleep 0.05; done", timeout=a.broadcasts + 60)
        time.sleep(3)
        got = {n: int(vms[n].console.run("wc -l < /tmp/bc") or 0) for n in range(2, a.vms + 1)}
        cpu, hwm = proc_stats(lan.switch.pid)
        wall = time.monotonic() - t0
        accel = vm1.accel.upper()
    finally:
        for vm in vms.values():
            vm.stop()
        lan.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"guest LAN figures: {a.vms} stand-in VMs under {accel} on {os.cpu_count()} CPUs "
          f"(cold boot to every lease: {boot:.0f} s)")
    print(f"  ping vm1 -> vm2 ({len(rtts)} replies of {a.pings}): p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    print(f"  TCP vm2 -> vm1 (iperf3, {a.iperf_seconds} s): {tcp:.1f} Mbit/s")
    print(f"  broadcast: {a.broadcasts} sent by vm1; received " + ", ".join(f"vm{n} {c}" for n, c in got.items()))
    print(f"  loco-lan: {cpu:.2f} s CPU over {wall:.0f} s, peak RSS {hwm / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
