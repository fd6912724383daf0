"""The IceWM stand-in desktop (packer/standin/) under QEMU, for tests and the benchmark: on a
throw-away copy-on-write overlay of the built image, with the QEMU options of its profile in
packer/qemu-args.json, its VNC server and serial console on Unix sockets in a short private
folder, QEMU in its own process group.

    vm = StandinVM("loco-standin-test").start()   # accel: KVM when usable, else TCG
    vm.wait_ready(240)                            # the serial port's ready line
    vm.vnc        # "unix:/tmp/.../vnc" for loco-agent --vnc
    vm.console.run("xdotool getmouselocation")
    vm.stop()

With lan=GuestLan(...).spec and lan_index=N the VM joins the guest LAN as VM N (loco_testkit.lan).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import qemuargs  # packer/ (on PYTHONPATH with tools/)
import testguest  # packer/testpattern/: kvm_usable()

from .procs import kill_group, spawn
from .serial import SerialConsole

PROFILE = qemuargs.profile("standin")
WIDTH, HEIGHT = PROFILE["screen"]
CACHE = Path(os.environ.get("LOCO_CACHE") or Path.home() / ".cache" / "loco")
BOOT_TIMEOUT = float(os.environ.get("LOCO_STANDIN_BOOT_TIMEOUT", "240"))  # cold boot to the ready line


def image_dir() -> Path:
    """Where packer/standin/build.sh put the image (LOCO_STANDIN_DIR points elsewhere)."""
    return Path(os.environ.get("LOCO_STANDIN_DIR") or CACHE / "standin")


def missing_files() -> list[Path]:
    d = image_dir()
    return [p for p in (d / PROFILE["image"], d / "vmlinuz", d / "initrd.img") if not p.is_file()]


class StandinVM:
    def __init__(self, name: str, work: Path | None = None, accel: str | None = None,
                 lan: str | None = None, lan_index: int | None = None):
        self.name = name
        self.lan, self.lan_index = lan, lan_index  # the guest LAN (loco_testkit.lan) and its number on it
        self.accel = accel or ("kvm" if testguest.kvm_usable() else "tcg")
        self.sockdir = Path(tempfile.mkdtemp(prefix="loco-sv-", dir="/tmp"))  # short: sun_path is 108 bytes
        self.work = Path(work) if work is not None else self.sockdir
        self.vnc_path, self.serial_path = self.sockdir / "vnc", self.sockdir / "ser"
        self.vnc = f"unix:{self.vnc_path}"
        self.proc: subprocess.Popen | None = None
        self.console: SerialConsole | None = None
        self.t_start = 0.0

    @property
    def log(self) -> Path:
        return self.work / "qemu.log"

    def start(self) -> "StandinVM":
        missing = missing_files()
        if missing:
            raise FileNotFoundError(f"the stand-in image is not built ({', '.join(map(str, missing))} missing): "
                                    "sudo packer/standin/build.sh (LOCO_STANDIN_DIR points at another build)")
        if not shutil.which("qemu-system-x86_64"):
            raise FileNotFoundError("qemu-system-x86_64 is not installed (apt-get install -y qemu-system-x86)")
        overlay = self.work / "overlay.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image_dir() / PROFILE["image"]),
                        "-F", "qcow2", str(overlay)], check=True)
        argv = qemuargs.qemu_argv("standin", disk=str(overlay), image_dir=str(image_dir()), accel=self.accel,
                                  vnc=self.vnc, serial=f"unix:{self.serial_path},server=on,wait=off",
                                  qemu_name=self.name, lan=self.lan, lan_index=self.lan_index)
        self.t_start = time.monotonic()
        self.proc = spawn(argv, log_path=self.log, name=f"{self.name} QEMU")
        deadline = time.monotonic() + 20
        while not self.serial_path.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"QEMU exited: {self.log.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("QEMU made no serial socket in 20 s")
            time.sleep(0.02)
        self.console = SerialConsole(str(self.serial_path))
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float) -> float:
        """Waits for the desktop's ready line; the seconds since start()."""
        self.console.wait_for(re.escape(PROFILE["ready_marker"]), timeout, alive=self.alive)
        return time.monotonic() - self.t_start

    def stop(self) -> int | None:
        if self.console is not None:
            self.console.close()
        rc = kill_group(self.proc, grace=10.0) if self.proc is not None else None
        shutil.rmtree(self.sockdir, ignore_errors=True)
        return rc

    def __enter__(self) -> "StandinVM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
