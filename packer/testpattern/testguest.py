#!/usr/bin/env python3
"""The loco test-pattern guest: a tiny QEMU VM whose 1024x768 screen cycles
through known full-screen patterns (see README.md in this directory).

    import testguest
    paths = testguest.build()                      # cached; builds on first use
    cmd = testguest.qemu_command(paths, vnc_port=5901, serial_log="/tmp/s.log")
    cmd = testguest.qemu_command(paths, vnc_port=5901, audio=True, tone=(440, 1000, 1000))
    idx, psnr = testguest.match_pattern(rgb)       # rgb: (768, 1024, 3) uint8

    with testguest.Guest(vnc_unix="/tmp/loco-vnc.sock") as g:   # start + wait READY
        rgb = g.grab()                              # via rfbgrab.py

CLI: testguest.py build | cmd [...] | check [--accel kvm|tcg] [--seconds S] [--png F]
"""

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))

READY_MARKER = "LOCO-TESTGUEST: READY"
TONE_ON_MARKER = "LOCO-TONE: on"  # + " HZ", right before each burst (or the continuous tone) starts
TONE_OFF_MARKER = "LOCO-TONE: off"  # after a burst has played out
AUDIODEV_ID = "snd0"


@dataclass
class GuestPaths:
    dir: str
    kernel: str  # what -kernel gets by default: vmlinux (PVH boot) or vmlinuz (bzImage)
    initrd: str
    manifest_path: str
    manifest: dict = field(repr=False)
    vmlinuz: str = ""  # the bzImage (always there; boot="bzimage" uses it)

    @property
    def width(self):
        return self.manifest["width"]

    @property
    def height(self):
        return self.manifest["height"]

    @property
    def period_s(self):
        return self.manifest["period_s"]


def default_cache_dir():
    base = os.environ.get("LOCO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "loco")
    return os.path.join(base, "testguest")


def build(cache_dir=None):
    """Build (or reuse the cached) guest; returns GuestPaths."""
    out = cache_dir or default_cache_dir()
    r = subprocess.run(
        ["bash", os.path.join(HERE, "build.sh"), out], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if r.returncode != 0:
        raise RuntimeError(f"testguest build.sh failed ({r.returncode}):\n{r.stderr}")
    out = r.stdout.strip().splitlines()[-1]
    mpath = os.path.join(out, "manifest.json")
    with open(mpath) as f:
        manifest = json.load(f)
    return GuestPaths(
        dir=out,
        kernel=os.path.join(out, manifest["kernel_file"]),
        initrd=os.path.join(out, manifest["initrd_file"]),
        manifest_path=mpath,
        manifest=manifest,
        vmlinuz=os.path.join(out, "vmlinuz"),
    )


def kvm_usable():
    """True when /dev/kvm can be opened read-write AND is hardware KVM.

    LOCO_TESTGUEST_ACCEL=kvm|tcg overrides. Hosts that only have the 'kvm_pvm'
    module (pagetable-based virtualisation, e.g. nested inside Firecracker)
    expose /dev/kvm but can only run PVM-enabled guest kernels: a stock Debian
    kernel never gets past its decompressor there, so they count as unusable.
    """
    forced = os.environ.get("LOCO_TESTGUEST_ACCEL", "").strip().lower()
    if forced in ("kvm", "tcg"):
        return forced == "kvm"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        os.close(fd)
    except OSError:
        return False
    if os.path.isdir("/sys/module/kvm_pvm") and not (
        os.path.isdir("/sys/module/kvm_intel") or os.path.isdir("/sys/module/kvm_amd")
    ):
        return False
    return True


def accel_args(accel=None):
    """QEMU accelerator args; accel None = auto (KVM if kvm_usable() else TCG)."""
    if accel is None:
        accel = "kvm" if kvm_usable() else "tcg"
    if accel == "kvm":
        return ["-accel", "kvm"]
    if accel == "tcg":
        return ["-accel", "tcg"]
    raise ValueError(f"accel must be 'kvm', 'tcg' or None, not {accel!r}")


def qemu_command(
    paths,
    vnc_port=None,
    vnc_unix=None,
    serial_log=None,
    accel=None,
    period=None,
    static=None,
    memory_mb=256,
    boot=None,
    qemu="qemu-system-x86_64",
    audio=False,
    tone=None,
    audiodev="none",
    qmp=None,
    no_shutdown=False,
):
    """QEMU argv that boots the guest with its screen on VNC.

    vnc_port: TCP port >= 5900 on 127.0.0.1; vnc_unix: unix socket path
    (exactly one, or neither for no VNC). serial_log: file for the guest
    console (ttyS0), else it is discarded. accel: 'kvm' | 'tcg' | None (auto).
    period: seconds per pattern (default manifest period_s). static: show only
    pattern N, forever. boot: None (manifest default, normally 'pvh': the
    extracted vmlinux + bochs DRM, ~3 s faster under TCG) or 'bzimage' (the
    Debian vmlinuz + vesafb via vga=0x344).

    audio: give the guest a sound card (ES1370; the guest loads snd-ens1370) on
    `-audiodev AUDIODEV,id=snd0`, and hand that audiodev to the VNC server
    (`-vnc ...,audiodev=snd0`), which then offers the guest's sound to VNC clients
    that ask for it (QEMU audio extension). audiodev: the backend spec without its
    id, default "none" (VNC only); e.g. "wav,path=/tmp/guest.wav" records it.
    tone: what the guest plays (needs audio): HZ (continuous) or (HZ, ON_MS, OFF_MS)
    (bursts, repeating); the guest's serial says "LOCO-TONE: on HZ" right before each
    burst and "LOCO-TONE: off" when it has played out. None: the card stays silent.
    Without audio the command is exactly what it was before sound existed.

    qmp: QEMU's -qmp value, e.g. "unix:/tmp/q.sock,server=on,wait=off" (repeatable: a list).
    no_shutdown: for VM control (reset, ACPI power-off, power-on over QMP): -no-shutdown (a
    guest that powers off leaves QEMU alive in status "shutdown") instead of -no-reboot (with
    which a QMP system_reset would end QEMU). The guest powers off on an ACPI power-button press.
    """
    if vnc_port is not None and vnc_unix is not None:
        raise ValueError("give vnc_port or vnc_unix, not both")
    if vnc_port is not None:
        if not 5900 <= int(vnc_port) <= 65535:
            raise ValueError("QEMU's -vnc needs a port >= 5900")
        vnc = f"127.0.0.1:{int(vnc_port) - 5900}"
    elif vnc_unix is not None:
        vnc = f"unix:{vnc_unix}"
    else:
        vnc = None
    append = paths.manifest["kernel_cmdline"]
    if period is not None:
        append += f" loco.period={period}"
    if static is not None:
        append += f" loco.static={int(static)}"
    if not audio and audiodev != "none":
        raise ValueError("audiodev needs audio=True")
    if tone is not None:
        if not audio:
            raise ValueError("tone needs audio=True")
        append += f" loco.tone={tone_arg(tone)}"
    if audio:
        if not audiodev or any(p.startswith("id=") for p in audiodev.split(",")[1:]):
            raise ValueError(f"audiodev is the backend spec without id=, e.g. 'wav,path=x.wav', not {audiodev!r}")
        if vnc:
            vnc += f",audiodev={AUDIODEV_ID}"
    if boot is None:
        kernel = paths.kernel
    elif boot == "bzimage":
        kernel = paths.vmlinuz
    elif boot == "pvh":
        if paths.manifest.get("boot") != "pvh":
            raise ValueError("this guest build has no PVH-bootable vmlinux")
        kernel = os.path.join(paths.dir, "vmlinux")
    else:
        raise ValueError(f"boot must be None, 'pvh' or 'bzimage', not {boot!r}")
    cmd = [qemu, "-name", "loco-testguest", "-nodefaults", "-no-user-config",
           "-no-shutdown" if no_shutdown else "-no-reboot"]
    cmd += accel_args(accel)
    cmd += ["-m", str(memory_mb), "-smp", "1", "-device", paths.manifest["qemu_vga_device"], "-display", "none"]
    if audio:
        cmd += ["-audiodev", f"{audiodev},id={AUDIODEV_ID}", "-device", f"ES1370,audiodev={AUDIODEV_ID}"]
    if vnc:
        cmd += ["-vnc", vnc]
    cmd += ["-serial", f"file:{serial_log}" if serial_log else "null"]
    for q in [qmp] if isinstance(qmp, str) else (qmp or []):
        cmd += ["-qmp", q]
    cmd += ["-kernel", kernel, "-initrd", paths.initrd, "-append", append]
    return cmd


def tone_arg(tone):
    """loco.tone's value for HZ or (HZ, ON_MS, OFF_MS): '440' or '440,1000,1000'."""
    parts = [tone] if isinstance(tone, (int, float)) else list(tone)
    if len(parts) not in (1, 3):
        raise ValueError(f"tone is HZ or (HZ, ON_MS, OFF_MS), not {tone!r}")
    vals = []
    for v in parts:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
            raise ValueError(f"tone values are whole numbers, not {tone!r}")
        vals.append(int(v))
    if not 20 <= vals[0] <= 20000:
        raise ValueError(f"tone frequency must be 20..20000 Hz, not {vals[0]}")
    if len(vals) == 3 and (vals[1] < 20 or vals[2] < 0):
        raise ValueError(f"tone bursts need ON_MS >= 20 and OFF_MS >= 0, not {tone!r}")
    return ",".join(str(v) for v in vals)


_PATTERN_CACHE = {}


def expected_patterns(paths=None):
    """The known images as a list of (H, W, 3) uint8 RGB arrays, in display order.

    From the built guest's manifest when `paths` is given, else straight from
    the recipe (mkguest.PATTERNS) without building anything.
    """
    import numpy as np  # only the pattern checks need it (./loco up does not)

    if paths is not None:
        m = paths.manifest
        key = m.get("recipe_hash") or paths.manifest_path
        w, h, pats = m["width"], m["height"], m["patterns"]
    else:
        import mkguest

        key = "recipe"
        w, h, pats = mkguest.WIDTH, mkguest.HEIGHT, mkguest.PATTERNS
    if key not in _PATTERN_CACHE:
        imgs = []
        for p in pats:
            img = np.zeros((h, w, 3), np.uint8)
            for r in p["rects"]:
                img[r["y"] : r["y"] + r["h"], r["x"] : r["x"] + r["w"]] = r["rgb"]
            img.setflags(write=False)
            imgs.append(img)
        _PATTERN_CACHE[key] = imgs
    return _PATTERN_CACHE[key]


def pattern_names(paths=None):
    if paths is not None:
        return [p["name"] for p in paths.manifest["patterns"]]
    import mkguest

    return [p["name"] for p in mkguest.PATTERNS]


def psnr(a, b):
    """PSNR in dB between two same-shape uint8 images (inf when identical)."""
    import numpy as np  # only the pattern checks need it (./loco up does not)

    d = a.astype(np.float32) - b.astype(np.float32)
    mse = float(np.mean(d * d))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 * 255.0 / mse)


def match_pattern(rgb_frame, patterns=None):
    """Which known pattern does this decoded frame show, and how well?

    rgb_frame: (H, W, 3) uint8 RGB. Returns (best_index, psnr_db) with PSNR over
    the whole frame (inf for an exact match). A frame of the wrong size returns
    (-1, 0.0). Rule of thumb: the correct pattern through H.264/VP8 gives > 30 dB,
    a lossless VNC grab gives inf, any wrong pattern < 12 dB.
    """
    import numpy as np  # only the pattern checks need it (./loco up does not)

    pats = expected_patterns() if patterns is None else patterns
    f = np.asarray(rgb_frame)
    if f.ndim != 3 or f.shape[2] < 3 or f.shape[:2] != pats[0].shape[:2]:
        return -1, 0.0
    f = f[:, :, :3]
    scores = [psnr(f, p) for p in pats]
    best = int(np.argmax(scores))
    return best, scores[best]


def free_vnc_port(start=5900, end=5999):
    """A currently free TCP port in [start, end] on 127.0.0.1 (racy, like all such helpers)."""
    for port in range(start, end + 1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free VNC port")


class Guest:
    """Runs the guest under QEMU; `with Guest(...) as g:` starts it and waits for READY."""

    def __init__(self, paths=None, vnc_port=None, vnc_unix=None, accel=None, period=None, static=None,
                 boot=None, workdir=None, ready_timeout=120.0, audio=False, tone=None, audiodev="none"):
        self.paths = paths or build()
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="loco-testguest-")
            workdir = self._tmp.name
        self.workdir = workdir
        if vnc_port is None and vnc_unix is None:
            vnc_unix = os.path.join(workdir, "vnc.sock")
        self.vnc_port, self.vnc_unix = vnc_port, vnc_unix
        self.serial_log = os.path.join(workdir, "serial.log")
        self.qemu_log = os.path.join(workdir, "qemu.log")
        self.accel = accel or ("kvm" if kvm_usable() else "tcg")
        self.cmd = qemu_command(self.paths, vnc_port=vnc_port, vnc_unix=vnc_unix, serial_log=self.serial_log,
                                accel=self.accel, period=period, static=static, boot=boot,
                                audio=audio, tone=tone, audiodev=audiodev)
        self.ready_timeout = ready_timeout
        self.proc = None
        self.t_start = None

    def start(self):
        open(self.serial_log, "w").close()
        self._qlog = open(self.qemu_log, "w")
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self._qlog, stderr=subprocess.STDOUT)
        return self

    def serial(self):
        try:
            with open(self.serial_log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def _check_alive(self):
        if self.proc.poll() is not None:
            with open(self.qemu_log, errors="replace") as f:
                qlog = f.read()
            raise RuntimeError(f"QEMU exited ({self.proc.returncode}).\nqemu: {qlog}\nserial: {self.serial()}")

    def wait_ready(self, timeout=None):
        """Wait for the guest's READY line on the serial log; returns seconds since start()."""
        deadline = time.monotonic() + (timeout or self.ready_timeout)
        while time.monotonic() < deadline:
            if READY_MARKER in self.serial():
                return time.monotonic() - self.t_start
            self._check_alive()
            time.sleep(0.05)
        raise TimeoutError(f"guest not READY after {timeout or self.ready_timeout}s; serial:\n{self.serial()}")

    def rfb(self, timeout=10.0):
        """A connected rfbgrab.RFBClient (caller closes it)."""
        import rfbgrab

        return rfbgrab.RFBClient(port=self.vnc_port, unix=self.vnc_unix, timeout=timeout, connect_timeout=10.0)

    def grab(self):
        import rfbgrab

        return rfbgrab.grab(port=self.vnc_port, unix=self.vnc_unix, connect_timeout=10.0)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_qlog", None):
            self._qlog.close()
            self._qlog = None

    def cleanup(self):
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self):
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc):
        self.cleanup()


def _check(args):
    """Boot, time the first pattern on VNC, sample frames for a few seconds."""
    import rfbgrab

    paths = build(args.cache_dir)
    names = pattern_names(paths)
    pats = expected_patterns(paths)
    g = Guest(paths, accel=args.accel, vnc_port=args.vnc_port, period=args.period, boot=args.boot)
    print("command:", shlex.join(g.cmd))
    g.start()
    ok = True
    try:
        with g.rfb() as c:
            t_first = t_ready = None
            while time.monotonic() - g.t_start < args.boot_timeout:
                g._check_alive()
                if t_ready is None and READY_MARKER in g.serial():
                    t_ready = time.monotonic() - g.t_start
                rgb = c.framebuffer()
                idx, db = match_pattern(rgb, pats)
                if idx >= 0 and db > 40:
                    t_first = time.monotonic() - g.t_start
                    break
                time.sleep(0.05)
            if t_first is None:
                print(f"FAIL: no pattern on screen after {args.boot_timeout}s; serial:\n{g.serial()}")
                return 1
            if t_ready is None:
                t_ready = g.wait_ready(5)
            print(f"accel={g.accel} boot={g.paths.manifest['boot'] if args.boot is None else args.boot}: "
                  f"first pattern on VNC {t_first:.2f}s after starting QEMU (READY on serial by {t_ready:.2f}s)")
            seen, n, first_png = [], 0, None
            t_end = time.monotonic() + args.seconds
            while time.monotonic() < t_end:
                rgb = c.framebuffer()
                n += 1
                idx, db = match_pattern(rgb, pats)
                good = idx >= 0 and db > 40
                if args.png and good and first_png is None:
                    rfbgrab.write_png(args.png, rgb)
                    first_png = (idx, db)
                seen.append((round(time.monotonic() - g.t_start, 2), rgb.shape[1], rgb.shape[0], idx, db))
                time.sleep(args.interval)
        good = [s for s in seen if s[3] >= 0 and s[4] > 40]
        distinct = sorted({s[3] for s in good})
        for t, w, h, idx, db in seen:
            name = names[idx] if idx >= 0 else "?"
            print(f"  t={t:6.2f}s {w}x{h} pattern={idx}({name}) psnr={db:.1f}dB")
        print(f"{len(good)}/{n} frames matched a pattern at >40 dB; distinct patterns seen: {distinct}")
        if args.png and first_png:
            print(f"wrote {args.png} (pattern {first_png[0]}, {first_png[1]:.1f} dB)")
        ok = len(distinct) >= 2 and len(good) >= max(1, n // 2)
        print("serial log:\n" + "\n".join("  " + l for l in g.serial().splitlines()))
    finally:
        g.cleanup()
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description="loco test-pattern guest")
    ap.add_argument("--cache-dir", default=None)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build (or reuse) the guest, print its files")
    c = sub.add_parser("cmd", help="print the QEMU command line")
    c.add_argument("--vnc-port", type=int)
    c.add_argument("--vnc-unix")
    c.add_argument("--serial-log")
    c.add_argument("--accel", choices=["kvm", "tcg"])
    c.add_argument("--period", type=float)
    c.add_argument("--static", type=int)
    c.add_argument("--boot", choices=["pvh", "bzimage"])
    c.add_argument("--audio", action="store_true", help="ES1370 sound card, offered to VNC clients")
    c.add_argument("--audiodev", default="none", help="QEMU audiodev spec without id (with --audio)")
    c.add_argument("--tone", help="HZ or HZ,ON_MS,OFF_MS for the guest to play (with --audio)")
    k = sub.add_parser("check", help="boot it, time the first pattern, sample frames over VNC")
    k.add_argument("--accel", choices=["kvm", "tcg"])
    k.add_argument("--vnc-port", type=int)
    k.add_argument("--period", type=float)
    k.add_argument("--boot", choices=["pvh", "bzimage"])
    k.add_argument("--seconds", type=float, default=3.0)
    k.add_argument("--interval", type=float, default=0.2)
    k.add_argument("--boot-timeout", type=float, default=120.0)
    k.add_argument("--png", help="save the first matching grabbed frame here")
    a = ap.parse_args()
    if a.cmd == "build":
        p = build(a.cache_dir)
        print(json.dumps({"dir": p.dir, "kernel": p.kernel, "initrd": p.initrd, "manifest": p.manifest_path}, indent=1))
        return 0
    if a.cmd == "cmd":
        p = build(a.cache_dir)
        print(shlex.join(qemu_command(p, vnc_port=a.vnc_port, vnc_unix=a.vnc_unix, serial_log=a.serial_log,
                                      accel=a.accel, period=a.period, static=a.static, boot=a.boot,
                                      audio=a.audio, audiodev=a.audiodev,
                                      tone=tuple(int(v) for v in a.tone.split(",")) if a.tone else None)))
        return 0
    return _check(a)


if __name__ == "__main__":
    sys.exit(main())
