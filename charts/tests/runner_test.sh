#!/usr/bin/env bash
# runner/start.sh for real: a 64 MiB qcow2 base image (no OS: SeaBIOS's screen is the desktop),
# the VNC server on a Unix socket, loco-agent reading it through `--vnc unix:PATH` as in the
# pod, then SIGTERM. Usage: runner_test.sh AGENT_BIN WORKDIR
set -euo pipefail
AGENT=$1 W=$2
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mkdir -p "$W/images" "$W/overlay" "$W/run" "$W/tmp"
qemu-img create -q -f qcow2 "$W/images/base.qcow2" 64M
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
runner=0 agent=0
name=loco-test-$$
fin() { # on an early failure: stop whatever this test started, QEMU included
  [ "$agent" = 0 ] || kill "$agent" 2>/dev/null || true
  [ "$runner" = 0 ] || kill -KILL "$runner" 2>/dev/null || true
  pkill -KILL -f -- "-name $name " 2>/dev/null || true
}
trap fin EXIT
BASE_IMAGE=$W/images/base.qcow2 OVERLAY_DIR=$W/overlay VNC_SOCKET=$W/run/vnc.sock QMP_SOCKET=$W/tmp/qmp.sock \
  VM_MEMORY_MB=64 POWERDOWN_GRACE_S=2 KILL_GRACE_S=2 VM_NAME=$name \
  bash "$ROOT/runner/start.sh" >"$W/runner.log" 2>&1 &
runner=$!
for _ in $(seq 50); do [ -S "$W/run/vnc.sock" ] && break; sleep 0.1; done
[ -S "$W/run/vnc.sock" ] || { cat "$W/runner.log"; echo "no VNC socket after 5 s"; exit 1; }
echo "VNC socket: $(stat -c '%A' "$W/run/vnc.sock")"
qemu-img info -U "$W/overlay/overlay.qcow2" | grep -q "backing file: $W/images/base.qcow2" || { echo "overlay has no backing file"; exit 1; }
grep -E "KVM|TCG" "$W/runner.log"
"$AGENT" --vnc "unix:$W/run/vnc.sock" --listen "127.0.0.1:$port" >"$W/agent.log" 2>&1 &
agent=$!
health=
for _ in $(seq 50); do
  health=$(curl -sf "http://127.0.0.1:$port/healthz" || true)
  grep -q '"vnc_connected":true' <<<"$health" && break
  sleep 0.2
done
grep -q '"vnc_connected":true' <<<"$health" || { cat "$W/agent.log"; echo "agent not connected: $health"; exit 1; }
echo "agent via unix socket: $health"
kill "$agent"; wait "$agent" 2>/dev/null || true; agent=0
qpid=$(pgrep -f -- "-name $name " | head -1 || true)
[ -n "$qpid" ] || { echo "QEMU process not found"; exit 1; }
kill -TERM "$runner"
SECONDS=0
status=0
wait "$runner" || status=$?
runner=0
echo "start.sh exited $status after ${SECONDS}s"
grep -q "QMP system_powerdown accepted" "$W/runner.log" || { cat "$W/runner.log"; echo "no QMP powerdown"; exit 1; }
[ "$status" = 0 ] || { cat "$W/runner.log"; echo "exit status $status, want QEMU's 0"; exit 1; }
if kill -0 "$qpid" 2>/dev/null; then echo "QEMU $qpid still running"; exit 1; fi
[ ! -e "$W/run/vnc.sock" ] || { echo "VNC socket left behind"; exit 1; }
# A second start reuses the overlay (the VM's disk survives a pod restart).
BASE_IMAGE=$W/images/base.qcow2 OVERLAY_DIR=$W/overlay VNC_SOCKET=$W/run/vnc.sock QMP_SOCKET=$W/tmp/qmp.sock \
  VM_MEMORY_MB=8 bash "$ROOT/runner/start.sh" >"$W/runner2.log" 2>&1 && { echo "VM_MEMORY_MB=8 accepted"; exit 1; }
grep -q "VM_MEMORY_MB must be a whole number of MiB >= 16" "$W/runner2.log" || { cat "$W/runner2.log"; exit 1; }
echo "runner test passed"
