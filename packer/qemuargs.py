#!/usr/bin/env python3
"""The QEMU command line of a loco guest, from packer/qemu-args.json (the one shared place).

    from qemuargs import load, qemu_argv
    argv = qemu_argv("standin", disk="/run/vm1/overlay.qcow2", image_dir="~/.cache/loco/standin",
                     accel="tcg", vnc="unix:/run/vm1/vnc.sock", serial="file:/run/vm1/serial.log",
                     name="loco-vm1")

CLI (for shell runners such as runner/start.sh): prints the argv, one argument per line with
--lines, NUL-terminated with --nul (what start.sh reads into an array), or shell-quoted (default):

    packer/qemuargs.py standin --disk D --image-dir DIR --accel tcg --vnc unix:/tmp/v.sock
    packer/qemuargs.py win98 --disk D --accel kvm --vnc unix:/run/loco/vnc.sock \
        --qmp unix:/tmp/qmp.sock,server=on,wait=off --memory 512 --cpus 1 --nic none --audio off --nul
    packer/qemuargs.py --list          # the profile names

--lan tcp:HOST:PORT (or unix:PATH) --lan-index N joins the guest LAN (packer/guestlan.py) as VM N.
Every VM gets its profile's sound card (`sound` in the JSON) playing into `-audiodev none,id=snd0`;
--audio on (the default) appends `,audiodev=snd0` to the -vnc value, so QEMU's VNC server carries
the sound to the agent; --audio off leaves -vnc without it (the hardware is the same either way, so
a saved state fits both). --audio-backend replaces the `none` backend (e.g. wav,path=OUT.wav).
--memory, --cpus and --nic override the profile's -m, -smp and -nic. For a profile that boots with
-kernel/-initrd (kernel_boot), the files are looked for in --image-dir (default: the disk's
directory), and the CLI exits 2 naming the one that is missing. Exit status 2 for bad input.

Standard library only.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import guestlan  # beside this file

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


def kernel_files(name: str, *, disk: str, image_dir: str | None = None,
                 path: Path | str = ARGS_FILE) -> list[Path]:
    """The kernel and initrd a kernel_boot profile boots with ([] for a disk-booting profile): file
    names from the profile, in image_dir (default: the disk's directory)."""
    kb = profile(name, path).get("kernel_boot")
    if not kb:
        return []
    base = Path(image_dir if image_dir is not None else Path(disk).parent).expanduser().resolve()
    return [base / kb["kernel"], base / kb["initrd"]]


AUDIO_BACKEND = "none"  # the sound card plays into nothing unless VNC (audio on) or the caller takes it


def parse_on_off(value, what: str = "audio") -> bool:
    """True for "on", False for "off" (and bools as they are); ValueError, in words, otherwise."""
    if isinstance(value, bool):
        return value
    if value in ("on", "off"):
        return value == "on"
    raise ValueError(f"{what} must be 'on' or 'off', not {value!r}")


def sound_args(p: dict, backend: str = AUDIO_BACKEND) -> list[str]:
    """-audiodev BACKEND,id=ID and the profile's sound card ([] for a profile without `sound`)."""
    snd = p.get("sound")
    if not snd:
        return []
    driver, *opts = (backend or "").split(",")
    if not driver or "=" in driver:
        raise ValueError(f"audio_backend must be a QEMU -audiodev driver and its options (none, or "
                         f"wav,path=OUT.wav), not {backend!r}")
    if any(o.startswith("id=") for o in opts):
        raise ValueError(f"audio_backend {backend!r} must not set id= (the profile's audiodev id is {snd['audiodev']})")
    return ["-audiodev", f"{backend},id={snd['audiodev']}"] + [str(x) for x in snd["device"]]


def qemu_argv(name: str, *, disk: str, image_dir: str | None = None, accel: str = "tcg",
              vnc: str | None = None, serial: str | None = None, qemu_name: str | None = None,
              qemu: str = QEMU, path: Path | str = ARGS_FILE, memory_mb: int | None = None,
              smp: int | None = None, qmp: str | None = None, nic: str | None = None,
              lan: str | None = None, lan_index: int | None = None, audio: bool | str = True,
              audio_backend: str = AUDIO_BACKEND, no_shutdown: bool = True) -> list[str]:
    """Full argv for one VM of profile `name`. vnc is QEMU's -vnc value ("unix:PATH" or "127.0.0.1:N");
    serial is QEMU's -serial value (default "null"); image_dir holds a kernel_boot profile's kernel
    and initrd (default: the disk's directory). memory_mb, smp and nic (QEMU's -nic value, e.g.
    "none" or "user,model=ne2k_pci") override the profile's; qmp is QEMU's -qmp value (none by
    default), e.g. "unix:/tmp/qmp.sock,server=on,wait=off". lan ("unix:PATH" or "tcp:HOST:PORT", the
    loco-lan switch) joins the guest LAN as VM lan_index (its MAC, so DHCP gives it its address) with
    the profile's lan_nic (packer/guestlan.py); it cannot be combined with nic. The profile's sound
    card always plays into -audiodev audio_backend (default "none", e.g. "wav,path=OUT.wav");
    audio (True/"on", the default, or False/"off") says whether vnc gets ",audiodev=ID", which
    lets QEMU's VNC server carry the sound to its client. qmp may also be a list of -qmp values:
    QEMU serves one client per QMP socket, so the VM's loco-agent (VM control) gets one of its own.
    no_shutdown (default True) adds -no-shutdown: a guest that powers itself off (or an ACPI
    power-off from the agent) leaves QEMU running, stopped in status "shutdown", so the agent can
    power it on again; whoever stops the VM for good sends QMP `quit` (or `set-action
    shutdown=poweroff` before powering it down)."""
    audio = parse_on_off(audio)
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"accel must be 'kvm' or 'tcg', not {accel!r}")
    for what, v, least in (("memory_mb", memory_mb, 16), ("smp", smp, 1)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < least):
            raise ValueError(f"{what} must be a whole number >= {least}, not {v!r}")
    p = profile(name, path)
    lan_args: list[str] = []
    if lan is not None:
        if nic is not None and nic != "none":
            raise ValueError("a VM joins the guest LAN (lan) or gets its own -nic, not both")
        if lan_index is None:
            raise ValueError("lan needs lan_index (the VM's number on the LAN, which fixes its MAC and address)")
        if not p.get("lan_nic"):
            raise ValueError(f"profile {name!r} has no lan_nic (the NIC model it joins the LAN with)")
        lan_args = guestlan.qemu_args(lan, lan_index, p["lan_nic"])
    argv = [qemu, "-name", qemu_name or f"loco-{name}", "-accel", accel, "-machine", p["machine"]]
    if p.get("cpu"):
        argv += ["-cpu", p["cpu"]]
    argv += ["-m", str(memory_mb or p["memory_mb"]), "-smp", str(smp or p["smp"])]
    extra = [list(g) for g in p.get("run_extra", [])]
    if lan_args:  # the LAN's NIC replaces the profile's -nic none
        extra = [g for g in extra if g[0] != "-nic"]
    elif nic is not None:  # the caller's -nic replaces the profile's (QEMU would add both)
        extra = [g for g in extra if g[0] != "-nic"] + [["-nic", nic]]
    argv += flatten(extra)
    argv += lan_args
    argv += flatten(p["devices"])
    argv += sound_args(p, audio_backend)
    d = p["disk"]
    argv += ["-drive", f"file={disk},if={d['interface']},format={d['format']}"]
    kb = p.get("kernel_boot")
    if kb:
        kernel, initrd = kernel_files(name, disk=disk, image_dir=image_dir, path=path)
        argv += ["-kernel", str(kernel), "-initrd", str(initrd), "-append", kb["append"]]
    argv += ["-display", "none"]
    if vnc:
        if audio and p.get("sound"):
            vnc = f"{vnc},audiodev={p['sound']['audiodev']}"
        argv += ["-vnc", vnc]
    argv += ["-serial", serial or "null", "-monitor", "none"]
    if no_shutdown:
        argv += ["-no-shutdown"]
    for q in [qmp] if isinstance(qmp, str) else (qmp or []):
        argv += ["-qmp", q]
    return argv


def _at_least(least: int):
    def conv(s: str) -> int:
        try:
            n = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, not {s!r}") from None
        if n < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, not {n}")
        return n
    return conv


def _on_off(s: str) -> bool:
    try:
        return parse_on_off(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be on or off, not {s!r}") from None


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
    ap.add_argument("--qmp", action="append",
                    help="QEMU -qmp value, e.g. unix:/tmp/qmp.sock,server=on,wait=off (default: none); repeatable "
                         "(QEMU serves one client per QMP socket: the agent gets its own)")
    ap.add_argument("--exit-on-poweroff", action="store_true",
                    help="leave out -no-shutdown: QEMU exits when the guest powers off (by default it stays, "
                         "stopped in status shutdown, so the agent can power the VM on again)")
    ap.add_argument("--memory", type=_at_least(16), metavar="MB", help="guest memory in MiB (default: the profile's)")
    ap.add_argument("--cpus", type=_at_least(1), metavar="N", help="guest CPUs, -smp (default: the profile's)")
    ap.add_argument("--nic", help="QEMU -nic value replacing the profile's, e.g. none or user,model=ne2k_pci")
    ap.add_argument("--lan", metavar="unix:PATH|tcp:HOST:PORT",
                    help="join the guest LAN (the loco-lan switch at this address) as VM --lan-index")
    ap.add_argument("--lan-index", type=_at_least(1), metavar="N", help="the VM's number on the LAN (its MAC and address)")
    ap.add_argument("--audio", type=_on_off, default=True, metavar="on|off",
                    help="on (default): QEMU's VNC server carries the sound card's audio to the agent (-vnc ...,"
                         "audiodev=ID); off: it does not (the sound card is there either way)")
    ap.add_argument("--audio-backend", default=AUDIO_BACKEND, metavar="DRIVER[,OPTS]",
                    help="the -audiodev the sound card plays into, without id= (default none; e.g. wav,path=OUT.wav)")
    ap.add_argument("--qemu", default=QEMU, help=f"the QEMU binary, argv[0] (default {QEMU})")
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
    missing = [f for f in kernel_files(a.profile, disk=a.disk, image_dir=a.image_dir) if not f.is_file()]
    if missing:
        print(f"qemuargs: profile {a.profile} boots with -kernel/-initrd, and {missing[0]} is missing (the "
              f"kernel and initrd go next to the base image, or in --image-dir)", file=sys.stderr)
        return 2
    try:
        out = qemu_argv(a.profile, disk=a.disk, image_dir=a.image_dir, accel=a.accel, vnc=a.vnc,
                        serial=a.serial, qemu_name=a.name, qemu=a.qemu, memory_mb=a.memory, smp=a.cpus,
                        qmp=a.qmp, nic=a.nic, lan=a.lan, lan_index=a.lan_index, audio=a.audio,
                        audio_backend=a.audio_backend, no_shutdown=not a.exit_on_poweroff)
    except ValueError as e:
        print(f"qemuargs: {e}", file=sys.stderr)
        return 2
    if a.lines and any("\n" in x for x in out):
        print("qemuargs: an argument contains a newline: use --nul", file=sys.stderr)
        return 2
    if a.nul:
        sys.stdout.write("".join(x + "\0" for x in out))
    elif a.lines:
        print("\n".join(out))
    else:
        print(shlex.join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
