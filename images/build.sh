#!/usr/bin/env bash
# `./loco images [--push]`: builds loco's three container images with Docker.
#
#   loco-agent   agent/Dockerfile   the agent (and loco-lan, the guest LAN's switch)
#   loco-runner  runner/Dockerfile  QEMU and start.sh, one VM per container
#   loco-web     www/Dockerfile     the WebXR page behind nginx
#
# Each is tagged `<git short hash>` (with `-dirty` when the work tree has uncommitted changes) and
# `dev`, under $LOCO_REGISTRY/ when that is set (e.g. LOCO_REGISTRY=registry.example.com/loco).
# --push pushes every tag (needs LOCO_REGISTRY and a `docker login` done beforehand).
#
# On a machine that can pull images this is a plain `docker build` of each Dockerfile. Where the
# base images cannot be pulled (no registry access, as on loco's development machines), it says so
# and builds the same images from what is here: a Debian 12 base made from Debian's packages
# (images/debian-base.sh → --build-arg BASE_IMAGE), and the agent's binaries and the page built on
# this Debian 12 host (cargo, scripts/build-web.sh) instead of in the rust image
# (--build-arg AGENT_BUILD=prebuilt / WEB_BUILD=prebuilt, staged in images/prebuilt/).
#
# Needs a Docker engine; as root, with none running and Debian's dockerd installed, it starts one
# (vfs storage driver, log in $LOCO_CACHE/dockerd.log) and says so. BuildKit is required: the
# docker CLI's buildx plugin, or else Debian's docker.io client (/usr/bin/docker) with
# DOCKER_BUILDKIT=1, which uses Docker 20.10's built-in BuildKit.
# Prints the images' sizes last. Environment: LOCO_IMAGES_BASE (a base image to use as is),
# LOCO_IMAGES_PREBUILT=1 (force the host-built binaries and page).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export LOCO_CACHE=${LOCO_CACHE:-$HOME/.cache/loco}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$LOCO_CACHE/target}
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'loco images: %s\n' "$*" >&2; exit 1; }

push=0
for a in "$@"; do
  case $a in
    --push) push=1 ;;
    *) die "unknown argument '$a' (usage: ./loco images [--push])" ;;
  esac
done
registry=${LOCO_REGISTRY:-}
registry=${registry%/}
[ $push = 0 ] || [ -n "$registry" ] || die "--push needs LOCO_REGISTRY=host/path (where to push the images)"

# shellcheck source=images/docker.sh
. "$ROOT/images/docker.sh"
docker_engine

official_base=debian:bookworm-slim
rust_image=rust:1.95-slim-bookworm
pullable() { # pullable IMAGE: present, or pulled within a minute
  "${DOCKER[@]}" image inspect "$1" >/dev/null 2>&1 && return 0
  timeout 60 "${DOCKER[@]}" pull -q "$1" >/dev/null 2>&1
}

args=()
if [ -n "${LOCO_IMAGES_BASE:-}" ]; then
  base=$LOCO_IMAGES_BASE
  args+=(--build-arg "BASE_IMAGE=$base")
elif pullable "$official_base"; then
  base=$official_base
else
  say "$official_base cannot be pulled here: making a Debian 12 base from Debian's packages instead (images/debian-base.sh)"
  base=$(LOCO_DOCKER="${DOCKER[*]}" bash "$ROOT/images/debian-base.sh")
  args+=(--build-arg "BASE_IMAGE=$base")
fi

prebuilt=${LOCO_IMAGES_PREBUILT:-0}
if [ "$prebuilt" != 1 ] && ! pullable "$rust_image"; then
  say "$rust_image cannot be pulled here: building the agent and the page on this host and copying them in (AGENT_BUILD=prebuilt, WEB_BUILD=prebuilt)"
  prebuilt=1
fi
if [ "$prebuilt" = 1 ]; then
  # The binaries link against the host's glibc and libraries: the image's Debian must be the host's.
  host=$(. /etc/os-release && echo "${ID}:${VERSION_ID:-}")
  [ "$host" = debian:12 ] || die "prebuilt images need a Debian 12 host (this is $host): the binaries must match the image's libraries"
  say "building loco-agent and loco-lan (release) and the page on this host"
  (cd "$ROOT" && cargo build --release --locked -p loco-agent)
  bash "$ROOT/scripts/build-web.sh"
  rm -rf "$ROOT/images/prebuilt"
  mkdir -p "$ROOT/images/prebuilt/agent"
  strip -o "$ROOT/images/prebuilt/agent/loco-agent" "$CARGO_TARGET_DIR/release/loco-agent"
  strip -o "$ROOT/images/prebuilt/agent/loco-lan" "$CARGO_TARGET_DIR/release/loco-lan"
  cp -r "$ROOT/www/dist" "$ROOT/images/prebuilt/www"
  args+=(--build-arg AGENT_BUILD=prebuilt --build-arg WEB_BUILD=prebuilt)
fi

rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo nogit)
if [ "$rev" != nogit ] && [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  rev=$rev-dirty
fi
prefix=${registry:+$registry/}
built=()
t0=$SECONDS
for spec in loco-agent:agent/Dockerfile loco-runner:runner/Dockerfile loco-web:www/Dockerfile; do
  name=${spec%%:*}
  file=${spec#*:}
  say "building $prefix$name:$rev and :dev ($file)"
  t1=$SECONDS
  "${DOCKER[@]}" build --network host -q -f "$ROOT/$file" "${args[@]}" \
    --label "org.opencontainers.image.revision=$rev" \
    -t "$prefix$name:$rev" -t "$prefix$name:dev" "$ROOT" >/dev/null ||
    die "building $name failed (rerun: ${DOCKER[*]} build -f $file ${args[*]} .)"
  say "$name built in $((SECONDS - t1)) s"
  built+=("$prefix$name:$rev" "$prefix$name:dev")
done

if [ $push = 1 ]; then
  for t in "${built[@]}"; do
    say "pushing $t"
    "${DOCKER[@]}" push "$t"
  done
fi

echo "images (built in $((SECONDS - t0)) s; base $base$([ "$prebuilt" = 1 ] && echo ', agent and page built on this host')):"
for spec in loco-agent loco-runner loco-web; do
  size=$("${DOCKER[@]}" image inspect -f '{{ .Size }}' "$prefix$spec:$rev")
  printf '  %-40s %6d MiB\n' "$prefix$spec:$rev (:dev)" $((size / 1024 / 1024))
done
