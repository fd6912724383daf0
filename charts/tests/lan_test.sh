#!/usr/bin/env bash
# The guest LAN for real, as the chart runs it: loco-lan and dnsmasq with the arguments and the
# dnsmasq.conf of the rendered `<release>-lan` Deployment and ConfigMap (only the addresses, ports
# and paths made local: 0.0.0.0 -> 127.0.0.1, free ports, the state dir and config file in WORKDIR),
# each with the user and capabilities its container has: loco-lan as UID 10001 with no capability,
# dnsmasq started as root with only NET_ADMIN, SETUID and SETGID (no_new_privs), which must end up
# running as nobody with NET_ADMIN alone. Then:
#   1. a DHCPDISCOVER from VM 2's MAC, sent over the switch's stream protocol as QEMU would,
#      comes back as an offer of 10.98.0.102 named vm2 (relayed through dnsmasq);
#   2. runner/start.sh with LOCO_LAN=tcp:127.0.0.1:PORT joins the switch (loco_lan_ports 1), with
#      VM_INDEX, and again with the index taken from HOSTNAME (a StatefulSet pod name);
#   3. loco-lan stopped and started again: QEMU reconnects by itself (loco_lan_ports 1 within 10 s);
#   4. start.sh refuses LOCO_LAN with VM_NIC=user, and LOCO_LAN without any index.
# The guest is an empty 64 MiB disk (no OS): QEMU sends no frames, which is fine for these checks.
# Without root the users and capabilities cannot be set up: dnsmasq and step 1 are skipped (said so),
# loco-lan runs as the current user.
# Usage: lan_test.sh LOCO_LAN_BIN RENDERED_CHART_YAML PYTHON_WITH_PYYAML WORKDIR
set -euo pipefail
LAN_BIN=$1 RENDERED=$2 PY=$3 W=$4
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mkdir -p "$W/images" "$W/overlay" "$W/run" "$W/tmp" "$W/state"
qemu-img create -q -f qcow2 "$W/images/base.qcow2" 64M
free_tcp() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
free_udp() { # a UDP port free on 127.0.0.1 and 127.0.0.2 (dnsmasq's and the relay's)
  python3 -c 'import socket
for _ in range(50):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    try:
        t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); t.bind(("127.0.0.2", p)); print(p); break
    except OSError:
        pass'
}
lan_port=$(free_tcp) metrics_port=$(free_tcp) dhcp_port=$(free_udp)
name=loco-lantest-$$
lan_pid=0 dnsmasq_pid=0 runner=0
fin() {
  [ "$runner" = 0 ] || kill -KILL "$runner" 2>/dev/null || true
  pkill -KILL -f -- "-name ${name}[ -]" 2>/dev/null || true
  [ "$lan_pid" = 0 ] || kill "$lan_pid" 2>/dev/null || true
  [ "$dnsmasq_pid" = 0 ] || kill "$dnsmasq_pid" 2>/dev/null || true
}
trap fin EXIT

# The chart's two containers: their args (one per line) and the ConfigMap's dnsmasq.conf.
"$PY" - "$RENDERED" "$W" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-lan"))
cs = {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}
assert cs["lan"]["command"] == ["loco-lan"] and cs["dhcp"]["command"] == ["dnsmasq"], (cs["lan"]["command"], cs["dhcp"]["command"])
for n in ("lan", "dhcp"):
    open(f"{sys.argv[2]}/{n}.args", "w").write("\n".join(cs[n]["args"]) + "\n")
cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == dep["metadata"]["name"])
open(f"{sys.argv[2]}/dnsmasq.conf.chart", "w").write(cm["data"]["dnsmasq.conf"])
EOF
# Local addresses, ports and paths instead of the pod's.
sed -e "s|0\.0\.0\.0:9798|127.0.0.1:$lan_port|; s|0\.0\.0\.0:9799|127.0.0.1:$metrics_port|; s|:1067\$|:$dhcp_port|" "$W/lan.args" >"$W/lan.args.local"
sed -e "s|^--conf-file=/etc/loco-lan/dnsmasq.conf\$|--conf-file=$W/dnsmasq.conf|" "$W/dhcp.args" >"$W/dhcp.args.local"
sed -e "s|/run/dnsmasq/|$W/state/|; s|^dhcp-alternate-port=1067,1068\$|dhcp-alternate-port=$dhcp_port,$((dhcp_port + 1))|" \
  "$W/dnsmasq.conf.chart" >"$W/dnsmasq.conf"
if cmp -s "$W/lan.args" "$W/lan.args.local" || cmp -s "$W/dhcp.args" "$W/dhcp.args.local" ||
  cmp -s "$W/dnsmasq.conf.chart" "$W/dnsmasq.conf"; then
  echo "the chart's addresses, ports or paths were not found to make local (did they change?)"; exit 1
fi
mapfile -t lan_args <"$W/lan.args.local"
mapfile -t dhcp_args <"$W/dhcp.args.local"
echo "loco-lan ${lan_args[*]}"
echo "dnsmasq ${dhcp_args[*]}"

as_root=0
[ "$(id -u)" != 0 ] || as_root=1
start_lan() {
  if [ $as_root = 1 ]; then # the lan container: UID/GID 10001, no capability, no_new_privs
    setpriv --reuid=10001 --regid=10001 --clear-groups --no-new-privs --inh-caps=-all --bounding-set=-all \
      "$LAN_BIN" "${lan_args[@]}" >>"$W/lan.log" 2>&1 &
  else
    "$LAN_BIN" "${lan_args[@]}" >>"$W/lan.log" 2>&1 &
  fi
  lan_pid=$!
}
metric() { # metric NAME: its value from loco-lan's /metrics ("" when unreachable)
  curl -sf "http://127.0.0.1:$metrics_port/metrics" 2>/dev/null | awk -v m="$1" '$1 == m {print $2}'
}
wait_metric() { # wait_metric NAME VALUE SECONDS
  local v=
  for _ in $(seq $(($3 * 5))); do
    v=$(metric "$1")
    [ "$v" = "$2" ] && return 0
    sleep 0.2
  done
  echo "$1 is '$v' after $3 s, want $2"
  return 1
}
status_of() { grep -E "^($2):" "/proc/$1/status" | awk '{print $1, $2}' | tr '\n' ' '; }

if [ $as_root = 1 ]; then
  # The dhcp container: root with NET_ADMIN, SETUID and SETGID only (its securityContext), no_new_privs.
  grep -qx -- "--user=nobody" "$W/dhcp.args" || { echo "the chart's dnsmasq does not drop to nobody"; exit 1; }
  setpriv --no-new-privs --inh-caps=-all --bounding-set=-all,+net_admin,+setuid,+setgid \
    dnsmasq "${dhcp_args[@]}" >"$W/dnsmasq.log" 2>&1 &
  dnsmasq_pid=$!
  for _ in $(seq 50); do grep -q "DHCP, IP range" "$W/dnsmasq.log" && break; sleep 0.1; done
  kill -0 "$dnsmasq_pid" 2>/dev/null || { cat "$W/dnsmasq.log"; echo "dnsmasq did not start"; exit 1; }
  st=$(status_of "$dnsmasq_pid" "Uid|CapEff|CapPrm")
  [ "$st" = "Uid: 65534 CapPrm: 0000000000001000 CapEff: 0000000000001000 " ] ||
    { echo "dnsmasq runs with '$st', want nobody (65534) with NET_ADMIN (0x1000) alone"; exit 1; }
  echo "dnsmasq: running as nobody with NET_ADMIN alone ($st)"
else
  echo "not root: dnsmasq (it must start as root to hold NET_ADMIN) and the DHCP exchange are skipped"
fi
start_lan
wait_metric loco_lan_ports 0 10 || { cat "$W/lan.log"; exit 1; }
if [ $as_root = 1 ]; then
  st=$(status_of "$lan_pid" "Uid|CapEff")
  [ "$st" = "Uid: 10001 CapEff: 0000000000000000 " ] || { echo "loco-lan runs with '$st'"; exit 1; }
  echo "loco-lan: UID 10001, no capability"

  # 1. DHCP through the switch, as a guest would: VM 2's DHCPDISCOVER, framed as QEMU's
  #    -netdev stream sends it (4-byte big-endian length, then the Ethernet frame).
  python3 - "$lan_port" <<'EOF' || { cat "$W/lan.log" "$W/dnsmasq.log"; exit 1; }
import socket, struct, sys, time
mac = bytes.fromhex("5254004c0002")
def csum(b):
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0x10c0ffee, 0, 0x8000, bytes(4), bytes(4), bytes(4), bytes(4),
                    mac + bytes(10), b"", b"") + b"\x63\x82\x53\x63" + bytes([53, 1, 1, 55, 3, 1, 3, 12, 255])
udp = struct.pack("!HHHH", 68, 67, 8 + len(bootp), 0) + bootp
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes(4), b"\xff" * 4)
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
frame = b"\xff" * 6 + mac + b"\x08\x00" + ip + udp
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(struct.pack("!I", len(frame)) + frame)
def read(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise SystemExit("the switch closed the connection")
        b += c
    return b
deadline = time.time() + 10
while time.time() < deadline:
    f = read(struct.unpack("!I", read(4))[0])
    if f[12:14] != b"\x08\x00" or f[23] != 17:
        continue
    ihl = (f[14] & 15) * 4
    u = f[14 + ihl:]
    b = u[8:]
    if struct.unpack("!H", u[2:4])[0] != 68 or b[0] != 2 or b[4:8] != struct.pack("!I", 0x10c0ffee):
        continue
    opts, i = {}, 240
    while i < len(b) and b[i] != 255:
        if b[i] == 0:
            i += 1; continue
        opts[b[i]] = b[i + 2:i + 2 + b[i + 1]]; i += 2 + b[i + 1]
    yiaddr = socket.inet_ntoa(b[16:20])
    print(f"DHCP offer for VM 2 through the switch: {yiaddr}, name {opts.get(12)}, type {opts.get(53)}")
    assert opts.get(53) == b"\x02", opts.get(53)
    assert yiaddr == "10.98.0.102" and opts.get(12) == b"vm2", (yiaddr, opts.get(12))
    assert socket.inet_ntoa(opts[1]) == "255.255.255.0" and 3 not in opts, "a netmask, and no router"
    break
else:
    raise SystemExit("no DHCP offer within 10 s")
EOF
  [ "$(metric 'loco_lan_dhcp_relayed_total{direction="to_client"}')" -ge 1 ] || { echo "no relayed reply counted"; exit 1; }
  grep -q "DHCPOFFER.* 10.98.0.102 52:54:00:4c:00:02" "$W/dnsmasq.log" || { cat "$W/dnsmasq.log"; echo "dnsmasq logged no offer"; exit 1; }
  wait_metric loco_lan_ports 0 5
fi

# 2. start.sh joins the LAN: with VM_INDEX, then (below) with the index from HOSTNAME.
run_vm() { # run_vm LOG ENV...: start.sh in the background with these extra variables
  local log=$1
  shift
  env BASE_IMAGE="$W/images/base.qcow2" OVERLAY_DIR="$W/overlay" VNC_SOCKET="$W/run/vnc.sock" \
    QMP_SOCKET="$W/tmp/qmp.sock" VM_MEMORY_MB=64 POWERDOWN_GRACE_S=2 KILL_GRACE_S=2 VM_NAME="$name" \
    LOCO_LAN="tcp:127.0.0.1:$lan_port" "$@" bash "$ROOT/runner/start.sh" >"$log" 2>&1 &
  runner=$!
}
stop_vm() { # stop_vm LOG: SIGTERM, want exit 0 and no QEMU left
  local status=0
  kill -TERM "$runner"
  wait "$runner" || status=$?
  runner=0
  [ "$status" = 0 ] || { cat "$1"; echo "start.sh exited $status, want 0"; return 1; }
  if pgrep -f -- "-name $name " >/dev/null; then echo "QEMU left running"; return 1; fi
}
run_vm "$W/runner-lan.log" VM_INDEX=3
wait_metric loco_lan_ports 1 10 || { cat "$W/runner-lan.log" "$W/lan.log"; exit 1; }
grep -q -- "-netdev stream,id=lan,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port=$lan_port,reconnect-ms=1000 -device ne2k_pci,netdev=lan,mac=52:54:00:4c:00:03" \
  "$W/runner-lan.log" || { cat "$W/runner-lan.log"; echo "not VM 3's -netdev/-device"; exit 1; }
if grep -q -- "-nic" "$W/runner-lan.log"; then cat "$W/runner-lan.log"; echo "a -nic beside the LAN's NIC"; exit 1; fi
echo "start.sh with LOCO_LAN and VM_INDEX=3: joined the switch as 52:54:00:4c:00:03 (loco_lan_ports 1)"

# 3. The switch goes away and comes back: QEMU reconnects by itself.
kill -TERM "$lan_pid"
wait "$lan_pid" 2>/dev/null || true
lan_pid=0
sleep 2
pgrep -f -- "-name $name " >/dev/null || { cat "$W/runner-lan.log"; echo "QEMU exited when the switch went away"; exit 1; }
start_lan
SECONDS=0
wait_metric loco_lan_ports 1 10 || { cat "$W/runner-lan.log" "$W/lan.log"; exit 1; }
echo "loco-lan restarted: QEMU reconnected by itself after ${SECONDS}s"
stop_vm "$W/runner-lan.log"
wait_metric loco_lan_ports 0 10

rm -f "$W/overlay/overlay.qcow2"
run_vm "$W/runner-lan-hostname.log" HOSTNAME=t-loco-vm-4 VM_INDEX=
wait_metric loco_lan_ports 1 10 || { cat "$W/runner-lan-hostname.log"; exit 1; }
if ! grep -q "guest LAN: tcp:127.0.0.1:$lan_port as VM 5" "$W/runner-lan-hostname.log" ||
  ! grep -q -- "mac=52:54:00:4c:00:05" "$W/runner-lan-hostname.log"; then
  cat "$W/runner-lan-hostname.log"; echo "HOSTNAME t-loco-vm-4 did not give VM 5"; exit 1
fi
echo "HOSTNAME=t-loco-vm-4 (StatefulSet ordinal 4): VM 5, 52:54:00:4c:00:05"
stop_vm "$W/runner-lan-hostname.log"

# 4. What start.sh refuses.
expect_refusal() { # expect_refusal MESSAGE ENV...
  local want=$1 out
  shift
  if out=$(env BASE_IMAGE="$W/images/base.qcow2" LOCO_LAN="tcp:127.0.0.1:$lan_port" "$@" bash "$ROOT/runner/start.sh" 2>&1); then
    echo "start.sh accepted $*"; return 1
  fi
  grep -qF -- "$want" <<<"$out" || { echo "start.sh $*: want '$want', got: $out"; return 1; }
}
expect_refusal "LOCO_LAN and VM_NIC=user,model=ne2k_pci are both set" VM_NIC=user,model=ne2k_pci VM_INDEX=1
expect_refusal "HOSTNAME 'loco' does not end in -N" HOSTNAME=loco VM_INDEX=
expect_refusal "VM_INDEX must be a whole number from 1 to 150 (got '151')" VM_INDEX=151
expect_refusal "LOCO_LAN must be unix:PATH or tcp:HOST:PORT" LOCO_LAN=127.0.0.1:9798 VM_INDEX=1
echo "start.sh refuses LOCO_LAN with a VM_NIC, without an index, with index 151, and a bad LOCO_LAN"
echo "guest LAN test passed"
