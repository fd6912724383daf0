#!/usr/bin/env bash
# loco VM runner: one QEMU per container, on a copy-on-write overlay of a shared base image,
# with its screen on a VNC Unix socket that the loco-agent sidecar reads (VNC never leaves
# the pod: no TCP VNC port is opened).
#
# Environment (defaults in brackets):
#   BASE_IMAGE          read-only base disk image            [/images/base.qcow2]
#   BASE_FORMAT         its format (qcow2 or raw)             [qcow2]
#   OVERLAY_DIR         writable dir for this VM's overlay    [/var/lib/loco]
#   VNC_SOCKET          VNC Unix socket (shared emptyDir)     [/run/loco/vnc.sock]
#   QMP_SOCKET          QMP Unix socket (private)             [${TMPDIR:-/tmp}/loco-qmp.sock]
#   VM_NAME             QEMU -name                            [$HOSTNAME, else loco-vm]
#   VM_MEMORY_MB        guest memory in MiB                   [1024]
#   VM_CPUS             guest CPUs                            [1]
#   VM_NIC              QEMU -nic value, or "none"            [none]
#   QEMU_EXTRA_ARGS     extra QEMU arguments, split on spaces []
#   ACCEL               auto, kvm or tcg                      [auto]
#   POWERDOWN_GRACE_S   seconds between ACPI powerdown and killing QEMU on SIGTERM [20]
#   KILL_GRACE_S        seconds between SIGTERM and SIGKILL to QEMU after that      [5]
#
# With ACCEL=auto, KVM is used when /dev/kvm can be opened read-write (device plugin, or
# hostPath with a privileged container); otherwise QEMU runs with TCG and says so in the log.
#
# On SIGTERM/SIGINT the guest gets an ACPI power-button press (QMP system_powerdown), so
# Windows 98 or Linux shuts down and flushes its disk; QEMU is killed only after the grace
# period. The script exits with QEMU's exit status (128+signal if QEMU died of a signal).
#
# How this was checked (no container runtime here): `bash -n` and shellcheck (0.9) are clean;
# charts/test.sh runs it for real against a 64 MiB qcow2 (an empty disk: the guest cannot
# power off, so the kill path after POWERDOWN_GRACE_S is what runs), checks that the VNC
# socket appears and that the overlay is a qcow2 whose backing file is BASE_IMAGE, that a
# loco-agent connects through the socket (/healthz says vnc_connected), and that SIGTERM
# ends QEMU and the script with QEMU's status, leaving no QEMU behind.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-/images/base.qcow2}
BASE_FORMAT=${BASE_FORMAT:-qcow2}
OVERLAY_DIR=${OVERLAY_DIR:-/var/lib/loco}
VNC_SOCKET=${VNC_SOCKET:-/run/loco/vnc.sock}
QMP_SOCKET=${QMP_SOCKET:-${TMPDIR:-/tmp}/loco-qmp.sock}
VM_NAME=${VM_NAME:-${HOSTNAME:-loco-vm}}
VM_MEMORY_MB=${VM_MEMORY_MB:-1024}
VM_CPUS=${VM_CPUS:-1}
VM_NIC=${VM_NIC:-none}
QEMU_EXTRA_ARGS=${QEMU_EXTRA_ARGS:-}
POWERDOWN_GRACE_S=${POWERDOWN_GRACE_S:-20}
KILL_GRACE_S=${KILL_GRACE_S:-5}
ACCEL=${ACCEL:-auto}
QEMU=${QEMU:-qemu-system-x86_64}

log() { printf 'loco-runner: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
if ! is_uint "$VM_MEMORY_MB" || [ "$VM_MEMORY_MB" -lt 16 ]; then
  die "VM_MEMORY_MB must be a whole number of MiB >= 16 (got '$VM_MEMORY_MB')"
fi
if ! is_uint "$VM_CPUS" || [ "$VM_CPUS" -lt 1 ]; then
  die "VM_CPUS must be a whole number >= 1 (got '$VM_CPUS')"
fi
is_uint "$POWERDOWN_GRACE_S" || die "POWERDOWN_GRACE_S must be a whole number of seconds (got '$POWERDOWN_GRACE_S')"
is_uint "$KILL_GRACE_S" || die "KILL_GRACE_S must be a whole number of seconds (got '$KILL_GRACE_S')"
case $BASE_FORMAT in qcow2 | raw) ;; *) die "BASE_FORMAT must be qcow2 or raw (got '$BASE_FORMAT')" ;; esac
[ -r "$BASE_IMAGE" ] || die "base image $BASE_IMAGE is missing or unreadable (mount the shared base-image volume there, or set BASE_IMAGE)"
command -v "$QEMU" >/dev/null || die "$QEMU is not installed"

# Sockets: group-accessible so an agent running with another UID but the pod's fsGroup can
# connect (connecting to a Unix socket needs write permission on it).
umask 007
mkdir -p "$OVERLAY_DIR" "$(dirname "$VNC_SOCKET")" "$(dirname "$QMP_SOCKET")"
rm -f "$VNC_SOCKET" "$QMP_SOCKET"

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
accel=(-accel tcg)
kvm_ok=0
if [ -e /dev/kvm ] && (exec 3<>/dev/kvm) 2>/dev/null; then kvm_ok=1; fi
case $ACCEL in
  auto | kvm)
    if [ $kvm_ok = 1 ]; then
      accel=(-enable-kvm)
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

nic=(-nic none)
[ "$VM_NIC" = none ] || nic=(-nic "$VM_NIC")
extra=()
# shellcheck disable=SC2206  # splitting QEMU_EXTRA_ARGS on spaces is the documented behaviour
[ -z "$QEMU_EXTRA_ARGS" ] || extra=($QEMU_EXTRA_ARGS)

cmd=("$QEMU" -name "$VM_NAME" "${accel[@]}" -m "$VM_MEMORY_MB" -smp "$VM_CPUS"
  -machine pc -vga std -usb -device usb-tablet -display none
  -vnc "unix:$VNC_SOCKET"
  -qmp "unix:$QMP_SOCKET,server=on,wait=off"
  -drive "file=$overlay,format=qcow2,if=ide,cache=writeback"
  -rtc base=localtime -monitor none -serial none -parallel none
  "${nic[@]}" "${extra[@]}")
log "starting: ${cmd[*]}"
"${cmd[@]}" &
qemu_pid=$!

# shellcheck disable=SC2317  # qmp and on_signal run from the traps below
qmp() { # qmp COMMAND: send one QMP command after the capabilities handshake; true if QEMU accepted both
  local reply
  reply=$(printf '{"execute":"qmp_capabilities"}\n{"execute":"%s"}\n' "$1" |
    timeout 5 socat -t 2 - "UNIX-CONNECT:$QMP_SOCKET" 2>&1) || return 1
  [ "$(grep -c '"return"' <<<"$reply")" -ge 2 ]
}

stopping=0
stop_at=0
# shellcheck disable=SC2317
on_signal() {
  [ "$stopping" = 0 ] || return 0
  stopping=1
  stop_at=$SECONDS
  log "got $1: asking the guest to power down (QMP system_powerdown), ${POWERDOWN_GRACE_S}s grace"
  if qmp system_powerdown; then
    log "QMP system_powerdown accepted"
  else
    log "QMP system_powerdown failed: QEMU will be stopped after the grace period"
  fi
}
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT

# `wait` returns early when a trapped signal arrives; after that, poll once a second so the
# grace periods can run out (no helper processes are left behind).
sent_term=0
while kill -0 "$qemu_pid" 2>/dev/null; do
  if [ $stopping = 0 ]; then
    wait "$qemu_pid" || true
    continue
  fi
  waited=$((SECONDS - stop_at))
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
rm -f "$VNC_SOCKET" "$QMP_SOCKET"
log "QEMU exited with status $status"
exit "$status"
