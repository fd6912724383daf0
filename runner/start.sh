#!/usr/bin/env bash
# loco VM runner: one QEMU per container (or per host service), on a copy-on-write overlay of a
# shared base image, with its screen on a VNC Unix socket that the loco-agent reads (VNC never
# leaves the pod: no TCP VNC port is opened). With AGENT_LISTEN set it also starts that agent
# beside QEMU (one container or a plain host); in the Helm chart the agent is a sidecar instead.
#
# QEMU's command line comes from packer/qemu-args.json, the one place for the guests' run-time
# options (shared with ./loco up and the Packer template): `qemuargs.py VM_PROFILE --disk
# OVERLAY --accel kvm|tcg --vnc unix:VNC_SOCKET --qmp ... --nul` prints it, and this script
# only adds QEMU_EXTRA_ARGS. The guest's sound card is always there (qemuargs.py); LOCO_AUDIO says
# whether its sound reaches the agent.
#
# Environment (defaults in brackets):
#   VM_PROFILE          the guest's profile in qemu-args.json: win98 or standin  [win98]
#   BASE_IMAGE          read-only base disk image            [/images/base.qcow2]
#                       (profile standin: its vmlinuz and initrd.img sit beside it)
#   BASE_FORMAT         its format (qcow2 or raw)             [qcow2]
#   OVERLAY_DIR         writable dir for this VM's overlay    [/var/lib/loco]
#   VNC_SOCKET          VNC Unix socket (shared emptyDir)     [/run/loco/vnc.sock]
#   QMP_SOCKET          QMP Unix socket (private)             [${TMPDIR:-/tmp}/loco-qmp.sock]
#   AGENT_QMP_SOCKET    a second QMP Unix socket, the agent's (VM control: reset, power, revert;
#                       loco-agent --qmp unix:PATH); beside VNC_SOCKET on the shared volume, never
#                       on the network. QEMU serves one client per QMP socket, so this script's
#                       own stays private. "none": no VM control  [$(dirname VNC_SOCKET)/qmp.sock]
#   VM_NAME             QEMU -name                            [$HOSTNAME, else loco-vm]
#   VM_MEMORY_MB        guest memory in MiB                   [the profile's memory_mb]
#   VM_CPUS             guest CPUs                            [the profile's smp]
#   VM_NIC              QEMU -nic value, or "none"            [none]
#   LOCO_LAN            join the guest LAN: the loco-lan switch at unix:PATH or tcp:HOST:PORT
#                       (QEMU -netdev stream, reconnecting by itself; packer/guestlan.py). The
#                       guest gets the LAN's NIC, MAC and, by DHCP, its address. Not with a
#                       VM_NIC other than none                [unset: no LAN]
#   VM_INDEX            the VM's number on the LAN, 1-150 (its MAC 52:54:00:4c:00:NN, address
#                       10.98.0.(100+N), name vmN)            [the StatefulSet ordinal + 1,
#                       from HOSTNAME's trailing -N: pod loco-vm-0 is vm1; needed with LOCO_LAN]
#   LOCO_AUDIO          1: the guest's sound card (the profile's `sound`) reaches the agent: QEMU's
#                       VNC server carries it (-vnc unix:VNC_SOCKET,audiodev=snd0) and the agent
#                       started here gets --audio on; 0: no audio (no audiodev on -vnc, agent
#                       --audio off). The card is in the VM either way (-audiodev none), so the
#                       guest's hardware does not change with it  [1]
#   QEMU_EXTRA_ARGS     extra QEMU arguments, split on spaces []
#   QEMU                the QEMU binary                       [qemu-system-x86_64]
#   QEMUARGS            packer/qemuargs.py (qemu-args.json beside it)
#                       [$QEMUARGS, else ../packer/qemuargs.py from this script, else /opt/loco/qemuargs.py]
#   ACCEL               auto, kvm or tcg                      [auto]
#   POWERDOWN_GRACE_S   seconds between ACPI powerdown and killing QEMU on SIGTERM [20]
#   KILL_GRACE_S        seconds between SIGTERM and SIGKILL to QEMU after that,
#                       and to the agent after SIGTERM                             [5]
#   AGENT_LISTEN        if set (e.g. 0.0.0.0:8080): start loco-agent --vnc unix:VNC_SOCKET
#                       --listen AGENT_LISTEN (--qmp unix:AGENT_QMP_SOCKET) once the VNC socket
#                       is there                                               [unset: no agent]
#   LOCO_AGENT          the agent binary                      [loco-agent, on PATH]
#   LOCO_TOKEN_FILE     passed to the agent as --token-file   [unset]
#   AGENT_EXTRA_ARGS    extra agent arguments, split on spaces (e.g. --codec vp8) []
#                       (the agent gets --audio on|off from LOCO_AUDIO; in the Helm chart the
#                       sidecar gets the same from audio.enabled)
#   (LOCO_TOKEN, LOCO_VIEW_TOKEN, LOCO_LOG, LOCO_TURN_* reach the agent through the environment.)
#
# With ACCEL=auto, KVM is used when /dev/kvm can be opened read-write (device plugin, or
# hostPath with a privileged container); otherwise QEMU runs with TCG and says so in the log.
#
# QEMU runs with -no-shutdown (qemuargs.py): a guest that powers itself off (or is powered off
# from its panel through the agent) leaves QEMU stopped in status "shutdown", and the agent can
# power it on again; the pod keeps running.
#
# On SIGTERM/SIGINT the agent (if any) gets SIGTERM (SIGKILL after KILL_GRACE_S) and the guest
# an ACPI power-button press (QMP system_powerdown, after `set-action shutdown=poweroff` so the
# guest's power-off ends QEMU after all; a guest already off: QMP quit), so Windows 98 or Linux
# shuts down and flushes its disk; QEMU is killed only after the grace period. The script exits with QEMU's
# exit status (128+signal if QEMU died of a signal). If the agent exits on its own, the VM is
# powered down the same way and the script exits non-zero (QEMU's status if that is non-zero,
# else the agent's, else 1); if QEMU exits on its own, the agent is stopped and the script exits
# with QEMU's status (0 when the guest powered itself off).
#
# How this was checked (no container runtime here): `bash -n` and shellcheck (0.9) are clean;
# charts/test.sh runs it for real (charts/tests/runner_test.sh) against a 64 MiB qcow2 (an
# empty disk: the guest cannot power off, so the kill path after POWERDOWN_GRACE_S is what
# runs): the VNC socket appears, the overlay is a qcow2 whose backing file is BASE_IMAGE, a
# loco-agent connects through the socket (/healthz says vnc_connected), and SIGTERM ends QEMU
# and the script with QEMU's status, leaving no QEMU behind; then again with AGENT_LISTEN (the
# agent started here answers /healthz with vnc_connected, SIGTERM stops both, exit 0; the agent
# killed: QEMU is stopped, non-zero exit); and VM_PROFILE=standin takes -kernel/-initrd from
# BASE_IMAGE's directory. charts/tests/lan_test.sh runs it with LOCO_LAN against a real loco-lan:
# QEMU joins the switch (VM_INDEX, or the index from HOSTNAME) and rejoins by itself after the
# switch restarts; LOCO_LAN with a VM_NIC, or without an index, is refused.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-/images/base.qcow2}
BASE_FORMAT=${BASE_FORMAT:-qcow2}
OVERLAY_DIR=${OVERLAY_DIR:-/var/lib/loco}
VNC_SOCKET=${VNC_SOCKET:-/run/loco/vnc.sock}
QMP_SOCKET=${QMP_SOCKET:-${TMPDIR:-/tmp}/loco-qmp.sock}
AGENT_QMP_SOCKET=${AGENT_QMP_SOCKET:-$(dirname "$VNC_SOCKET")/qmp.sock}
[ "$AGENT_QMP_SOCKET" != none ] || AGENT_QMP_SOCKET=
VM_NAME=${VM_NAME:-${HOSTNAME:-loco-vm}}
VM_PROFILE=${VM_PROFILE:-win98}
VM_MEMORY_MB=${VM_MEMORY_MB:-}
VM_CPUS=${VM_CPUS:-}
VM_NIC=${VM_NIC:-none}
LOCO_LAN=${LOCO_LAN:-}
VM_INDEX=${VM_INDEX:-}
QEMU_EXTRA_ARGS=${QEMU_EXTRA_ARGS:-}
LOCO_AUDIO=${LOCO_AUDIO:-1}
POWERDOWN_GRACE_S=${POWERDOWN_GRACE_S:-20}
KILL_GRACE_S=${KILL_GRACE_S:-5}
ACCEL=${ACCEL:-auto}
QEMU=${QEMU:-qemu-system-x86_64}
AGENT_LISTEN=${AGENT_LISTEN:-}
LOCO_AGENT=${LOCO_AGENT:-loco-agent}
LOCO_TOKEN_FILE=${LOCO_TOKEN_FILE:-}
AGENT_EXTRA_ARGS=${AGENT_EXTRA_ARGS:-}
VNC_WAIT_S=30
if [ -z "${QEMUARGS:-}" ]; then
  QEMUARGS=$(dirname "${BASH_SOURCE[0]}")/../packer/qemuargs.py
  [ -r "$QEMUARGS" ] || QEMUARGS=/opt/loco/qemuargs.py
fi

log() { printf 'loco-runner: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
if [ -n "$VM_MEMORY_MB" ] && { ! is_uint "$VM_MEMORY_MB" || [ "$VM_MEMORY_MB" -lt 16 ]; }; then
  die "VM_MEMORY_MB must be a whole number of MiB >= 16 (got '$VM_MEMORY_MB')"
fi
if [ -n "$VM_CPUS" ] && { ! is_uint "$VM_CPUS" || [ "$VM_CPUS" -lt 1 ]; }; then
  die "VM_CPUS must be a whole number >= 1 (got '$VM_CPUS')"
fi
if [ -n "$LOCO_LAN" ]; then
  case $LOCO_LAN in
    unix:?* | tcp:*:*) ;;
    *) die "LOCO_LAN must be unix:PATH or tcp:HOST:PORT (got '$LOCO_LAN')" ;;
  esac
  [ "$VM_NIC" = none ] || die "LOCO_LAN and VM_NIC=$VM_NIC are both set: a VM joins the guest LAN or gets its own -nic, not both (set VM_NIC=none)"
  if [ -z "$VM_INDEX" ]; then
    # A StatefulSet pod is <name>-<ordinal> (HOSTNAME is the pod name): ordinal 0 is VM 1.
    if [[ ${HOSTNAME:-} =~ -([0-9]+)$ ]]; then
      VM_INDEX=$((10#${BASH_REMATCH[1]} + 1))
    else
      die "LOCO_LAN is set but VM_INDEX is not, and HOSTNAME '${HOSTNAME:-}' does not end in -N (a StatefulSet ordinal): set VM_INDEX (1-150), the VM's number on the LAN"
    fi
  fi
  if ! is_uint "$VM_INDEX" || [ "$((10#$VM_INDEX))" -lt 1 ] || [ "$((10#$VM_INDEX))" -gt 150 ]; then
    die "VM_INDEX must be a whole number from 1 to 150 (got '$VM_INDEX')"
  fi
  VM_INDEX=$((10#$VM_INDEX))
fi
case $LOCO_AUDIO in
  1) audio=on ;;
  0) audio=off ;;
  *) die "LOCO_AUDIO must be 1 (the VM's sound reaches the agent) or 0 (no audio), not '$LOCO_AUDIO'" ;;
esac
is_uint "$POWERDOWN_GRACE_S" || die "POWERDOWN_GRACE_S must be a whole number of seconds (got '$POWERDOWN_GRACE_S')"
is_uint "$KILL_GRACE_S" || die "KILL_GRACE_S must be a whole number of seconds (got '$KILL_GRACE_S')"
case $BASE_FORMAT in qcow2 | raw) ;; *) die "BASE_FORMAT must be qcow2 or raw (got '$BASE_FORMAT')" ;; esac
[ -r "$BASE_IMAGE" ] || die "base image $BASE_IMAGE is missing or unreadable (mount the shared base-image volume there, or set BASE_IMAGE)"
command -v "$QEMU" >/dev/null || die "$QEMU is not installed"
command -v python3 >/dev/null || die "python3 is not installed (it reads the QEMU options from qemu-args.json)"
[ -r "$QEMUARGS" ] || die "qemuargs.py not found at $QEMUARGS (set QEMUARGS to packer/qemuargs.py, with qemu-args.json beside it)"
if [ -n "$AGENT_LISTEN" ]; then
  command -v "$LOCO_AGENT" >/dev/null || die "AGENT_LISTEN is set but the agent $LOCO_AGENT is not found (set LOCO_AGENT)"
  [ -z "$LOCO_TOKEN_FILE" ] || [ -r "$LOCO_TOKEN_FILE" ] || die "LOCO_TOKEN_FILE $LOCO_TOKEN_FILE is missing or unreadable"
fi

# Sockets: group-accessible so an agent running with another UID but the pod's fsGroup can
# connect (connecting to a Unix socket needs write permission on it).
umask 007
mkdir -p "$OVERLAY_DIR" "$(dirname "$VNC_SOCKET")" "$(dirname "$QMP_SOCKET")"
rm -f "$VNC_SOCKET" "$QMP_SOCKET" ${AGENT_QMP_SOCKET:+"$AGENT_QMP_SOCKET"}

# The overlay persists with the VM's volume: a restarted pod keeps the guest's disk. It is
# created once, from the base image; if the base image is replaced, delete the overlay
# (its blocks refer to the old base).
overlay=$OVERLAY_DIR/overlay.qcow2
if [ ! -e "$overlay" ]; then
  log "creating overlay $overlay on $BASE_IMAGE ($BASE_FORMAT)"
  qemu-img create -q -f qcow2 -b "$BASE_IMAGE" -F "$BASE_FORMAT" "$overlay.tmp"
  mv "$overlay.tmp" "$overlay"
else
  log "reusing overlay $overlay"
fi

# ACCEL=auto (default): KVM when /dev/kvm can be opened read-write, else TCG. ACCEL=kvm
# fails when it cannot; ACCEL=tcg never tries. Opening the device (not just testing its mode
# bits) also catches a container whose device cgroup does not allow it.
accel=tcg
kvm_ok=0
if [ -e /dev/kvm ] && (exec 3<>/dev/kvm) 2>/dev/null; then kvm_ok=1; fi
case $ACCEL in
  auto | kvm)
    if [ $kvm_ok = 1 ]; then
      accel=kvm
      log "KVM: /dev/kvm is usable"
    elif [ "$ACCEL" = kvm ]; then
      die "ACCEL=kvm but /dev/kvm is missing or cannot be opened read-write"
    else
      log "KVM is not available (/dev/kvm missing or not openable): running with TCG (software emulation, several times slower)"
    fi
    ;;
  tcg) log "ACCEL=tcg: running with TCG (software emulation)" ;;
  *) die "ACCEL must be auto, kvm or tcg (got '$ACCEL')" ;;
esac

extra=()
# shellcheck disable=SC2206  # splitting QEMU_EXTRA_ARGS on spaces is the documented behaviour
[ -z "$QEMU_EXTRA_ARGS" ] || extra=($QEMU_EXTRA_ARGS)

# QEMU's argv from the shared file, one NUL-terminated argument each (any byte but NUL is safe
# in a path). Read from a process substitution: `wait $!` gives qemuargs.py's exit status.
qargs=("$VM_PROFILE" --disk "$overlay" --image-dir "$(dirname "$BASE_IMAGE")" --accel "$accel"
  --vnc "unix:$VNC_SOCKET" --qmp "unix:$QMP_SOCKET,server=on,wait=off" --serial none
  --name "$VM_NAME" --qemu "$QEMU" --audio "$audio" --nul)
[ -z "$AGENT_QMP_SOCKET" ] || qargs+=(--qmp "unix:$AGENT_QMP_SOCKET,server=on,wait=off")
if [ -n "$LOCO_LAN" ]; then
  qargs+=(--lan "$LOCO_LAN" --lan-index "$VM_INDEX")
  log "guest LAN: $LOCO_LAN as VM $VM_INDEX"
else
  qargs+=(--nic "$VM_NIC")
fi
[ -z "$VM_MEMORY_MB" ] || qargs+=(--memory "$VM_MEMORY_MB")
[ -z "$VM_CPUS" ] || qargs+=(--cpus "$VM_CPUS")
cmd=()
mapfile -d '' cmd < <(python3 "$QEMUARGS" "${qargs[@]}")
wait $! || die "qemuargs.py could not build QEMU's command line for profile $VM_PROFILE (above)"
if [ "${#cmd[@]}" -lt 2 ] || [ "${cmd[0]}" != "$QEMU" ]; then die "qemuargs.py printed no command line"; fi
cmd+=("${extra[@]}")
log "starting (profile $VM_PROFILE): ${cmd[*]}"
"${cmd[@]}" &
qemu_pid=$!
agent_pid=0    # the agent's pid while it is running (0: none, or already reaped)
agent_failed=0 # the agent exited without being asked to
agent_status=0

# shellcheck disable=SC2317  # qmp, on_signal and reap_agent run from the traps and the loop below
qmp() { # qmp JSON...: send QMP commands (JSON objects) after the capabilities handshake; true if
  # QEMU accepted them all; QEMU's answers are in $qmp_reply
  local n=$(($# + 1))
  qmp_reply=$({ printf '{"execute":"qmp_capabilities"}\n'; printf '%s\n' "$@"; } |
    timeout 5 socat -t 2 - "UNIX-CONNECT:$QMP_SOCKET" 2>&1) || return 1
  [ "$(grep -c '"return"' <<<"$qmp_reply")" -ge "$n" ]
}
qmp_reply=

stopping=0
stop_at=0
# shellcheck disable=SC2317
on_signal() { # on_signal WHY: stop the agent, and ask the guest to power down
  [ "$stopping" = 0 ] || return 0
  stopping=1
  stop_at=$SECONDS
  if [ "$agent_pid" != 0 ]; then
    log "$1: stopping loco-agent (pid $agent_pid, SIGTERM)"
    kill -TERM "$agent_pid" 2>/dev/null || true
  fi
  log "$1: asking the guest to power down (QMP system_powerdown), ${POWERDOWN_GRACE_S}s grace"
  # -no-shutdown keeps QEMU alive after a guest power-off: now the power-off should end it.
  qmp '{"execute":"set-action","arguments":{"shutdown":"poweroff"}}' '{"execute":"query-status"}' ||
    log "QMP set-action failed"
  if grep -q '"status": *"shutdown"' <<<"$qmp_reply"; then
    log "the guest is already powered off: QMP quit"
    qmp '{"execute":"quit"}' || log "QMP quit failed: QEMU will be stopped after the grace period"
  elif qmp '{"execute":"system_powerdown"}'; then
    log "QMP system_powerdown accepted"
  else
    log "QMP system_powerdown failed: QEMU will be stopped after the grace period"
  fi
}
trap 'on_signal "got SIGTERM"' TERM
trap 'on_signal "got SIGINT"' INT

# shellcheck disable=SC2317
reap_agent() { # the agent has exited: collect its status; if nobody asked it to, stop the VM
  local pid=$agent_pid
  agent_pid=0
  agent_status=0
  wait "$pid" || agent_status=$?
  if [ "$stopping" = 0 ]; then
    agent_failed=1
    log "loco-agent (pid $pid) exited on its own with status $agent_status"
    on_signal "the agent is gone"
  else
    log "loco-agent exited with status $agent_status"
  fi
}

# The agent, when asked for: once QEMU's VNC socket is there (it retries on its own anyway).
if [ -n "$AGENT_LISTEN" ]; then
  tries=0
  while [ ! -S "$VNC_SOCKET" ] && [ "$stopping" = 0 ] && kill -0 "$qemu_pid" 2>/dev/null &&
    [ "$tries" -lt $((VNC_WAIT_S * 10)) ]; do
    sleep 0.1
    tries=$((tries + 1))
  done
  if [ "$stopping" = 0 ] && kill -0 "$qemu_pid" 2>/dev/null; then
    [ -S "$VNC_SOCKET" ] || log "no VNC socket after ${VNC_WAIT_S}s: starting the agent anyway (it retries)"
    agent_cmd=("$LOCO_AGENT" --vnc "unix:$VNC_SOCKET" --listen "$AGENT_LISTEN" --audio "$audio")
    [ -z "$AGENT_QMP_SOCKET" ] || agent_cmd+=(--qmp "unix:$AGENT_QMP_SOCKET")
    [ -z "$LOCO_TOKEN_FILE" ] || agent_cmd+=(--token-file "$LOCO_TOKEN_FILE")
    # shellcheck disable=SC2206  # splitting AGENT_EXTRA_ARGS on spaces is the documented behaviour
    [ -z "$AGENT_EXTRA_ARGS" ] || agent_cmd+=($AGENT_EXTRA_ARGS)
    log "starting: ${agent_cmd[*]}"
    "${agent_cmd[@]}" &
    agent_pid=$!
  fi
fi

# `wait` returns early when a trapped signal arrives or a child ends; after a stop began, poll
# once a second so the grace periods can run out (no helper processes are left behind).
sent_term=0
while :; do
  if [ "$agent_pid" != 0 ] && ! kill -0 "$agent_pid" 2>/dev/null; then reap_agent; fi
  kill -0 "$qemu_pid" 2>/dev/null || break
  if [ "$stopping" = 0 ]; then
    if [ "$agent_pid" != 0 ]; then wait -n "$qemu_pid" "$agent_pid" || true; else wait "$qemu_pid" || true; fi
    continue
  fi
  waited=$((SECONDS - stop_at))
  if [ "$agent_pid" != 0 ] && [ "$waited" -ge "$KILL_GRACE_S" ]; then
    log "loco-agent still running ${KILL_GRACE_S}s after SIGTERM: SIGKILL"
    kill -KILL "$agent_pid" 2>/dev/null || true
  fi
  if [ $sent_term = 0 ] && [ "$waited" -ge "$POWERDOWN_GRACE_S" ]; then
    log "guest still running after ${POWERDOWN_GRACE_S}s: stopping QEMU (SIGTERM)"
    kill -TERM "$qemu_pid" 2>/dev/null || true
    sent_term=1
  elif [ "$waited" -ge $((POWERDOWN_GRACE_S + KILL_GRACE_S)) ]; then
    log "QEMU still running: SIGKILL"
    kill -KILL "$qemu_pid" 2>/dev/null || true
  fi
  sleep 1
done
set +e
wait "$qemu_pid"
status=$?
set -e
[ "$stopping" = 1 ] || log "QEMU exited on its own"
# QEMU is gone: the agent (if still running) goes too.
if [ "$agent_pid" != 0 ]; then
  if [ "$stopping" = 0 ]; then
    stopping=1
    log "stopping loco-agent (pid $agent_pid, SIGTERM)"
    kill -TERM "$agent_pid" 2>/dev/null || true
  fi
  for _ in $(seq $((KILL_GRACE_S * 10))); do kill -0 "$agent_pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$agent_pid" 2>/dev/null; then
    log "loco-agent still running after ${KILL_GRACE_S}s: SIGKILL"
    kill -KILL "$agent_pid" 2>/dev/null || true
  fi
  reap_agent
fi
rm -f "$VNC_SOCKET" "$QMP_SOCKET" ${AGENT_QMP_SOCKET:+"$AGENT_QMP_SOCKET"}
log "QEMU exited with status $status"
if [ "$agent_failed" = 1 ] && [ "$status" = 0 ]; then
  status=$agent_status
  [ "$status" != 0 ] || status=1
  log "exiting with status $status: the agent had exited on its own"
fi
exit "$status"
