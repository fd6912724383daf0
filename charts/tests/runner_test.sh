#!/usr/bin/env bash
# runner/start.sh for real: a 64 MiB qcow2 base image (no OS: SeaBIOS's screen is the desktop),
# the VNC server on a Unix socket, loco-agent reading it through `--vnc unix:PATH` as in the
# pod, then SIGTERM. Then start.sh with AGENT_LISTEN (it starts the agent itself, as in one
# container or on a plain host): /healthz says vnc_connected, SIGTERM stops both, exit 0; the
# agent killed: start.sh stops QEMU and exits non-zero. Then VM_PROFILE=standin takes its
# -kernel/-initrd from the base image's directory. LOCO_AUDIO: on by default (sound card, audiodev on
# -vnc, agent --audio on), 0 leaves -vnc without it, a bad value is refused. Usage: runner_test.sh AGENT_BIN WORKDIR
set -euo pipefail
AGENT=$1 W=$2
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mkdir -p "$W/images" "$W/overlay" "$W/run" "$W/tmp"
qemu-img create -q -f qcow2 "$W/images/base.qcow2" 64M
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
runner=0 agent=0
name=loco-test-$$
fin() { # on an early failure: stop whatever this test started, QEMU and agents included
  [ "$agent" = 0 ] || kill "$agent" 2>/dev/null || true
  [ "$runner" = 0 ] || kill -KILL "$runner" 2>/dev/null || true
  pkill -KILL -f -- "-name ${name}[ -]" 2>/dev/null || true
  pkill -KILL -f -- "--vnc unix:$W/run" 2>/dev/null || true
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
echo "VM_MEMORY_MB=8 refused"
BASE_IMAGE=$W/images/base.qcow2 OVERLAY_DIR=$W/overlay VNC_SOCKET=$W/run/vnc.sock QMP_SOCKET=$W/tmp/qmp.sock \
  LOCO_AUDIO=maybe bash "$ROOT/runner/start.sh" >"$W/runner2.log" 2>&1 && { echo "LOCO_AUDIO=maybe accepted"; exit 1; }
grep -q "LOCO_AUDIO must be 1 (the VM's sound reaches the agent) or 0 (no audio), not 'maybe'" "$W/runner2.log" ||
  { cat "$W/runner2.log"; exit 1; }
echo "LOCO_AUDIO=maybe refused"
# Audio on by default: the profile's sound card, and QEMU's VNC server carries its sound.
if ! grep -q -- "-audiodev none,id=snd0 -device sb16,audiodev=snd0" "$W/runner.log" ||
  ! grep -q -- "-vnc unix:$W/run/vnc.sock,audiodev=snd0 " "$W/runner.log"; then
  cat "$W/runner.log"; echo "no sound card, or no audiodev on -vnc, by default"; exit 1
fi

# --- AGENT_LISTEN: start.sh starts the agent beside QEMU and stops both on SIGTERM.
healthy() { # healthy PORT: wait up to 15 s for /healthz with vnc_connected
  local h=
  for _ in $(seq 75); do
    h=$(curl -sf "http://127.0.0.1:$1/healthz" || true)
    grep -q '"vnc_connected":true' <<<"$h" && { echo "$h"; return 0; }
    sleep 0.2
  done
  echo "not healthy: $h"
  return 1
}
pid_of() { pgrep -f -- "$1" | head -1 || true; } # pid_of PATTERN (only this test's unique names)
printf 'tok-runner-test-0123456789\n' >"$W/token"
for case in sigterm agent-dies; do
  rm -f "$W/overlay/overlay.qcow2"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  log=$W/runner-agent-$case.log
  BASE_IMAGE=$W/images/base.qcow2 OVERLAY_DIR=$W/overlay VNC_SOCKET=$W/run/vnc.sock QMP_SOCKET=$W/tmp/qmp.sock \
    VM_MEMORY_MB=64 POWERDOWN_GRACE_S=2 KILL_GRACE_S=2 VM_NAME=$name-$case \
    AGENT_LISTEN=127.0.0.1:$port LOCO_AGENT=$AGENT LOCO_TOKEN_FILE=$W/token \
    bash "$ROOT/runner/start.sh" >"$log" 2>&1 &
  runner=$!
  health=$(healthy "$port") || { cat "$log"; echo "$case: agent started by start.sh: $health"; exit 1; }
  grep -q -- "starting: $AGENT --vnc unix:$W/run/vnc.sock --listen 127.0.0.1:$port --audio on " "$log" ||
    { cat "$log"; echo "$case: the agent was not started with --audio on"; exit 1; }
  echo "$case: agent started by start.sh: $health"
  grep -q -- "--qmp unix:$W/run/qmp.sock" "$log" || { cat "$log"; echo "$case: the agent was not given --qmp"; exit 1; }
  # VM control: the agent reaches QEMU over its own QMP socket (AGENT_QMP_SOCKET, beside the VNC one).
  ctl=
  for _ in $(seq 50); do
    ctl=$(curl -s -H "Authorization: Bearer tok-runner-test-0123456789" "http://127.0.0.1:$port/control" || true)
    grep -q '"qmp":"connected"' <<<"$ctl" && break
    sleep 0.2
  done
  if ! grep -q '"qmp":"connected"' <<<"$ctl" || ! grep -q '"status":"running"' <<<"$ctl"; then
    cat "$log"; echo "$case: /control: $ctl"; exit 1
  fi
  echo "$case: /control: $ctl"
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/sdp' --data 'v=0' "http://127.0.0.1:$port/whep")
  [ "$code" = 401 ] || { cat "$log"; echo "$case: WHEP without the token gave $code, want 401 (LOCO_TOKEN_FILE not passed?)"; exit 1; }
  qpid=$(pid_of "-name $name-$case ")
  apid=$(pid_of "--vnc unix:$W/run/vnc.sock --listen 127.0.0.1:$port")
  if [ -z "$qpid" ] || [ -z "$apid" ]; then cat "$log"; echo "$case: QEMU ($qpid) or agent ($apid) not found"; exit 1; fi
  if [ "$case" = sigterm ]; then kill -TERM "$runner"; else kill -KILL "$apid"; fi
  SECONDS=0
  status=0
  wait "$runner" || status=$?
  runner=0
  echo "$case: start.sh exited $status after ${SECONDS}s"
  for p in "$qpid" "$apid"; do
    if kill -0 "$p" 2>/dev/null; then cat "$log"; echo "$case: process $p still running"; exit 1; fi
  done
  [ ! -e "$W/run/vnc.sock" ] || { echo "$case: VNC socket left behind"; exit 1; }
  [ ! -e "$W/run/qmp.sock" ] || { echo "$case: the agent's QMP socket left behind"; exit 1; }
  grep -q "QMP system_powerdown accepted" "$log" || { cat "$log"; echo "$case: no QMP powerdown"; exit 1; }
  if [ "$case" = sigterm ]; then
    [ "$status" = 0 ] || { cat "$log"; echo "sigterm: exit status $status, want 0"; exit 1; }
    grep -q "stopping loco-agent" "$log" || { cat "$log"; echo "sigterm: the agent was not stopped by start.sh"; exit 1; }
  else
    [ "$status" != 0 ] || { cat "$log"; echo "agent-dies: exit status 0, want non-zero"; exit 1; }
    grep -q "exited on its own" "$log" || { cat "$log"; echo "agent-dies: not reported"; exit 1; }
  fi
done

# --- VM_PROFILE=standin: -kernel/-initrd come from the base image's directory; missing: a clear error.
BASE_IMAGE=$W/images/base.qcow2 OVERLAY_DIR=$W/overlay VNC_SOCKET=$W/run/vnc.sock QMP_SOCKET=$W/tmp/qmp.sock \
  VM_PROFILE=standin VM_MEMORY_MB=64 VM_NAME=$name-standin \
  bash "$ROOT/runner/start.sh" >"$W/runner-standin.log" 2>&1 && { echo "standin without a kernel started"; exit 1; }
grep -q "$W/images/vmlinuz is missing" "$W/runner-standin.log" || { cat "$W/runner-standin.log"; echo "standin: no message naming the kernel"; exit 1; }
: >"$W/images/vmlinuz"
: >"$W/images/initrd.img"
# Empty files are no kernel: QEMU refuses them at once, after start.sh passed them on. LOCO_AUDIO=0:
# the sound card is still there, -vnc has no audiodev.
status=0
BASE_IMAGE=$W/images/base.qcow2 OVERLAY_DIR=$W/overlay VNC_SOCKET=$W/run/vnc.sock QMP_SOCKET=$W/tmp/qmp.sock \
  VM_PROFILE=standin VM_MEMORY_MB=64 VM_NAME=$name-standin LOCO_AUDIO=0 \
  timeout 30 bash "$ROOT/runner/start.sh" >"$W/runner-standin.log" 2>&1 || status=$?
if ! grep -q -- "-kernel $W/images/vmlinuz -initrd $W/images/initrd.img -append root=/dev/vda" "$W/runner-standin.log" ||
  ! grep -q -- "-drive file=$W/overlay/overlay.qcow2,if=virtio" "$W/runner-standin.log"; then
  cat "$W/runner-standin.log"; echo "standin: not the standin profile's command line"; exit 1
fi
if ! grep -q -- "-audiodev none,id=snd0 -device ES1370,audiodev=snd0" "$W/runner-standin.log" ||
  ! grep -q -- "-vnc unix:$W/run/vnc.sock -serial" "$W/runner-standin.log"; then
  cat "$W/runner-standin.log"; echo "standin, LOCO_AUDIO=0: want the sound card and -vnc without audiodev"; exit 1
fi
if [ "$status" = 0 ] || [ "$status" = 124 ]; then cat "$W/runner-standin.log"; echo "standin: status $status, want QEMU's refusal"; exit 1; fi
echo "standin profile: kernel and initrd from the base image's directory"
echo "runner test passed"
