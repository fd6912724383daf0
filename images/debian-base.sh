#!/usr/bin/env bash
# Makes the images' Debian base locally, for machines that cannot pull one from a registry:
# debootstrap (minbase, Debian 12 "bookworm", from Debian's own archive) → `docker import`.
#
#   images/debian-base.sh [TAG]        default TAG: loco-base/debian:bookworm-slim
#
# The result is meant to stand in for the official debian:bookworm-slim (same release, same
# minbase package set, the same dpkg excludes for documentation and the same apt sources: main,
# updates, security), so the Dockerfiles build unchanged on top of it with
# `--build-arg BASE_IMAGE=TAG`. It is not the official image: it is built here from the packages,
# on this machine, and tagged under loco-base/ so nobody takes it for Docker Hub's.
#
# Kept: an image whose recipe label matches this script is reused (prints TAG and exits).
# Needs root (debootstrap), debootstrap and a running Docker engine; network access to the
# Debian mirror (LOCO_DEBIAN_MIRROR, default http://deb.debian.org/debian). The downloaded .debs
# are cached in ${LOCO_CACHE:-~/.cache/loco}/base.debs.
set -euo pipefail

tag=${1:-loco-base/debian:bookworm-slim}
mirror=${LOCO_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
docker=${LOCO_DOCKER:-docker}
cache=${LOCO_CACHE:-$HOME/.cache/loco}/base.debs
die() { echo "debian-base.sh: $*" >&2; exit 1; }

recipe=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)
have=$($docker image inspect -f '{{ index .Config.Labels "org.loco.base-recipe" }}' "$tag" 2>/dev/null || true)
if [ "$have" = "$recipe" ]; then
  echo "$tag"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "needs root for debootstrap (run: sudo $0 $*)"
command -v debootstrap >/dev/null || die "no debootstrap (apt-get install -y debootstrap)"

t0=$(date +%s)
echo "debian-base.sh: no base image can be pulled here; making $tag from Debian's packages (debootstrap --variant=minbase $suite, $mirror)" >&2
tmp=$(mktemp -d "${TMPDIR:-/tmp}/loco-base.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
mkdir -p "$root" "$cache"
debootstrap --variant=minbase --cache-dir="$cache" "$suite" "$root" "$mirror" >"$tmp/debootstrap.log" 2>&1 ||
  { tail -20 "$tmp/debootstrap.log" >&2; die "debootstrap failed (log above)"; }

# What the official slim image configures: no documentation, no man pages, no translations;
# apt keeps no package cache and no lists in the image.
cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
CFG
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
echo 'APT::Install-Recommends "false";' >"$root/etc/apt/apt.conf.d/docker-no-recommends"
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<CFG
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
CFG
rm -rf "$root"/usr/share/doc/*/[!c]* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
  "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/etc/hostname "$root"/etc/resolv.conf
: >"$root/etc/machine-id"

tar --numeric-owner --xattrs -C "$root" -cf - . |
  $docker import \
    --change 'CMD ["bash"]' \
    --change "LABEL org.loco.base-recipe=$recipe org.loco.base-source=\"debootstrap --variant=minbase $suite $mirror\"" \
    - "$tag" >/dev/null
size=$($docker image inspect -f '{{ .Size }}' "$tag")
echo "debian-base.sh: $tag made in $(( $(date +%s) - t0 )) s ($((size / 1024 / 1024)) MiB)" >&2
echo "$tag"
