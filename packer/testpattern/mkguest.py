#!/usr/bin/env python3
"""Generate the loco test-pattern guest's patterns, manifest and initramfs.

Standard library only (no numpy), so build.sh works on a bare Debian host.

    mkguest.py OUTDIR --kernel /boot/vmlinuz-VER --busybox /bin/busybox --init init.sh

writes into OUTDIR:
    vmlinux         the kernel's ELF image, extracted from the bzImage, when it
                    has a PVH entry note (QEMU boots it directly: no real-mode
                    setup, no in-guest decompression -> ~3 s faster under TCG)
    initrd.img      gzip'd newc cpio: busybox, /init, /patterns/N.raw (BGRX),
                    bochs DRM module + dependencies (for the PVH boot path)
    manifest.json   geometry, period, kernel/QEMU args, patterns as rectangles
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


# Applets the /init script uses (symlinked to /bin/busybox).
APPLETS = ["sh", "mount", "cat", "sleep", "echo", "grep", "ls", "dmesg", "poweroff", "insmod"]


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
    for d in ("bin", "dev", "proc", "sys", "patterns"):
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
