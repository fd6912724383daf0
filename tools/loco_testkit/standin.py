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

Sound: the VM has its profile's sound card (ES1370) playing into `-audiodev none` (audio_backend
replaces it, e.g. "wav,path=/tmp/out.wav"); its VNC server carries the sound (audio=True, the
default; QEMU's VNC audio extension). The guest plays a tone on demand:

    t = vm.tone(440, 2.0)       # host time.monotonic() at which the guest said the tone starts
    t_end = vm.wait_tone_end()  # ... and at which the card had played it all
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
                 lan: str | None = None, lan_index: int | None = None, audio: bool = True,
                 audio_backend: str = qemuargs.AUDIO_BACKEND, qmp: bool = False, disk: Path | None = None,
                 incoming: Path | None = None, agent_qmp: bool = False):
        """qmp: a QMP socket at self.qmp_path (packer/vmstate.py's QMP talks to it). disk: run on this
        disk (e.g. another VM's overlay, to start from its saved state) instead of a fresh overlay of
        the image; incoming: start from this migration stream (QEMU -incoming file:PATH; the VM is
        paused once it is loaded, see vmstate.qmp_status(resume=True)). agent_qmp: a second QMP socket at
        self.agent_qmp_path for a loco-agent's --qmp (QEMU serves one client per QMP socket). QEMU runs with
        -no-shutdown (qemuargs): a guest power-off leaves it stopped in status "shutdown"."""
        self.name = name
        self.disk, self.incoming = (Path(disk) if disk else None), (Path(incoming) if incoming else None)
        self.audio, self.audio_backend = audio, audio_backend
        self.tones = 0  # tones started (their tags are t1, t2, ...)
        self.tone_playing: tuple[int, str, int] | None = None  # (hz, tag, console mark) of the last tone
        self.lan, self.lan_index = lan, lan_index  # the guest LAN (loco_testkit.lan) and its number on it
        self.accel = accel or ("kvm" if testguest.kvm_usable() else "tcg")
        self.sockdir = Path(tempfile.mkdtemp(prefix="loco-sv-", dir="/tmp"))  # short: sun_path is 108 bytes
        self.work = Path(work) if work is not None else self.sockdir
        self.vnc_path, self.serial_path = self.sockdir / "vnc", self.sockdir / "ser"
        self.vnc = f"unix:{self.vnc_path}"
        self.qmp_path = self.sockdir / "qmp" if qmp else None
        self.agent_qmp_path = self.sockdir / "aqmp" if agent_qmp else None
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
        overlay = self.disk or self.work / "overlay.qcow2"
        if self.disk is None:
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image_dir() / PROFILE["image"]),
                            "-F", "qcow2", str(overlay)], check=True)
        argv = qemuargs.qemu_argv("standin", disk=str(overlay), image_dir=str(image_dir()), accel=self.accel,
                                  vnc=self.vnc, serial=f"unix:{self.serial_path},server=on,wait=off",
                                  qemu_name=self.name, lan=self.lan, lan_index=self.lan_index,
                                  audio=self.audio, audio_backend=self.audio_backend,
                                  qmp=[f"unix:{p},server=on,wait=off" for p in (self.qmp_path, self.agent_qmp_path)
                                       if p is not None])
        if self.incoming is not None:
            argv += ["-incoming", f"file:{self.incoming}"]
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

    def tone(self, hz: int, seconds: float, timeout: float = 30.0) -> float:
        """Plays a sine tone of hz for `seconds` on the guest's sound card (packer/standin/rootfs/usr/
        bin/loco-tone, started in the background over the serial console) and returns the host's
        time.monotonic() at which the guest's `loco-standin: tone start HZ TAG` line arrived: the
        guest prints it right before the first sample goes to the card. A tone that cannot play
        raises RuntimeError with the guest's reason; one still playing makes the next wait for it."""
        if not (isinstance(hz, int) and 20 <= hz <= 20000):
            raise ValueError(f"hz must be a whole number from 20 to 20000, not {hz!r}")
        if not 0 < seconds <= 600:
            raise ValueError(f"seconds must be more than 0 and at most 600, not {seconds!r}")
        self.tones += 1
        tag = f"t{self.tones}"
        since = self.console.mark()
        self.console.background(f"loco-tone {hz} {seconds:.3f} {tag}")
        m, t = self.console.wait_for_at(rf"loco-standin: tone (start|failed) {hz} {tag}\b([^\r\n]*)", timeout,
                                        since=since, alive=self.alive)
        if m.group(1) == "failed":
            raise RuntimeError(f"the guest could not play the tone:{m.group(2)}")
        self.tone_playing = (hz, tag, since)
        return t

    def wait_tone_end(self, timeout: float = 60.0) -> float:
        """Waits for the last tone() to end (the card has played its last sample); the host's
        time.monotonic() at which the guest's `tone end` line arrived."""
        if self.tone_playing is None:
            raise RuntimeError("no tone was started")
        hz, tag, since = self.tone_playing
        m, t = self.console.wait_for_at(rf"loco-standin: tone (end|failed) {hz} {tag}\b([^\r\n]*)", timeout,
                                        since=since, alive=self.alive)
        if m.group(1) == "failed":
            raise RuntimeError(f"the tone failed while playing:{m.group(2)}")
        self.tone_playing = None
        return t

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
