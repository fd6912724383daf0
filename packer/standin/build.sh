#!/usr/bin/env bash
# Build the loco stand-in desktop guest: Debian 12 (bookworm) + Xorg + IceWM, from Debian
# packages only, booted by QEMU with -kernel/-initrd (no bootloader).
#
#   packer/standin/build.sh [OUTDIR]
#
# OUTDIR defaults to ${LOCO_CACHE:-$HOME/.cache/loco}/standin. Outputs:
#   standin.qcow2  the root filesystem (ext4, no partition table: root=/dev/vda)
#   vmlinuz        Debian's kernel (linux-image-amd64) from the image
#   initrd.img     its initramfs (virtio disk modules only)
#   manifest.json  what was built (kernel version, sizes, build seconds, recipe hash)
#   .recipe-hash
# How QEMU runs it lives in packer/qemu-args.json ("standin"), shared with scripts/up.py
# and the runner. The build is skipped when OUTDIR/.recipe-hash matches the recipe (this
# script, packages.txt and every file under rootfs/). Prints OUTDIR on stdout when done;
# progress goes to stderr.
#
# Needs root for two steps only: debootstrap and the chroot (apt-get, useradd,
# update-initramfs), which mounts proc/sysfs/devtmpfs into the tree while it runs.
# The disk image itself is made without any mount: `mke2fs -d TREE` then `qemu-img convert`.
# Needs: debootstrap, e2fsprogs (mke2fs >= 1.43), qemu-utils, flock; network access to the
# Debian mirror (LOCO_DEBIAN_MIRROR, default http://deb.debian.org/debian).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-${LOCO_CACHE:-$HOME/.cache/loco}/standin}"
out="${out%/}"
mirror="${LOCO_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
fs_size=2G   # sparse: the qcow2 holds only what is used

die() { echo "standin/build.sh: $*" >&2; exit 1; }
t_start=$(date +%s)
step() { echo "standin/build.sh: [$1/7 +$(( $(date +%s) - t_start ))s] $2" >&2; }

recipe_hash="$(
    {
        echo "$suite"
        cat "$here/build.sh" "$here/packages.txt"
        (cd "$here/rootfs" && find . -type f -o -type l | LC_ALL=C sort | while read -r f; do
            echo "== $f $(stat -c %a "$f")"; cat "$f"; done)
    } | sha256sum | cut -c1-16
)"

mkdir -p "$(dirname "$out")"
exec 9>"$out.lock"
flock 9

if [ -f "$out/.recipe-hash" ] && [ "$(cat "$out/.recipe-hash")" = "$recipe_hash" ] &&
    [ -f "$out/standin.qcow2" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ]; then
    echo "$out"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "needs root for debootstrap and chroot (run: sudo $0 ${1:-})"
for t in debootstrap mke2fs qemu-img chroot flock modprobe depmod; do
    command -v "$t" >/dev/null || die "no $t (apt-get install -y debootstrap e2fsprogs qemu-utils util-linux kmod)"
done

echo "standin/build.sh: building $out (recipe $recipe_hash) from $mirror $suite; takes several minutes" >&2
tmp="$out.tmp.$$"
root="$tmp/root"
mounted=()
cleanup() {
    local m
    for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
rm -rf "$tmp"
mkdir -p "$root" "$out.debs"

step 1 "debootstrap --variant=minbase $suite"
debootstrap --variant=minbase --cache-dir="$out.debs" "$suite" "$root" "$mirror" >&2

step 2 "recipe files (rootfs/) into the tree"
tar -C "$here/rootfs" --owner=0 --group=0 -cf - . | tar -C "$root" --keep-directory-symlink -xf -
echo "deb $mirror $suite main" >"$root/etc/apt/sources.list"
cp /etc/resolv.conf "$root/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"   # no daemons start in the chroot
chmod 755 "$root/usr/sbin/policy-rc.d"
# Minbase installed docs before our dpkg excludes existed.
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*

step 3 "apt-get install $(grep -v '^#' "$here/packages.txt" | xargs)"
for m in proc sys dev; do
    case $m in
        proc) mount -t proc proc "$root/proc" ;;
        sys) mount -t sysfs sysfs "$root/sys" ;;
        dev) mount --bind /dev "$root/dev" ;;
    esac
    mounted=("$root/$m" "${mounted[@]}")
done
mkdir -p "$root/var/cache/apt/archives"
cp "$out.debs"/*.deb "$root/var/cache/apt/archives/" 2>/dev/null || true
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 sh -euc '
    apt-get update -q
    apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        $(grep -v "^#" /dev/stdin)
    useradd -m -s /bin/sh -G video,input,dialout,audio loco
    passwd -d root >/dev/null
' <"$here/packages.txt" >&2
cp -n "$root"/var/cache/apt/archives/*.deb "$out.debs/" 2>/dev/null || true

step 4 "IceWM theme, kernel and initrd"
theme=""
for t in win95 Win95 nice; do
    if [ -d "$root/usr/share/icewm/themes/$t" ]; then theme="$t"; break; fi
done
if [ -n "$theme" ]; then
    echo "Theme=\"$theme/default.theme\"" >"$root/etc/X11/icewm/theme"
fi
kver="$(ls "$root/lib/modules" | sort -V | tail -n 1)"
[ -n "$kver" ] || die "no kernel modules in the tree"
chroot "$root" update-initramfs -u -k "$kver" >&2
cp "$root/boot/vmlinuz-$kver" "$tmp/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$tmp/initrd.img"
for m in "${mounted[@]}"; do umount "$m"; done
mounted=()

step 5 "slimming: docs, apt lists, caches, unused kernel modules"
rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/resolv.conf"
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/tmp/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/boot/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
kmod="$root/lib/modules/$kver/kernel"
# Of the Ethernet drivers only 8390 stays: ne2k-pci, the NIC the guest LAN gives the VM
# (lan_nic in packer/qemu-args.json, the same RTL8029 as Windows 98's).
find "$kmod/drivers/net/ethernet" -mindepth 1 -maxdepth 1 ! -name 8390 -exec rm -rf {} +
for d in drivers/net/wireless drivers/infiniband drivers/media drivers/staging \
    drivers/gpu/drm/amd drivers/gpu/drm/nouveau drivers/gpu/drm/i915 drivers/gpu/drm/radeon \
    drivers/isdn drivers/bluetooth drivers/scsi drivers/target drivers/iio drivers/mtd drivers/md \
    drivers/net/can drivers/net/usb drivers/hwmon drivers/watchdog net/wireless net/mac80211 \
    net/bluetooth fs/btrfs fs/xfs fs/ocfs2 fs/gfs2 fs/nfs fs/nfsd fs/ceph fs/smb fs/cifs fs/f2fs; do
    rm -rf "${kmod:?}/$d"
done
# Of the sound drivers only snd-ens1370 and the modules it needs stay (modprobe --show-depends: snd,
# snd-pcm, snd-timer, snd-rawmidi, snd-seq-device, soundcore; the AK4531 codec is built in): the
# ES1370 is the profile's sound card (sound in packer/qemu-args.json), and udev loads its driver.
keep="$(modprobe -d "$root" -S "$kver" --show-depends snd-ens1370 |
    awk '$1 == "insmod" { sub(".*/lib/modules/[^/]*/kernel/", "", $2); print $2 }')"
grep -qx 'sound/pci/snd-ens1370.ko.*' <<<"$keep" || die "no snd-ens1370 in kernel $kver (modprobe says: $keep)"
(cd "$kmod" && find sound -type f) | grep -vxF "$keep" | (cd "$kmod" && xargs -r rm -f)
find "$kmod/sound" -depth -type d -empty -delete
depmod -b "$root" "$kver"
# Mesa's DRI drivers and the LLVM they load (~160 MiB): only OpenGL clients use them; Xorg runs
# without glamor (rootfs/etc/X11/xorg.conf.d/10-loco.conf) and no app here uses GL.
rm -rf "$root"/usr/lib/x86_64-linux-gnu/dri "$root"/usr/lib/x86_64-linux-gnu/libLLVM-* \
    "$root"/usr/lib/x86_64-linux-gnu/libz3.so.*
echo "loco-standin" >"$root/etc/hostname"

step 6 "mke2fs -d (no mount) into a $fs_size sparse ext4 image"
used_mb=$(du -sm "$root" | cut -f1)
echo "standin/build.sh: tree is ${used_mb} MiB" >&2
truncate -s "$fs_size" "$tmp/standin.raw"
mke2fs -q -t ext4 -L loco-standin -m 0 -d "$root" "$tmp/standin.raw"

step 7 "qemu-img convert -c -O qcow2"
qemu-img convert -p -c -O qcow2 "$tmp/standin.raw" "$tmp/standin.qcow2" >&2
rm -f "$tmp/standin.raw"
rm -rf "$root"
secs=$(( $(date +%s) - t_start ))
qsize=$(stat -c %s "$tmp/standin.qcow2")
cat >"$tmp/manifest.json" <<JSON
{
  "recipe_hash": "$recipe_hash",
  "suite": "$suite",
  "kernel_version": "$kver",
  "icewm_theme": "$theme",
  "tree_mib": $used_mb,
  "qcow2_bytes": $qsize,
  "build_seconds": $secs
}
JSON
echo "$recipe_hash" >"$tmp/.recipe-hash"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "standin/build.sh: done in ${secs}s: standin.qcow2 is $((qsize / 1048576)) MiB (tree ${used_mb} MiB)" >&2
echo "$out"
