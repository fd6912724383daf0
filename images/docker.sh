# shellcheck shell=bash
# Sourced by images/build.sh: picks a docker CLI that can use BuildKit and makes sure an engine answers.
#
# Sets DOCKER (an array: the command to run) and exports DOCKER_BUILDKIT=1 when needed.
# docker_engine: as root, starts Debian's dockerd (vfs storage driver) when no engine answers.

docker_engine() {
  if docker buildx version >/dev/null 2>&1; then
    DOCKER=(docker)
  elif [ -x /usr/bin/docker ]; then
    # Debian's docker.io client talks to its own 20.10 engine's built-in BuildKit.
    DOCKER=(/usr/bin/docker)
    export DOCKER_BUILDKIT=1
  elif command -v docker >/dev/null; then
    DOCKER=(docker)
    export DOCKER_BUILDKIT=1
  else
    echo "loco images: no docker CLI (apt-get install docker.io)" >&2
    return 1
  fi
  if "${DOCKER[@]}" version >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v dockerd >/dev/null; then
    echo "loco images: no Docker engine answers (start dockerd, or apt-get install docker.io as root)" >&2
    return 1
  fi
  local log=${LOCO_CACHE:-$HOME/.cache/loco}/dockerd.log
  mkdir -p "$(dirname "$log")"
  printf '\033[1m==> %s\033[0m\n' "no Docker engine is running: starting dockerd (vfs storage driver; log: $log)" >&2
  nohup dockerd --storage-driver vfs >"$log" 2>&1 &
  local _
  for _ in $(seq 1 60); do
    "${DOCKER[@]}" version >/dev/null 2>&1 && return 0
    sleep 1
  done
  tail -20 "$log" >&2
  echo "loco images: dockerd did not come up in 60 s (log above)" >&2
  return 1
}
