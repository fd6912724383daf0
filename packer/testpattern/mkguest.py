#!/usr/bin/env python3
"""Generate the loco test-pattern guest's patterns, manifest and initramfs.

Standard library only (no numpy), so build.sh works on a bare Debian host.

    mkguest.py OUTDIR --kernel /boot/vmlinuz-VER --busybox /bin/busybox --init init.sh

writes into OUTDIR:
    vmlinux         the kernel's ELF image, extracted from the bzImage, when it
                    has a PVH entry note (QEMU boots it directly: no real-mode
                    setup, no in-guest decompression -> ~3 s faster under TCG)
    initrd.img      gzip'd newc cpio: busybox, /init, /patterns/N.raw (BGRX),
                    bochs DRM module + dependencies (for the PVH boot path),
                    snd-ens1370 + OSS emulation modules, /bin/dspsetup, tone.awk
    manifest.json   geometry, period, kernel/QEMU args, patterns as rectangles,
                    sound (loco.tone)
    pattern-N.png   reference image of pattern N (RGB)
build.sh copies the bzImage itself to OUTDIR/vmlinuz.

The cpio archive is written directly (not with cpio(1)) so that it can hold a
root-owned /dev/console node without the builder being root, and so that it is
byte-for-byte reproducible (fixed mtimes, sorted entries).
"""

import argparse
import gzip
import io
import json
import lzma
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib

WIDTH, HEIGHT = 1024, 768
BPP = 32
STRIDE = WIDTH * 4
# Seconds each pattern stays on screen (guest default; loco.period= overrides).
PERIOD_S = 0.5
# Two ways to get a 1024x768x32 /dev/fb0 (stride 4096, BGRX), same cmdline:
#  * bzImage boot (vmlinuz): vga=0x344 = SeaVGABIOS/bochs VBE mode 0x144
#    (1024x768x32) + 0x200 ("VESA mode" flag) -> built-in vesafb.
#  * PVH boot (vmlinux): no real-mode setup, so vga= is ignored; /init loads
#    the bochs DRM driver, whose fbdev emulation uses the EDID preferred mode
#    that QEMU's VGA device advertises: xres/yres below.
KERNEL_CMDLINE = (
    "console=ttyS0 vga=0x344 quiet loglevel=3 panic=1 "
    "vt.global_cursor_default=0 consoleblank=0"
)
QEMU_VGA_DEVICE = f"VGA,xres={WIDTH},yres={HEIGHT}"
# DRM driver for QEMU's std VGA (loaded with its dependencies from modules.dep).
FB_MODULE = "bochs"

# Sound (qemu_command(audio=True): QEMU's ES1370): the ALSA driver and its OSS emulation, so
# busybox alone can play PCM by writing /dev/dsp. Loaded by /init when the ES1370 is present.
SOUND_MODULES = ["snd_ens1370", "snd_pcm_oss"]
# The ACPI power button (built as modules in Debian's kernel) and the event device /init reads it from.
POWER_MODULES = ["button", "evdev"]
# PCM the guest plays: S16_LE mono at 44100 Hz. 44100 = 1411200 / 32 is a rate the ES1370's
# DAC2 makes exactly (and QEMU's default audiodev rate), so nothing resamples it in the guest.
SOUND_RATE = 44100
SOUND_AMPLITUDE = 16384  # -6 dBFS
SOUND_FADE_MS = 5  # linear fade in/out of each burst (no clicks); a continuous tone has none

# Saturated colours; each is its own complement's opposite so that
# "bars" and "bars_inv" differ by 255 in every channel of every pixel.
W = (255, 255, 255)
Y = (255, 255, 0)
C = (0, 255, 255)
G = (0, 255, 0)
M = (255, 0, 255)
R = (255, 0, 0)
B = (0, 0, 255)
K = (0, 0, 0)
ORANGE = (255, 128, 0)
NAVY = (0, 64, 128)

# All rectangle edges are multiples of 16 so blocks line up with H.264/VP8
# macroblocks and 4:2:0 chroma samples (no chroma bleeding across edges).
GRID = 16


def _vbars(colours):
    w = WIDTH // len(colours)
    return [{"x": i * w, "y": 0, "w": w, "h": HEIGHT, "rgb": list(c)} for i, c in enumerate(colours)]


def _hbars(colours):
    h = HEIGHT // len(colours)
    return [{"x": 0, "y": i * h, "w": WIDTH, "h": h, "rgb": list(c)} for i, c in enumerate(colours)]


def _checker(cols, rows, a, b):
    w, h = WIDTH // cols, HEIGHT // rows
    return [
        {"x": cx * w, "y": cy * h, "w": w, "h": h, "rgb": list(a if (cx + cy) % 2 == 0 else b)}
        for cy in range(rows)
        for cx in range(cols)
    ]


PATTERNS = [
    # SMPTE-like order: W Y C G M R B K, 128 px wide each.
    {"name": "vbars", "rects": _vbars([W, Y, C, G, M, R, B, K])},
    # Exact complement of vbars (= the bars in reverse order).
    {"name": "vbars_inv", "rects": _vbars([K, B, R, M, G, C, Y, W])},
    # 8 horizontal bars, 96 px high each.
    {"name": "hbars", "rects": _hbars([R, G, B, K, W, M, Y, C])},
    # 4x3 checkerboard of 256x256 blocks, orange / navy.
    {"name": "checker", "rects": _checker(4, 3, ORANGE, NAVY)},
]


def pattern_grid(p):
    """Pattern sampled at every GRID-th pixel (exact, since edges are on GRID)."""
    gw, gh = WIDTH // GRID, HEIGHT // GRID
    g = [[None] * gw for _ in range(gh)]
    for r in p["rects"]:
        for gy in range(r["y"] // GRID, (r["y"] + r["h"]) // GRID):
            for gx in range(r["x"] // GRID, (r["x"] + r["w"]) // GRID):
                g[gy][gx] = tuple(r["rgb"])
    return g


def validate(patterns):
    for p in patterns:
        for r in p["rects"]:
            for k in ("x", "y", "w", "h"):
                assert r[k] % GRID == 0, (p["name"], r)
        g = pattern_grid(p)
        assert all(c is not None for row in g for c in row), f"{p['name']}: not fully covered"


def pair_psnr(a, b):
    ga, gb = pattern_grid(a), pattern_grid(b)
    se, n = 0, 0
    for ra, rb in zip(ga, gb):
        for ca, cb in zip(ra, rb):
            se += sum((x - y) ** 2 for x, y in zip(ca, cb))
            n += 3
    mse = se / n
    return float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def render_rows(p, order):
    """Yield one bytes object per scanline; order='bgrx' or 'rgb'."""
    rowcache = {}
    for y in range(HEIGHT):
        segs = sorted((r for r in p["rects"] if r["y"] <= y < r["y"] + r["h"]), key=lambda r: r["x"])
        key = tuple((r["x"], r["w"], tuple(r["rgb"])) for r in segs)
        row = rowcache.get(key)
        if row is None:
            parts = []
            for r in segs:
                rr, gg, bb = r["rgb"]
                px = bytes((bb, gg, rr, 0)) if order == "bgrx" else bytes((rr, gg, bb))
                parts.append(px * r["w"])
            row = b"".join(parts)
            rowcache[key] = row
        yield row


def write_png(path, width, height, rows_rgb):
    def chunk(tag, data):
        c = struct.pack(">I", len(data)) + tag + data
        return c + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + r for r in rows_rgb)
    png = b"\x89PNG\r\n\x1a\n"
    png += chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9))
    png += chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


class Cpio:
    """Minimal newc ("070701") writer; every entry owned by root, mtime 0."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name, mode, data=b"", rdev=(0, 0), nlink=1):
        nameb = name.encode() + b"\x00"
        hdr = "070701" + "".join(
            f"{v:08X}"
            for v in (self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(nameb), 0)
        )
        self.ino += 1
        out = hdr.encode() + nameb
        out += b"\x00" * (-len(out) % 4)
        out += data
        out += b"\x00" * (-len(data) % 4)
        self.buf.write(out)

    def dir(self, name, perm=0o755):
        self._entry(name, 0o040000 | perm, nlink=2)

    def file(self, name, data, perm=0o644):
        self._entry(name, 0o100000 | perm, data)

    def symlink(self, name, target):
        self._entry(name, 0o120000 | 0o777, target.encode())

    def chardev(self, name, major, minor, perm=0o600):
        self._entry(name, 0o020000 | perm, rdev=(major, minor))

    def finish(self):
        self.ino = 0
        self._entry("TRAILER!!!", 0)
        data = self.buf.getvalue()
        return data + b"\x00" * (-len(data) % 512)


def is_static_elf(data):
    """True if the ELF64 little-endian binary has no PT_INTERP (dynamic loader)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, = struct.unpack_from("<I", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def bzimage_version(data):
    """Kernel release string from a bzImage's setup header (e.g. '6.1.0-56-amd64')."""
    if len(data) < 0x210 or data[0x202:0x206] != b"HdrS":
        raise ValueError("not a bzImage")
    (off,) = struct.unpack_from("<H", data, 0x20E)
    raw = data[0x200 + off : 0x200 + off + 256]
    return raw.split(b"\0")[0].split(b" ")[0].decode()


def _decompress_from(data, i, kind):
    if kind == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[i:])
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[i:])
    if kind == "zstd" and shutil.which("zstd"):
        r = subprocess.run(["zstd", "-dc"], input=data[i:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        return r.stdout
    return b""


def extract_vmlinux(data):
    """The ELF kernel inside a bzImage (xz, gzip, or zstd if the zstd CLI exists), or None."""
    magics = [(b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x1f\x8b\x08", "gzip")]
    for magic, kind in magics:
        start = 0
        while True:
            i = data.find(magic, start)
            if i < 0:
                break
            start = i + 1
            try:
                out = _decompress_from(data, i, kind)
            except (lzma.LZMAError, zlib.error, EOFError):
                continue
            if out[:4] == b"\x7fELF":
                return out
    return None


def has_pvh_note(elf):
    """True if the ELF64 has a Xen PHYS32_ENTRY note (what QEMU's PVH loader needs)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return False
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for k in range(phnum):
        base = phoff + k * phentsize
        (p_type,) = struct.unpack_from("<I", elf, base)
        if p_type != 4:  # PT_NOTE
            continue
        p_offset, _, _, p_filesz = struct.unpack_from("<QQQQ", elf, base + 8)
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == 18:  # XEN_ELFNOTE_PHYS32_ENTRY
                return True
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def write_sparse(path, data, block=65536):
    zero = bytes(block)
    with open(path, "wb") as f:
        for off in range(0, len(data), block):
            chunk = data[off : off + block]
            if chunk == zero[: len(chunk)]:
                f.seek(len(chunk), os.SEEK_CUR)
            else:
                f.write(chunk)
        f.truncate(len(data))


def module_chain(moddir, name):
    """[(modname, path)] for `name` and its dependencies, in load order, from modules.dep."""
    deps = {}
    with open(os.path.join(moddir, "modules.dep")) as f:
        for line in f:
            mod, _, rest = line.partition(":")
            deps[mod.strip()] = rest.split()

    def modname(p):
        return re.sub(r"\.ko(\..*)?$", "", os.path.basename(p)).replace("-", "_")

    target = next((m for m in deps if modname(m) == name), None)
    if target is None:
        raise FileNotFoundError(f"module {name} not in {moddir}/modules.dep")
    # modules.dep lists dependencies so that loading them last-to-first works.
    order = list(reversed(deps[target])) + [target]
    return [(modname(m), os.path.join(moddir, m)) for m in order]


def read_module(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".zst"):
        r = subprocess.run(["zstd", "-dc", path], stdout=subprocess.PIPE, check=True)
        return r.stdout
    return data


class _Asm:
    """Just enough x86-64 for dspsetup_elf(): 32-bit moves, RIP-relative operands, rel32 jumps."""

    REG = {"eax": 0, "ebx": 3, "esi": 6, "edi": 7}

    def __init__(self):
        self.code = bytearray()
        self.labels = {}
        self.fixups = []  # (position of a rel32, label, address the rel32 is relative to)

    def _rel(self, label, end_extra=0):
        # The rel32 is at the current end; it counts from the end of the instruction.
        self.fixups.append((len(self.code), label, len(self.code) + 4 + end_extra))
        self.code += b"\0\0\0\0"

    def label(self, name):
        self.labels[name] = len(self.code)

    def mov(self, reg, imm):  # mov r32, imm32
        self.code += bytes([0xB8 + self.REG[reg]]) + struct.pack("<I", imm)

    def lea_rdx(self, label):  # lea rdx, [rip + label]
        self.code += b"\x48\x8d\x15"
        self._rel(label)

    def cmp_mem(self, label, imm):  # cmp dword [rip + label], imm32
        self.code += b"\x81\x3d"
        self._rel(label, end_extra=4)
        self.code += struct.pack("<I", imm)

    def js(self, label):
        self.code += b"\x0f\x88"
        self._rel(label)

    def jne(self, label):
        self.code += b"\x0f\x85"
        self._rel(label)

    def raw(self, b):
        self.code += b

    def long(self, name, value):
        self.label(name)
        self.code += struct.pack("<I", value)

    def link(self):
        for pos, label, base in self.fixups:
            struct.pack_into("<i", self.code, pos, self.labels[label] - base)
        return bytes(self.code)


def dspsetup_elf(rate=SOUND_RATE):
    """A tiny static x86-64 Linux ELF (361 bytes): the OSS ioctls busybox has no applet for.

    On fd 3 (open /dev/dsp there): SNDCTL_DSP_SETFMT AFMT_S16_LE, SNDCTL_DSP_CHANNELS 1,
    SNDCTL_DSP_SPEED `rate`; exit 1/2/3 when that ioctl fails or the driver answers a different
    format/channels/rate. Then, best effort, on fd 4 (/dev/mixer):
    SOUND_MIXER_WRITE_VOLUME and SOUND_MIXER_WRITE_PCM 100/100, so that a codec which applies
    its mixer is not left muted or quiet (with it, QEMU's ES1370 passes the samples on unchanged:
    test_audio.py). Exit 0. OSS settings belong to the open file, so the shell keeps fd 3 open and
    writes the samples to it afterwards:  { dspsetup && cat tone.raw >&3; } 3>/dev/dsp 4>/dev/mixer
    """
    SYS_IOCTL, SYS_EXIT = 16, 60
    a = _Asm()

    def ioctl(fd, request, arg):
        a.mov("edi", fd)
        a.mov("esi", request)
        a.lea_rdx(arg)
        a.mov("eax", SYS_IOCTL)
        a.raw(b"\x0f\x05")  # syscall

    checks = [
        (0xC0045005, "fmt", 0x10),  # SNDCTL_DSP_SETFMT, AFMT_S16_LE
        (0xC0045006, "chans", 1),  # SNDCTL_DSP_CHANNELS
        (0xC0045002, "rate", rate),  # SNDCTL_DSP_SPEED
    ]
    for status, (request, arg, want) in enumerate(checks, 1):
        ioctl(3, request, arg)
        a.mov("ebx", status)
        a.raw(b"\x48\x85\xc0")  # test rax, rax
        a.js("exit")
        a.cmp_mem(arg, want)
        a.jne("exit")
    ioctl(4, 0xC0044D00, "vol")  # SOUND_MIXER_WRITE_VOLUME (errors ignored)
    ioctl(4, 0xC0044D04, "pcm")  # SOUND_MIXER_WRITE_PCM
    a.raw(b"\x31\xdb")  # xor ebx, ebx
    a.label("exit")
    a.raw(b"\x89\xdf")  # mov edi, ebx
    a.mov("eax", SYS_EXIT)
    a.raw(b"\x0f\x05")  # syscall
    for _, arg, want in checks:
        a.long(arg, want)
    a.long("vol", 100 | 100 << 8)
    a.long("pcm", 100 | 100 << 8)
    code = a.link()

    # One RWX PT_LOAD holding the whole file (the ioctls write their answers into the data).
    base, ehsize, phsize = 0x400000, 64, 56
    size = ehsize + phsize + len(code)
    ehdr = struct.pack(
        "<16sHHIQQQIHHHHHH",
        b"\x7fELF\x02\x01\x01" + bytes(9), 2, 0x3E, 1, base + ehsize + phsize, ehsize, 0, 0,
        ehsize, phsize, 1, 0, 0, 0,
    )
    phdr = struct.pack("<IIQQQQQQ", 1, 7, 0, base, base, size, size, 0x1000)
    return ehdr + phdr + code


# Applets the /init script uses (symlinked to /bin/busybox).
APPLETS = ["sh", "mount", "cat", "sleep", "echo", "grep", "ls", "dmesg", "poweroff", "insmod", "awk", "xxd"]


# Sine samples for /init, in busybox awk (Debian's is built without libm: no sin(), no ^).
# sin() from its Taylor series at a run's start, then the recurrence
# s[i+1] = 2 cos(w) s[i] - s[i-1]: within 1 LSB of round-toward-zero(amp * sin). At
# 44.1 kHz a tone of HZ repeats exactly every p = 44100 / gcd(HZ, 44100) samples (2205 for
# 440 Hz), so only one period is computed and then copied (awk is ~100x slower under TCG:
# ~0.5 s for 440 Hz, but ~10 s for a prime HZ such as 523, whose period is a whole second).
# Writes S16_LE as hex text for `xxd -r -p` (awk cannot print NUL bytes). fade: samples of
# linear fade in and out.
#   awk -v hz=440 -v n=44100 -v fade=220 -v rate=44100 -v amp=16384 -f /tone.awk | xxd -r -p
TONE_AWK = r"""
function tsin(x,  t, s, k) { t = x; s = x; for (k = 1; k < 40; k++) { t = -t * x * x / ((2 * k) * (2 * k + 1)); s += t } return s }
function gcd(a, b,  t) { while (b) { t = a % b; a = b; b = t } return a }
# Samples [a, b) as hex, 64 a line, printed (keep: returned); faded: with the fade in/out gain.
function run(a, b, faded, keep,  ph, s0, s1, s2, i, g, v, line, out) {
    ph = 2 * PI * ((hz * a) % rate) / rate
    s0 = tsin(ph); s1 = tsin(ph + w); line = ""; out = ""
    for (i = a; i < b; i++) {
        g = 1
        if (faded) { if (i < fade) g = i / fade; else if (n - 1 - i < fade) g = (n - 1 - i) / fade }
        v = int(amp * g * s0); if (v < 0) v += 65536
        line = line hex[v % 256] hex[int(v / 256)]
        if ((i - a) % 64 == 63) { if (keep) out = out line; else print line; line = "" }
        s2 = c2 * s1 - s0; s0 = s1; s1 = s2
    }
    if (keep) return out line
    print line
}
BEGIN {
    PI = 3.141592653589793
    for (v = 0; v < 256; v++) hex[v] = sprintf("%02x", v)
    w = 2 * PI * hz / rate; h = tsin(w / 2); c2 = 2 * (1 - 2 * h * h)
    if (2 * fade > n) fade = int(n / 2)
    p = rate / gcd(hz, rate)
    run(0, fade, 1, 0)
    if (p > 4410) run(fade, n - fade, 0, 0)
    else {
        cyc = run(0, p, 0, 1)
        for (i = fade; i < n - fade; i += m) {
            k = i % p; m = p - k; if (m > n - fade - i) m = n - fade - i
            print substr(cyc, 4 * k + 1, 4 * m)
        }
    }
    run(n - fade, n, 1, 0)
}
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--busybox", required=True)
    ap.add_argument("--init", required=True, help="path of the guest /init shell script")
    ap.add_argument("--kernel", required=True, help="the bzImage (/boot/vmlinuz-VER)")
    ap.add_argument("--modules-dir", help="default: /lib/modules/VER of the kernel")
    ap.add_argument("--no-pvh", action="store_true", help="do not extract vmlinux (bzImage boot only)")
    ap.add_argument("--recipe-hash", default="")
    a = ap.parse_args()

    with open(a.kernel, "rb") as f:
        bz = f.read()
    kver = bzimage_version(bz)
    moddir = a.modules_dir or os.path.join("/lib/modules", kver)

    validate(PATTERNS)
    n = len(PATTERNS)
    psnr = [[pair_psnr(PATTERNS[i], PATTERNS[j]) for j in range(n)] for i in range(n)]
    worst = max(psnr[i][j] for i in range(n) for j in range(n) if i != j)
    assert worst < 12.0, f"patterns too similar: {worst:.1f} dB"

    os.makedirs(a.outdir, exist_ok=True)
    cp = Cpio()
    for d in ("bin", "dev", "proc", "sys", "patterns", "tmp"):
        cp.dir(d)
    cp.chardev("dev/console", 5, 1)
    cp.chardev("dev/null", 1, 3, 0o666)
    with open(a.busybox, "rb") as f:
        bb = f.read()
    if not is_static_elf(bb):
        sys.exit(f"{a.busybox} is not a static x86-64 binary (apt-get install -y busybox-static)")
    cp.file("bin/busybox", bb, 0o755)
    for ap_name in APPLETS:
        cp.symlink(f"bin/{ap_name}", "busybox")
    with open(a.init, "rb") as f:
        init = f.read()
    init = init.replace(b"@WIDTH@", str(WIDTH).encode()).replace(b"@HEIGHT@", str(HEIGHT).encode())
    init = init.replace(b"@BPP@", str(BPP).encode()).replace(b"@STRIDE@", str(STRIDE).encode())
    init = init.replace(b"@PERIOD@", str(PERIOD_S).encode()).replace(b"@COUNT@", str(n).encode())
    init = init.replace(b"@RATE@", str(SOUND_RATE).encode()).replace(b"@AMPLITUDE@", str(SOUND_AMPLITUDE).encode())
    init = init.replace(b"@FADE_MS@", str(SOUND_FADE_MS).encode())
    cp.file("init", init, 0o755)

    # bochs DRM + deps (only loaded by /init when no firmware framebuffer exists).
    cp.dir("lib")
    cp.dir("lib/modules")
    load_order = []
    try:
        for name, path in module_chain(moddir, FB_MODULE):
            cp.file(f"lib/modules/{name}.ko", read_module(path))
            load_order.append(name)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"mkguest: no {FB_MODULE} module ({e}); only the bzImage/vesafb boot will work", file=sys.stderr)
        load_order = []
    cp.file("lib/modules/load.order", ("\n".join(load_order) + "\n").encode() if load_order else b"")

    # Sound: snd-ens1370 and the OSS emulation, with their dependencies, each module once.
    sound_order = []
    try:
        for top in SOUND_MODULES:
            for name, path in module_chain(moddir, top):
                if name not in sound_order and name not in load_order:
                    cp.file(f"lib/modules/{name}.ko", read_module(path))
                    sound_order.append(name)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"mkguest: no sound modules ({e}); the guest will have no sound", file=sys.stderr)
        sound_order = []
    cp.file("lib/modules/sound.order", ("\n".join(sound_order) + "\n").encode() if sound_order else b"")

    # The ACPI power button (QMP system_powerdown): button + evdev, so /init can wait for a press
    # on the "Power Button" input device and power the guest off.
    power_order = []
    try:
        for top in POWER_MODULES:
            for name, path in module_chain(moddir, top):
                if name not in power_order and name not in load_order and name not in sound_order:
                    cp.file(f"lib/modules/{name}.ko", read_module(path))
                    power_order.append(name)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"mkguest: no power-button modules ({e}); the guest ignores ACPI power-off", file=sys.stderr)
        power_order = []
    cp.file("lib/modules/power.order", ("\n".join(power_order) + "\n").encode() if power_order else b"")
    cp.file("bin/dspsetup", dspsetup_elf(), 0o755)
    cp.file("tone.awk", TONE_AWK.encode())

    boot, kernel_file = "bzimage", "vmlinuz"
    if load_order and not a.no_pvh:
        elf = extract_vmlinux(bz)
        if elf is not None and has_pvh_note(elf):
            write_sparse(os.path.join(a.outdir, "vmlinux"), elf)
            boot, kernel_file = "pvh", "vmlinux"
        else:
            print("mkguest: could not extract a PVH-bootable vmlinux; using the bzImage", file=sys.stderr)

    for i, p in enumerate(PATTERNS):
        cp.file(f"patterns/{i}.raw", b"".join(render_rows(p, "bgrx")))
        write_png(os.path.join(a.outdir, f"pattern-{i}.png"), WIDTH, HEIGHT, render_rows(p, "rgb"))

    with open(os.path.join(a.outdir, "initrd.img"), "wb") as f:
        f.write(gzip.compress(cp.finish(), compresslevel=9, mtime=0))

    manifest = {
        "format": 1,
        "recipe_hash": a.recipe_hash,
        "kernel": os.path.basename(a.kernel),
        "kernel_release": kver,
        "boot": boot,
        "kernel_file": kernel_file,
        "initrd_file": "initrd.img",
        "kernel_cmdline": KERNEL_CMDLINE,
        "qemu_vga_device": QEMU_VGA_DEVICE,
        "fb_modules": load_order,
        "width": WIDTH,
        "height": HEIGHT,
        "fb": {"bits_per_pixel": BPP, "stride": STRIDE, "pixel_order": "BGRX"},
        "period_s": PERIOD_S,
        "sequence": "patterns are shown in index order 0..N-1, repeating; each for period_s "
        "(kernel arg loco.period=SECONDS overrides; loco.static=N shows only pattern N)",
        "serial_ready_marker": "LOCO-TESTGUEST: READY",
        "sound": {
            "qemu_device": "ES1370",
            "modules": sound_order,
            "pcm": {"rate": SOUND_RATE, "format": "S16_LE", "channels": 1,
                    "amplitude": SOUND_AMPLITUDE, "fade_ms": SOUND_FADE_MS},
            "tone": "kernel arg loco.tone=HZ (continuous) or loco.tone=HZ,ON_MS,OFF_MS (bursts); "
            "the serial console says 'LOCO-TONE: on HZ' right before each burst and 'LOCO-TONE: off' "
            "once it has played out; no loco.tone: the sound device stays silent",
            "serial_on_marker": "LOCO-TONE: on",
            "serial_off_marker": "LOCO-TONE: off",
        },
        "patterns": [
            {"index": i, "name": p["name"], "png": f"pattern-{i}.png", "rects": p["rects"]}
            for i, p in enumerate(PATTERNS)
        ],
        "pairwise_psnr_db": [[None if math.isinf(v) else round(v, 2) for v in row] for row in psnr],
    }
    with open(os.path.join(a.outdir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
