#!/usr/bin/env bash
# loco Sunshine sidecar (Dockerfile.sunshine, docs/sunshine.md): puts one VM's screen on a virtual
# X display and runs Sunshine on that display, so a Moonlight client can pair with it and play
# the VM without a headset.
#
#   QEMU -vnc unix:SOCK ──RFB──▶ xtigervncviewer, full screen on Xvfb :N ──x11 capture──▶ Sunshine ──▶ Moonlight
#                        ◀─RFB──          ▲                                                  │
#                                         └────────── XTest (pointer, keys) ◀────────────────┘
#
# QEMU and the runner are untouched: the viewer is one more client of the VM's VNC socket, like
# loco-agent (both connect "shared", so neither disconnects the other). Sunshine's input reaches
# the guest only through the X server: Xvfb reads no input devices, so uinput devices (what
# Sunshine >= v2025 creates, and nothing else) go nowhere; Sunshine v0.23.x falls back to XTest
# when it cannot create uinput devices, which is what makes input work here (docs/sunshine.md).
#
# Environment (defaults in brackets):
#   VNC_TARGET          the VM's VNC server: a Unix socket path, or HOST::PORT  [/run/loco/vnc.sock]
#   DISPLAY_NUM         the Xvfb display number                                  [10]
#   SCREEN_SIZE         the Xvfb screen, WIDTHxHEIGHT: the guest's video mode    [1024x768]
#   SUNSHINE            the Sunshine binary; "none" = show the VM on Xvfb and run no Sunshine
#                       (how runner/test_sunshine_display.py checks the display path)  [sunshine]
#   SUNSHINE_NAME       the host name Moonlight lists                            [$HOSTNAME, else loco-vm]
#   SUNSHINE_USERNAME, SUNSHINE_PASSWORD, or SUNSHINE_USERNAME_FILE, SUNSHINE_PASSWORD_FILE:
#                       when both are given, the Web UI credentials are set to them before
#                       Sunshine starts (`sunshine --creds`); else set them once in the Web UI [unset]
#   SUNSHINE_EXTRA_ARGS extra Sunshine options, `name=value` words split on spaces (e.g.
#                       "min_threads=2 sw_preset=ultrafast")                     []
#   XVFB, VIEWER        the X server and VNC viewer binaries                     [Xvfb, xtigervncviewer]
#   LOCO_X_DIR          private directory for the X authority cookie             [${TMPDIR:-/tmp}/loco-x-$DISPLAY_NUM]
#   KILL_GRACE_S        seconds between SIGTERM and SIGKILL for each child       [5]
# Sunshine keeps its state in $HOME/.config/sunshine (pairings, its certificate, the Web UI
# credentials, apps.json, sunshine.log): put $HOME on a persistent volume, or every restart
# forgets the paired clients ($HOME is created if missing; the Helm chart uses the directory
# sunshine/ on the VM's own overlay volume). Xvfb needs a writable /tmp (its socket directory /tmp/.X11-unix).
#
# Options this script always passes to Sunshine (they override its config file and Web UI):
# capture=x11 (the only capture that can work here: no GPU, no KMS, no Wayland),
# encoder=software (libx264 on the CPU), origin_web_ui_allowed=pc (the Web UI answers only
# connections from inside the pod: reach it with `kubectl port-forward`), sunshine_name, and
# file_apps (an apps.json with one entry, the VM's desktop, written on first start).
#
# Processes: Xvfb, the viewer (restarted a second after it exits, e.g. while QEMU restarts, and
# started only once the VNC socket exists), Sunshine. SIGTERM/SIGINT stop all three and exit 0.
# If Xvfb or Sunshine exits on its own, the others are stopped and the script exits non-zero
# (Sunshine's status, else 1), so the kubelet restarts the container.
#
# The viewer is nudged once its full-screen window is mapped (an X button-8 click, which reaches
# the VM as a pointer position with no buttons): TigerVNC 1.12 (XInput 2 event handling) sends
# no pointer *motion* until it has seen a button event, so without the nudge the first moves of
# a Moonlight session would be lost. Found and checked on Debian 12's tigervnc-viewer 1.12.0 by
# runner/test_sunshine_display.py.
set -euo pipefail

VNC_TARGET=${VNC_TARGET:-/run/loco/vnc.sock}
DISPLAY_NUM=${DISPLAY_NUM:-10}
SCREEN_SIZE=${SCREEN_SIZE:-1024x768}
SUNSHINE=${SUNSHINE:-sunshine}
SUNSHINE_NAME=${SUNSHINE_NAME:-${HOSTNAME:-loco-vm}}
SUNSHINE_EXTRA_ARGS=${SUNSHINE_EXTRA_ARGS:-}
XVFB=${XVFB:-Xvfb}
VIEWER=${VIEWER:-xtigervncviewer}
LOCO_X_DIR=${LOCO_X_DIR:-${TMPDIR:-/tmp}/loco-x-$DISPLAY_NUM}
KILL_GRACE_S=${KILL_GRACE_S:-5}

log() { printf 'loco-sunshine: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[[ $DISPLAY_NUM =~ ^[0-9]+$ ]] || die "DISPLAY_NUM must be a display number (got '$DISPLAY_NUM')"
[[ $SCREEN_SIZE =~ ^([0-9]+)x([0-9]+)$ ]] || die "SCREEN_SIZE must be WIDTHxHEIGHT (got '$SCREEN_SIZE')"
[[ $KILL_GRACE_S =~ ^[0-9]+$ ]] || die "KILL_GRACE_S must be a whole number of seconds (got '$KILL_GRACE_S')"
[ -n "$VNC_TARGET" ] || die "VNC_TARGET is empty (a Unix socket path, or HOST::PORT)"
for t in "$XVFB" "$VIEWER" xauth xdpyinfo xwininfo xdotool; do
  command -v "$t" >/dev/null || die "$t is not installed"
done
if [ "$SUNSHINE" != none ]; then
  command -v "$SUNSHINE" >/dev/null || die "$SUNSHINE is not installed (SUNSHINE=none runs the display only)"
  if [ -n "${HOME:-}" ] && [ ! -e "$HOME" ]; then mkdir -p "$HOME" 2>/dev/null || true; fi
  { [ -n "${HOME:-}" ] && [ -d "$HOME" ] && [ -w "$HOME" ]; } ||
    die "HOME (${HOME:-unset}) must be a writable directory: Sunshine keeps its state in \$HOME/.config/sunshine"
fi

secret() { # secret NAME: the value of $NAME, else the contents of the file $NAME_FILE
  local var=$1 file_var="${1}_FILE"
  if [ -n "${!var:-}" ]; then
    printf '%s' "${!var}"
  elif [ -n "${!file_var:-}" ]; then
    [ -r "${!file_var}" ] || die "$file_var: ${!file_var} is missing or unreadable"
    tr -d '\n' <"${!file_var}"
  fi
}
sun_user=$(secret SUNSHINE_USERNAME)
sun_pass=$(secret SUNSHINE_PASSWORD)
if { [ -n "$sun_user" ] && [ -z "$sun_pass" ]; } || { [ -z "$sun_user" ] && [ -n "$sun_pass" ]; }; then
  die "give both SUNSHINE_USERNAME and SUNSHINE_PASSWORD (or their _FILE forms), or neither"
fi

# X authority: only holders of the cookie may connect (the pod's containers share a network
# namespace, hence Xvfb's abstract socket; -nolisten tcp closes TCP).
umask 077
mkdir -p "$LOCO_X_DIR"
export XAUTHORITY=$LOCO_X_DIR/Xauthority
export DISPLAY=:$DISPLAY_NUM
: >"$XAUTHORITY"
xauth -q add "$DISPLAY" . "$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
umask 027 # Sunshine writes its private key and credentials under $HOME

xvfb_pid=0 viewer_pid=0 sun_pid=0
stopping=0 failed=0 status=0

alive() { [ "$1" != 0 ] && kill -0 "$1" 2>/dev/null; }
stop_child() { # stop_child PID NAME: SIGTERM, SIGKILL after KILL_GRACE_S, reap
  local pid=$1 i
  alive "$pid" || { [ "$pid" = 0 ] || wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < KILL_GRACE_S * 10; i++)); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then
    log "$2 still running ${KILL_GRACE_S}s after SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
# shellcheck disable=SC2317  # run from the traps
on_signal() { [ "$stopping" = 1 ] || log "$1: stopping"; stopping=1; }
trap 'on_signal "got SIGTERM"' TERM
trap 'on_signal "got SIGINT"' INT

log "starting $XVFB $DISPLAY ${SCREEN_SIZE}x24"
"$XVFB" "$DISPLAY" -screen 0 "${SCREEN_SIZE}x24" -nolisten tcp -auth "$XAUTHORITY" -noreset &
xvfb_pid=$!
for ((i = 0; i < 100; i++)); do
  xdpyinfo >/dev/null 2>&1 && break
  alive "$xvfb_pid" || die "$XVFB exited at start (above)"
  sleep 0.1
done
xdpyinfo >/dev/null 2>&1 || { stop_child "$xvfb_pid" Xvfb; die "$XVFB did not answer on $DISPLAY within 10s"; }

target_ready() { [[ $VNC_TARGET != /* ]] || [ -S "$VNC_TARGET" ]; }
viewer_next=0  # SECONDS at which the viewer may be (re)started
nudge_pending=0
start_viewer() {
  log "connecting $VIEWER to $VNC_TARGET"
  # Full screen, shared (loco-agent stays connected), no resize requests to the VM, no
  # clipboard either way, F8 passed to the guest (no viewer menu), exit instead of dialogs.
  "$VIEWER" -FullScreen -Shared -RemoteResize=0 -MenuKey= -AcceptClipboard=0 -SendClipboard=0 \
    -SetPrimary=0 -ReconnectOnError=0 -AlertOnFatalError=0 -AutoSelect=0 -PreferredEncoding=Raw \
    -FullColor=1 -Log '*:stderr:30' "$VNC_TARGET" &
  viewer_pid=$!
  nudge_pending=1
}
viewer_mapped() { xwininfo -root -children 2>/dev/null | grep -q " ${SCREEN_SIZE}+0+0 "; }

if [ "$SUNSHINE" != none ]; then
  conf=$HOME/.config/sunshine
  mkdir -p "$conf"
  if [ ! -e "$conf/apps.json" ]; then
    printf '{\n  "env": {},\n  "apps": [{"name": "%s desktop"}]\n}\n' "$SUNSHINE_NAME" >"$conf/apps.json"
    log "wrote $conf/apps.json"
  fi
  sun_args=(capture=x11 encoder=software origin_web_ui_allowed=pc "sunshine_name=$SUNSHINE_NAME"
    "file_apps=$conf/apps.json")
  # shellcheck disable=SC2206  # splitting SUNSHINE_EXTRA_ARGS on spaces is the documented behaviour
  [ -z "$SUNSHINE_EXTRA_ARGS" ] || sun_args+=($SUNSHINE_EXTRA_ARGS)
  if [ -n "$sun_user" ]; then
    log "setting the Web UI credentials (user $sun_user)"
    "$SUNSHINE" "${sun_args[@]}" --creds "$sun_user" "$sun_pass" >/dev/null ||
      { stop_child "$xvfb_pid" Xvfb; die "sunshine --creds failed"; }
  fi
  log "starting: $SUNSHINE ${sun_args[*]}"
  "$SUNSHINE" "${sun_args[@]}" &
  sun_pid=$!
fi
unset sun_pass

while [ "$stopping" = 0 ]; do
  if ! alive "$xvfb_pid"; then
    wait "$xvfb_pid" || status=$?
    log "$XVFB exited on its own (status $status)"
    failed=1
    break
  fi
  if [ "$sun_pid" != 0 ] && ! alive "$sun_pid"; then
    wait "$sun_pid" || status=$?
    sun_pid=0
    log "Sunshine exited on its own (status $status)"
    failed=1
    break
  fi
  if [ "$viewer_pid" != 0 ] && ! alive "$viewer_pid"; then
    rc=0
    wait "$viewer_pid" || rc=$?
    log "the viewer exited (status $rc): reconnecting in 1s"
    viewer_pid=0
    viewer_next=$((SECONDS + 1))
  fi
  if [ "$viewer_pid" = 0 ] && [ "$SECONDS" -ge "$viewer_next" ] && target_ready; then
    start_viewer
  fi
  if [ "$nudge_pending" = 1 ] && alive "$viewer_pid" && viewer_mapped; then
    sleep 0.3 # let the viewer select its input events on the new window
    xdotool click 8 && nudge_pending=0
  fi
  sleep 0.5 &
  wait $! || true
done

stop_child "$sun_pid" Sunshine
stop_child "$viewer_pid" "$VIEWER"
stop_child "$xvfb_pid" "$XVFB"
rm -rf "$LOCO_X_DIR"
if [ "$failed" = 1 ]; then
  [ "$status" != 0 ] || status=1
  exit "$status"
fi
log "stopped"
exit 0
