#!/bin/sh
# /init of the loco test-pattern guest (busybox sh). @NAME@ placeholders are filled in by mkguest.py.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1

say() { echo "LOCO-TESTGUEST: $*"; }

period=@PERIOD@
static=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        loco.period=*) period="${arg#loco.period=}" ;;
        loco.static=*) static="${arg#loco.static=}" ;;
    esac
done

# No firmware framebuffer (PVH boot: vga= is not applied): load the bochs DRM
# driver; its fbdev emulation provides /dev/fb0 in QEMU's EDID preferred mode.
if [ ! -e /dev/fb0 ] && [ -s /lib/modules/load.order ]; then
    for m in $(cat /lib/modules/load.order); do
        insmod /lib/modules/$m.ko || say "insmod $m failed"
    done
    n=0
    while [ ! -e /dev/fb0 ] && [ $n -lt 100 ]; do sleep 0.05; n=$((n + 1)); done
fi
if [ ! -e /dev/fb0 ]; then
    say "ERROR no /dev/fb0"
    dmesg | grep -iE 'fb|vesa|drm|bochs'
    poweroff -f
fi

# Keep the kernel console off the framebuffer: unbind fbcon from the VTs
# (its cursor and any tty text would otherwise be drawn over the patterns).
# Shell builtins only; re-checked every pattern in case fbcon rebinds.
unbind_fbcon() {
    for v in /sys/class/vtconsole/vtcon*; do
        read -r name < "$v/name" || continue
        case "$name" in
            *"frame buffer"*)
                read -r b < "$v/bind"
                [ "$b" = 1 ] && echo 0 > "$v/bind"
                ;;
        esac
    done
}
echo 0 > /sys/class/graphics/fbcon/cursor_blink 2>/dev/null
unbind_fbcon

fb=/sys/class/graphics/fb0
read -r size < $fb/virtual_size
read -r bpp < $fb/bits_per_pixel
read -r stride < $fb/stride
read -r fbname < $fb/name
say "fb0 name=\"$fbname\" size=$size bpp=$bpp stride=$stride"
if [ "$size" != "@WIDTH@,@HEIGHT@" ] || [ "$bpp" != "@BPP@" ] || [ "$stride" != "@STRIDE@" ]; then
    say "ERROR framebuffer is not @WIDTH@x@HEIGHT@x@BPP@ stride @STRIDE@"
fi

if [ -n "$static" ]; then
    list="$static"
    msg="READY static pattern $static"
else
    list=
    i=0
    while [ $i -lt @COUNT@ ]; do list="$list $i"; i=$((i + 1)); done
    msg="READY cycling patterns$list every ${period}s"
fi
while :; do
    for i in $list; do
        cat /patterns/$i.raw > /dev/fb0
        if [ -n "$msg" ]; then say "$msg"; msg=; fi
        sleep "$period"
        unbind_fbcon
    done
done
