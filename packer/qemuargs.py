#!/usr/bin/env python3
"""The QEMU command line of a loco guest, from packer/qemu-args.json (the one shared place).

    from qemuargs import load, qemu_argv
    argv = qemu_argv("standin", disk="/run/vm1/overlay.qcow2", image_dir="~/.cache/loco/standin",
                     accel="tcg", vnc="unix:/run/vm1/vnc.sock", serial="file:/run/vm1/serial.log",
                     name="loco-vm1")

CLI (for shell runners): prints the argv, one argument per line with --lines, NUL-separated with
--nul, or shell-quoted (default):

    packer/qemuargs.py standin --disk D --image-dir DIR --accel tcg --vnc unix:/tmp/v.sock
    packer/qemuargs.py --list          # the profile names

Standard library only.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ARGS_FILE = Path(__file__).resolve().parent / "qemu-args.json"
QEMU = "qemu-system-x86_64"


def load(path: Path | str = ARGS_FILE) -> dict:
    """The profiles: {name: profile}."""
    with open(path) as f:
        return json.load(f)["profiles"]


def profile(name: str, path: Path | str = ARGS_FILE) -> dict:
    profiles = load(path)
    if name not in profiles:
        raise KeyError(f"no QEMU profile {name!r} in {path} (there are: {', '.join(sorted(profiles))})")
    return profiles[name]


def flatten(groups) -> list[str]:
    return [str(x) for g in groups for x in g]


def qemu_argv(name: str, *, disk: str, image_dir: str | None = None, accel: str = "tcg",
              vnc: str | None = None, serial: str | None = None, qemu_name: str | None = None,
              qemu: str = QEMU, path: Path | str = ARGS_FILE) -> list[str]:
    """Full argv for one VM of profile `name`. vnc is QEMU's -vnc value ("unix:PATH" or "127.0.0.1:N");
    serial is QEMU's -serial value (default "null"); image_dir holds a kernel_boot profile's kernel
    and initrd (default: the disk's directory)."""
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"accel must be 'kvm' or 'tcg', not {accel!r}")
    p = profile(name, path)
    argv = [qemu, "-name", qemu_name or f"loco-{name}", "-accel", accel, "-machine", p["machine"]]
    if p.get("cpu"):
        argv += ["-cpu", p["cpu"]]
    argv += ["-m", str(p["memory_mb"]), "-smp", str(p["smp"])]
    argv += flatten(p.get("run_extra", []))
    argv += flatten(p["devices"])
    d = p["disk"]
    argv += ["-drive", f"file={disk},if={d['interface']},format={d['format']}"]
    kb = p.get("kernel_boot")
    if kb:
        base = Path(image_dir if image_dir is not None else Path(disk).parent).expanduser().resolve()
        argv += ["-kernel", str(base / kb["kernel"]), "-initrd", str(base / kb["initrd"]), "-append", kb["append"]]
    argv += ["-display", "none"]
    if vnc:
        argv += ["-vnc", vnc]
    argv += ["-serial", serial or "null", "-monitor", "none"]
    return argv


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Print the QEMU command line for a loco guest image.")
    ap.add_argument("profile", nargs="?", help="standin | win98")
    ap.add_argument("--list", action="store_true", help="list the profiles and exit")
    ap.add_argument("--disk", help="the VM's disk (a copy-on-write overlay of the image)")
    ap.add_argument("--image-dir", help="directory of the base image (default: the disk's)")
    ap.add_argument("--accel", choices=["kvm", "tcg"], default="tcg")
    ap.add_argument("--vnc", help="QEMU -vnc value, e.g. unix:/run/loco/vm1.sock or 127.0.0.1:1")
    ap.add_argument("--serial", help="QEMU -serial value (default null)")
    ap.add_argument("--name", help="QEMU -name (default loco-PROFILE)")
    ap.add_argument("--field", help="print one field of the profile (image, ready_marker, ...) and exit")
    fmt = ap.add_mutually_exclusive_group()
    fmt.add_argument("--lines", action="store_true", help="one argument per line")
    fmt.add_argument("--nul", action="store_true", help="NUL-terminated arguments")
    a = ap.parse_args(argv)
    if a.list:
        print("\n".join(sorted(load())))
        return 0
    if not a.profile:
        ap.error("give a profile (or --list)")
    try:
        p = profile(a.profile)
    except KeyError as e:
        print(f"qemuargs: {e.args[0]}", file=sys.stderr)
        return 2
    if a.field:
        v = p.get(a.field)
        print(v if isinstance(v, str) else json.dumps(v))
        return 0
    if not a.disk:
        ap.error("--disk is required")
    out = qemu_argv(a.profile, disk=a.disk, image_dir=a.image_dir, accel=a.accel, vnc=a.vnc,
                    serial=a.serial, qemu_name=a.name)
    if a.nul:
        sys.stdout.write("".join(x + "\0" for x in out))
    elif a.lines:
        print("\n".join(out))
    else:
        print(shlex.join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
