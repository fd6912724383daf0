"""The guest LAN, for real: three stand-in VMs (QEMU, the ne2k_pci NIC the win98 profile has too)
on the loco-lan switch, with the LAN's kea-dhcp4 behind the switch's DHCP relay.

    ~/.cache/loco/venv/bin/python -m pytest -q packer/standin/test_lan.py

Needs the built stand-in image (packer/standin/build.sh), loco-lan (./loco build) and kea-dhcp4.
Everything runs on throw-away overlays; commands run in the guests over their serial consoles
(user loco; the guest's boot script takes the DHCP lease as root).

What is checked:
- each VM gets its address and name by DHCP, by its number (packer/guestlan.py);
- ping and a TCP connection between two guests;
- a UDP broadcast from one guest reaches every other;
- the LAN is isolated: no default route in a guest, neither the host nor the switch's own
  address answers;
- frames that are too short, too long or from a group address, and a connection that sends a
  length no QEMU sends, are dropped or closed without stopping the LAN for the others;
- a VM killed and started again gets the same address and traffic flows again;
- the switch restarted: QEMU reconnects by itself and the guests talk again.
"""
from __future__ import annotations

import re
import shutil
import socket
import statistics
import subprocess
import struct
import tempfile
import time
from pathlib import Path

import pytest

import guestlan  # packer/
from loco_testkit.lan import GuestLan
from loco_testkit.paths import lan_binary
from loco_testkit.standin import BOOT_TIMEOUT, StandinVM, missing_files
from loco_testkit.waits import wait_until

HERE = Path(__file__).resolve().parent
N = 3


def lan_up_line(n: int) -> str:
    return rf"loco-standin: lan up (\S+) {re.escape(guestlan.address(n))}/24 {guestlan.name(n)}"


@pytest.fixture(scope="module")
def lan():
    missing = missing_files()
    if missing:
        pytest.fail(f"the stand-in image is not built ({', '.join(map(str, missing))} missing): "
                    f"sudo {HERE / 'build.sh'}", pytrace=False)
    for tool in ("qemu-system-x86_64", "kea-dhcp4"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed", pytrace=False)
    work = Path(tempfile.mkdtemp(prefix="loco-lan-test-"))
    lan = GuestLan(work / "lan", vms=N).start()
    yield lan
    lan.stop()
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def vms(lan):
    vms = {n: StandinVM(f"vm{n}", lan=lan.spec, lan_index=n).start() for n in range(1, N + 1)}
    try:
        for n, vm in vms.items():
            vm.console.wait_for(lan_up_line(n), BOOT_TIMEOUT, alive=vm.alive)
        yield vms
    finally:
        for vm in vms.values():
            vm.stop()


def ping(vm: StandinVM, n: int, count: int = 5) -> list[float]:
    out = vm.console.run(f"ping -n -c {count} -i 0.2 -W 2 {guestlan.address(n)}", timeout=30)
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
    assert rtts, f"no answer from {guestlan.address(n)}:\n{out}"
    return rtts


def test_each_vm_gets_its_address_and_name_by_dhcp(lan, vms):
    for n, vm in vms.items():
        assert vm.console.run("hostname") == guestlan.name(n)
        dev = re.search(lan_up_line(n), vm.console.text()).group(1)
        out = vm.console.run(f"ip -4 -o addr show dev {dev}")
        assert f"inet {guestlan.address(n)}/24" in out, out
        mac = vm.console.run(f"cat /sys/class/net/{dev}/address")
        assert mac == guestlan.mac(n)
    m = lan.metrics()
    assert m.get("loco_lan_ports") == N
    assert m.get("loco_lan_dhcp_relayed_total", direction="to_server") >= 2 * N  # DISCOVER + REQUEST each
    assert m.get("loco_lan_dhcp_relayed_total", direction="to_client") >= 2 * N
    assert m.get("loco_lan_mac_table_entries") >= N


def test_ping_and_tcp_between_guests(vms):
    rtts = ping(vms[1], 2, count=10)
    print(f"\nping vm1 -> vm2 under TCG: p50 {statistics.median(rtts):.2f} ms, max {max(rtts):.2f} ms")
    vms[2].console.background("socat -u TCP-LISTEN:7000,reuseaddr OPEN:/tmp/tcp-got,creat,trunc")
    wait_until(lambda: "7000" in vms[2].console.run("ss -Htln"), 10, what="vm2 listening on 7000")
    vms[1].console.run(f"echo hello-over-the-lan | socat -u - TCP:{guestlan.address(2)}:7000")
    wait_until(lambda: vms[2].console.run("cat /tmp/tcp-got") == "hello-over-the-lan", 10, what="vm2 got the line")


def test_a_broadcast_reaches_every_other_guest(lan, vms):
    # To the subnet's broadcast address. (The all-ones broadcast travels the LAN too: every
    # DHCPDISCOVER above was one. A Linux guest without a default route will not send to
    # 255.255.255.255 from an application, which is its routing, not the LAN's.)
    port, dest = 9000, "10.98.0.255"
    for n in (2, 3):
        vms[n].console.background(f"socat -u UDP-RECV:{port},reuseaddr OPEN:/tmp/bc-{port},creat,append")
    for n in (2, 3):
        wait_until(lambda: str(port) in vms[n].console.run("ss -Hulnp"), 10, what=f"vm{n} listening")
    flooded = lan.metric("loco_lan_frames_total", kind="flood")
    vms[1].console.run(f"echo bc-from-vm1 | socat -u - UDP-DATAGRAM:{dest}:{port},broadcast")
    for n in (2, 3):
        wait_until(lambda: "bc-from-vm1" in vms[n].console.run(f"cat /tmp/bc-{port}"), 10,
                   what=f"vm{n} received the broadcast to {dest}")
    assert lan.metric("loco_lan_frames_total", kind="flood") > flooded


def test_the_lan_is_isolated(vms):
    vm = vms[1]
    assert "default" not in vm.console.run("ip route"), "an isolated LAN gives no default route"
    # The host's own addresses (not loopback, which in a guest is the guest itself), QEMU's
    # user-mode gateway, and the switch's LAN address (it answers DHCP only, never routes).
    host = re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", subprocess.run(
        ["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout)
    targets = [a for a in host if not a.startswith("127.")] + ["10.0.2.2", str(guestlan.LAN_IP)]
    for target in targets:
        out = vm.console.run(f"ping -n -c 1 -W 2 {target} >/dev/null 2>&1 && echo REACHED || echo unreachable")
        assert out == "unreachable", f"a guest reached {target}"


def send_raw(lan, chunks: list[bytes]) -> None:
    path = lan.spec.removeprefix("unix:")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        for c in chunks:
            s.sendall(c)
        time.sleep(0.5)


def test_bad_frames_do_not_stop_the_lan(lan, vms):
    before = lan.metrics()
    eth = bytes.fromhex("ffffffffffff" "020000000099" "0806")
    runt = b"\x01\x02\x03"
    oversized = eth + bytes(2000)
    group_src = bytes.fromhex("ffffffffffff" "010000000001" "0806") + bytes(46)
    send_raw(lan, [struct.pack(">I", len(f)) + f for f in (runt, oversized, group_src)]
             + [struct.pack(">I", 0x7FFFFFFF) + b"junk"])
    after = lan.metrics()
    for reason in ("runt", "oversized", "multicast_source"):
        assert after.get("loco_lan_dropped_total", reason=reason) > before.get("loco_lan_dropped_total", reason=reason)
    assert after.get("loco_lan_ports_closed_total", reason="bad_length") == \
        before.get("loco_lan_ports_closed_total", reason="bad_length") + 1
    assert after.get("loco_lan_ports") == N
    ping(vms[1], 3, count=2)


def test_a_restarted_vm_gets_the_same_address(lan, vms):
    vms[3].stop()
    wait_until(lambda: lan.metric("loco_lan_ports") == N - 1, 15, what="the switch saw vm3 leave")
    vms[3] = StandinVM("vm3", lan=lan.spec, lan_index=3).start()
    vms[3].console.wait_for(lan_up_line(3), BOOT_TIMEOUT, alive=vms[3].alive)
    ping(vms[1], 3, count=2)
    ping(vms[3], 2, count=2)


def test_the_vms_rejoin_a_restarted_switch(lan, vms):
    lan.stop_switch()
    lan.start_switch()
    wait_until(lambda: lan.metric("loco_lan_ports") == N, 20, what="every VM reconnected")
    ping(vms[2], 1, count=2)


@pytest.mark.parametrize("args, says", [
    (["--listen", "foo"], "--listen takes tcp:HOST:PORT or unix:PATH"),
    (["--listen", "tcp:127.0.0.1:0", "--max-ports", "0"], "must be at least 1"),
    (["--listen", "tcp:127.0.0.1:0", "--dhcp-server", "nowhere"], "invalid value 'nowhere'"),
])
def test_loco_lan_refuses_bad_arguments_with_a_sentence(args, says):
    r = subprocess.run([str(lan_binary()), *args], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("loco-lan: ") and says in r.stderr, r.stderr
