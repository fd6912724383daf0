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
tone=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        loco.period=*) period="${arg#loco.period=}" ;;
        loco.static=*) static="${arg#loco.static=}" ;;
        loco.tone=*) tone="${arg#loco.tone=}" ;;
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

# Sound, when QEMU has an ES1370 (testguest.qemu_command(audio=True)): load snd-ens1370 and
# the OSS emulation, then play loco.tone=HZ (continuous) or HZ,ON_MS,OFF_MS (bursts) as
# S16_LE mono @RATE@ Hz on /dev/dsp (dspsetup sets the format on fd 3; closing fd 3 waits
# until the samples have played). No loco.tone: the device stays closed, i.e. silent.
tsay() { echo "LOCO-TONE: $*"; }
has_es1370() {
    for d in /sys/bus/pci/devices/*; do
        read -r v < "$d/vendor" && read -r p < "$d/device" || continue
        [ "$v" = 0x1274 ] && [ "$p" = 0x5000 ] && return 0
    done
    return 1
}
tone_samples() { # HZ SAMPLES FADE_SAMPLES > raw
    awk -v hz="$1" -v n="$2" -v fade="$3" -v rate=@RATE@ -v amp=@AMPLITUDE@ -f /tone.awk | xxd -r -p
}
ms_to_s() { echo "$(($1 / 1000)).$(($1 % 1000 / 100))$(($1 % 100 / 10))$(($1 % 10))"; }
sound() {
    if ! has_es1370; then
        [ -z "$tone" ] || tsay "ERROR loco.tone=$tone but no ES1370 sound device"
        return
    fi
    for m in $(cat /lib/modules/sound.order); do
        insmod /lib/modules/$m.ko || say "insmod $m failed"
    done
    n=0
    while [ ! -e /dev/dsp ] && [ $n -lt 100 ]; do sleep 0.05; n=$((n + 1)); done
    if [ ! -e /dev/dsp ]; then
        say "ERROR sound: no /dev/dsp"
        [ -z "$tone" ] || tsay "ERROR no /dev/dsp"
        return
    fi
    say "sound: ES1370 /dev/dsp ready"
    [ -n "$tone" ] || return
    old_ifs=$IFS; IFS=,; set -- $tone; IFS=$old_ifs
    hz=$1 on=${2:-} off=${3:-0}
    case "$hz$on$off" in *[!0-9]*|"") tsay "ERROR bad loco.tone=$tone (HZ or HZ,ON_MS,OFF_MS)"; return ;; esac
    if [ -z "$on" ]; then
        # One second holds exactly HZ periods: looping it is seamless.
        tone_samples "$hz" @RATE@ 0 > /tmp/tone.raw
        tsay "on $hz"
        { dspsetup || { tsay "ERROR dspsetup status $?"; exit 1; }; while cat /tmp/tone.raw; do :; done >&3; } 3>/dev/dsp 4>/dev/mixer
        tsay "off"
        return
    fi
    tone_samples "$hz" $((on * @RATE@ / 1000)) $((@FADE_MS@ * @RATE@ / 1000)) > /tmp/tone.raw
    off_s=$(ms_to_s "$off")
    while :; do
        tsay "on $hz"
        { dspsetup || { tsay "ERROR dspsetup status $?"; exit 1; }; cat /tmp/tone.raw >&3; } 3>/dev/dsp 4>/dev/mixer || return
        tsay "off"
        sleep "$off_s"
    done
}

# The ACPI power button (QMP system_powerdown): load button + evdev, wait for a press on the
# "Power Button" input device, then power off (QEMU's SHUTDOWN; with -no-shutdown it stays, stopped).
# Set up before READY, so a press right after READY is not lost.
power_button() {
    [ -s /lib/modules/power.order ] || return
    for m in $(cat /lib/modules/power.order); do
        insmod /lib/modules/$m.ko 2>/dev/null
    done
    found=
    n=0
    while [ $n -lt 40 ] && ! grep -qx "Power Button" /sys/class/input/event*/device/name 2>/dev/null; do
        sleep 0.05
        n=$((n + 1))
    done
    for d in /sys/class/input/event*; do
        [ -e "$d/device/name" ] || continue
        read -r name < "$d/device/name"
        [ "$name" = "Power Button" ] || continue
        ev=/dev/input/${d##*/}
        [ -e "$ev" ] || continue
        found="$found $ev"
        # evdev reads whole events (24 bytes): cat reads them, the shell waits for the first byte.
        cat "$ev" | { read -r -n 1 _; say "power button pressed: powering off"; poweroff -f; } &
    done
    sleep 0.1
    [ -n "$found" ] && say "power button:$found" || say "no power button"
}
power_button

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
        if [ -n "$msg" ]; then
            say "$msg"
            msg=
            sound &
        fi
        sleep "$period"
        unbind_fbcon
    done
done
