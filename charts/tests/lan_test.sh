#!/usr/bin/env bash
# The guest LAN for real, as the chart runs it: loco-lan and ISC Kea (kea-dhcp4) with the commands,
# arguments, environment and configuration of the rendered `<release>-lan` Deployment and
# ConfigMap (only the addresses, ports and mount paths made local: 0.0.0.0 -> 127.0.0.1, free
# ports, each volume of the dhcp container a directory of its own under $TMPDIR (WORKDIR may not be
# open to the pod's user); the ConfigMap's kea-dhcp4.json
# is used as it is), each as its container runs: the pod's UID/GID (runAsUser/runAsGroup, 10001),
# no capability at all, no_new_privs. Then:
#   1. a DHCPDISCOVER from VM 2's MAC, sent over the switch's stream protocol as QEMU would,
#      comes back as an offer of 10.98.0.102 named vm2 (option 12), relayed through Kea;
#   2. runner/start.sh with LOCO_LAN=tcp:127.0.0.1:PORT joins the switch (loco_lan_ports 1), with
#      VM_INDEX, and again with the index taken from HOSTNAME (a StatefulSet pod name);
#   3. loco-lan stopped and started again: QEMU reconnects by itself (loco_lan_ports 1 within 10 s);
#   4. start.sh refuses LOCO_LAN with VM_NIC=user, and LOCO_LAN without any index.
# The guest is an empty 64 MiB disk (no OS): QEMU sends no frames, which is fine for these checks.
# Without root the pod's user cannot be taken: loco-lan and Kea run as the current user (neither
# needs a capability), and only their UIDs go unchecked (said so).
# Usage: lan_test.sh LOCO_LAN_BIN RENDERED_CHART_YAML PYTHON_WITH_PYYAML WORKDIR
set -euo pipefail
LAN_BIN=$1 RENDERED=$2 PY=$3 W=$4
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mkdir -p "$W/images" "$W/overlay" "$W/run" "$W/tmp"
# The dhcp container's volumes: a directory every user may enter (mktemp's 0700 made 0755).
M=$(mktemp -d "${TMPDIR:-/tmp}/loco-lan-volumes.XXXXXX")
chmod 0755 "$M"
qemu-img create -q -f qcow2 "$W/images/base.qcow2" 64M
free_tcp() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
free_udp() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
lan_port=$(free_tcp) metrics_port=$(free_tcp) dhcp_port=$(free_udp)
name=loco-lantest-$$
lan_pid=0 kea_pid=0 runner=0
fin() {
  [ "$runner" = 0 ] || kill -KILL "$runner" 2>/dev/null || true
  pkill -KILL -f -- "-name ${name}[ -]" 2>/dev/null || true
  [ "$lan_pid" = 0 ] || kill "$lan_pid" 2>/dev/null || true
  [ "$kea_pid" = 0 ] || kill "$kea_pid" 2>/dev/null || true
  rm -rf "$M"
}
trap fin EXIT

# The chart's two containers: loco-lan's args (one per line); Kea's command line and environment
# with its volumes made local ($M/<volume>: the ConfigMap's items written out, an emptyDir
# empty) and the chart's -p port swapped for a free one; the pod's UID and GID. Checks both
# containers have the chart's strict context.
"$PY" - "$RENDERED" "$W" "$M" "$dhcp_port" <<'EOF'
import os, sys, yaml
rendered, W, M, port = sys.argv[1:]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-lan"))
spec = dep["spec"]["template"]["spec"]
cs = {c["name"]: c for c in spec["containers"]}
lan, dhcp = cs["lan"], cs["dhcp"]
assert lan["command"] == ["loco-lan"] and dhcp["command"] == ["kea-dhcp4"], (lan["command"], dhcp["command"])
for c in (lan, dhcp):
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["allowPrivilegeEscalation"] is False, (c["name"], sc)
    assert sc["readOnlyRootFilesystem"] is True and "runAsUser" not in sc, (c["name"], sc)
psc = spec["securityContext"]
assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0, psc
open(f"{W}/pod.ids", "w").write(f"{psc['runAsUser']}\n{psc['runAsGroup']}\n")
open(f"{W}/lan.args", "w").write("\n".join(lan["args"]) + "\n")
vols = {v["name"]: v for v in spec["volumes"]}
cms = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
local = {}
for m in dhcp["volumeMounts"]:
    d = f"{M}/{m['name']}"
    os.makedirs(d)
    v = vols[m["name"]]
    if "configMap" in v:
        data = cms[v["configMap"]["name"]]["data"]
        for item in v["configMap"]["items"]:
            open(f"{d}/{item['path']}", "w").write(data[item["key"]])
        os.chmod(d, 0o755)
    else:
        assert "emptyDir" in v, v
        os.chmod(d, 0o777)  # an emptyDir is world-writable, as the kubelet makes it
    local[m["mountPath"]] = d
def localize(s):
    for path, d in local.items():
        if s == path or s.startswith(path + "/"):
            return d + s[len(path):]
    return s
args = [localize(a) for a in dhcp["args"]]
i = args.index("-p")
assert args[i + 1] == "1067", args
args[i + 1] = port
assert any(a.startswith(f"{M}/") for a in args), "Kea's configuration is not a volume"
env = [f"{e['name']}={localize(e['value'])}" for e in dhcp["env"]]
assert sorted(e.split("=")[0] for e in env) == ["KEA_LOCKFILE_DIR", "KEA_PIDFILE_DIR"], env
assert all(e.split("=", 1)[1].startswith(f"{M}/") for e in env), "Kea's directories are not volumes"
open(f"{W}/dhcp.args", "w").write("\n".join(dhcp["command"] + args) + "\n")
open(f"{W}/dhcp.env", "w").write("\n".join(env) + "\n")
EOF
# Local addresses and ports instead of the pod's.
sed -e "s|0\.0\.0\.0:9798|127.0.0.1:$lan_port|; s|0\.0\.0\.0:9799|127.0.0.1:$metrics_port|; s|^127\.0\.0\.1:1067\$|127.0.0.1:$dhcp_port|" \
  "$W/lan.args" >"$W/lan.args.local"
if [ "$(diff "$W/lan.args" "$W/lan.args.local" | grep -c '^>')" != 3 ]; then
  echo "the chart's addresses or ports were not found to make local (did they change?)"; exit 1
fi
mapfile -t lan_args <"$W/lan.args.local"
mapfile -t dhcp_cmd <"$W/dhcp.args"
mapfile -t dhcp_env <"$W/dhcp.env"
mapfile -t ids <"$W/pod.ids"
echo "loco-lan ${lan_args[*]}"
echo "${dhcp_env[*]} ${dhcp_cmd[*]}"

as_root=0
[ "$(id -u)" != 0 ] || as_root=1
as_pod() { # as_pod CMD... &: as root, as the pod's UID/GID with no capability and no_new_privs
  # (exec: the background job's pid, $!, is then CMD's own).
  if [ $as_root = 1 ]; then
    exec setpriv --reuid="${ids[0]}" --regid="${ids[1]}" --clear-groups --no-new-privs --inh-caps=-all --bounding-set=-all "$@"
  else
    exec "$@"
  fi
}
start_lan() {
  as_pod "$LAN_BIN" "${lan_args[@]}" >>"$W/lan.log" 2>&1 &
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
want_status() { # want_status WHAT PID: the pod's UID (as root) and no capability at all
  local st none="CapInh: 0000000000000000 CapPrm: 0000000000000000 CapEff: 0000000000000000 "
  st=$(status_of "$2" "Uid|CapInh|CapPrm|CapEff")
  if [ $as_root = 1 ]; then
    [ "$st" = "Uid: ${ids[0]} $none" ] || { echo "$1 runs with '$st', want UID ${ids[0]} and no capability"; return 1; }
    echo "$1: UID ${ids[0]}, no capability"
  else
    [ "$st" = "Uid: $(id -u) $none" ] || { echo "$1 runs with '$st', want no capability"; return 1; }
    echo "$1: not root, so as UID $(id -u) (the pod's ${ids[0]} unchecked), no capability"
  fi
}

# The dhcp container: kea-dhcp4 with the chart's environment only (and a PATH, as the image has).
as_pod env -i PATH="$PATH" "${dhcp_env[@]}" "${dhcp_cmd[@]}" >"$W/kea.log" 2>&1 &
kea_pid=$!
for _ in $(seq 100); do
  grep -q DHCP4_STARTED "$W/kea.log" && break
  kill -0 "$kea_pid" 2>/dev/null || break
  sleep 0.1
done
if ! kill -0 "$kea_pid" 2>/dev/null || ! grep -q DHCP4_STARTED "$W/kea.log"; then
  cat "$W/kea.log"; echo "kea-dhcp4 did not start"; exit 1
fi
want_status kea-dhcp4 "$kea_pid"
start_lan
wait_metric loco_lan_ports 0 10 || { cat "$W/lan.log"; exit 1; }
want_status loco-lan "$lan_pid"

# 1. DHCP through the switch, as a guest would: VM 2's DHCPDISCOVER, framed as QEMU's
#    -netdev stream sends it (4-byte big-endian length, then the Ethernet frame).
python3 - "$lan_port" <<'EOF' || { cat "$W/lan.log" "$W/kea.log"; exit 1; }
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
grep -q "DHCP4_LEASE_ADVERT .*52:54:00:4c:00:02.*lease 10.98.0.102 will be advertised" "$W/kea.log" ||
  { cat "$W/kea.log"; echo "kea-dhcp4 logged no offer of 10.98.0.102 to VM 2"; exit 1; }
# In its volumes Kea wrote nothing but its pid file and logger lock file (to the emptyDir).
for f in "$M"/*/*; do
  case ${f#"$M/"} in
    kea-conf/kea-dhcp4.json | kea-run/kea-dhcp4.kea-dhcp4.pid | kea-run/logger_lockfile) ;;
    *) echo "unexpected file $f"; exit 1 ;;
  esac
done
wait_metric loco_lan_ports 0 5

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
