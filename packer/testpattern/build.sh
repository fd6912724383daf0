#!/usr/bin/env bash
# Build the loco test-pattern guest (kernel + initramfs + reference patterns).
#
#   packer/testpattern/build.sh [OUTDIR]
#
# OUTDIR defaults to ${LOCO_CACHE:-$HOME/.cache/loco}/testguest. Outputs:
#   vmlinuz (bzImage)  vmlinux (PVH-bootable ELF, when extractable)  initrd.img
#   manifest.json  pattern-N.png  .recipe-hash
# The build is skipped when OUTDIR/.recipe-hash matches the hash of the recipe
# (this script, mkguest.py, init.sh, and the kernel / busybox binaries used).
# Prints OUTDIR on stdout when done. Needs: a Debian kernel in /boot
# (linux-image-amd64, with its /lib/modules), busybox-static, python3 (stdlib
# only), flock.
# Overrides: LOCO_TESTGUEST_KERNEL=/path/to/vmlinuz, LOCO_TESTGUEST_BUSYBOX=/path, PYTHON=python3.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-${LOCO_CACHE:-$HOME/.cache/loco}/testguest}"
out="${out%/}"
py="${PYTHON:-python3}"

die() { echo "testguest/build.sh: $*" >&2; exit 1; }

kernel="${LOCO_TESTGUEST_KERNEL:-}"
if [ -z "$kernel" ]; then
    kernel="$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1 || true)"
fi
[ -n "$kernel" ] && [ -r "$kernel" ] ||
    die "no readable kernel in /boot (apt-get install -y linux-image-amd64, or set LOCO_TESTGUEST_KERNEL)"

busybox="${LOCO_TESTGUEST_BUSYBOX:-}"
if [ -z "$busybox" ]; then
    for b in /bin/busybox /usr/bin/busybox; do
        if [ -x "$b" ]; then busybox="$b"; break; fi
    done
fi
[ -n "$busybox" ] || die "no busybox (apt-get install -y busybox-static)"
command -v "$py" >/dev/null || die "no $py"

recipe_hash="$(
    {
        cat "$here/build.sh" "$here/mkguest.py" "$here/init.sh"
        sha256sum "$kernel" "$busybox"
    } | sha256sum | cut -c1-16
)"

mkdir -p "$(dirname "$out")"
exec 9>"$out.lock"
flock 9

if [ -f "$out/.recipe-hash" ] && [ "$(cat "$out/.recipe-hash")" = "$recipe_hash" ] &&
    [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ] && [ -f "$out/manifest.json" ]; then
    echo "$out"
    exit 0
fi

echo "testguest/build.sh: building $out (recipe $recipe_hash, kernel $kernel, busybox $busybox)" >&2
tmp="$out.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
cp "$kernel" "$tmp/vmlinuz"
"$py" "$here/mkguest.py" "$tmp" --busybox "$busybox" --init "$here/init.sh" \
    --kernel "$kernel" --recipe-hash "$recipe_hash"
size=$(stat -c %s "$tmp/initrd.img")
[ "$size" -lt $((10 * 1024 * 1024)) ] || die "initrd.img too big: $size bytes"
echo "$recipe_hash" >"$tmp/.recipe-hash"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "testguest/build.sh: done, initrd.img is $size bytes" >&2
echo "$out"
