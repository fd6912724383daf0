"""One VM of `./loco up`: how it starts, and where it is on the way to its desktop."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .children import Child
from .common import vmstate, warn


# How a VM starts: booting cold, booting cold to have its state saved, restored from a saved
# state, or waiting for the state another VM is about to save.
COLD, SAVER, RESTORE, WAIT = "cold", "saver", "restore", "wait"


@dataclass
class VM:
    index: int
    dir: Path
    agent_port: int
    vnc: str  # "unix:PATH" or "127.0.0.1:PORT"
    qemu: Child | None
    agent: Child
    serial_log: Path | None = None
    ready_marker: str | None = None
    stages: list = field(default_factory=list)  # [[serial-log text, stage name], ...]
    mode: str = COLD
    qmp: Path | None = None
    guest_ready: bool = False
    want_size: tuple[int, int] | None = None  # the agent must see this mode, not the boot one
    health: dict | None = None
    t_started: float = 0.0
    t_ready: float | None = None
    failed: str | None = None  # why it is out of the run
    restore_status: str | None = None  # QMP run state while restoring
    t_status: float = 0.0
    extra_vnc: tuple = (None, None)  # (Unix socket path, TCP port): where QEMU serves VNC
    told_ready: bool = False  # its readiness was announced
    lan_plug: list | None = None  # QMP commands that plug its LAN NIC once restored (guestlan.qmp_hotplug)
    agent_qmp: Path | None = None  # the agent's own QMP socket (VM control: --qmp)

    @property
    def name(self):
        return f"vm{self.index}"

    def serial(self) -> str:
        try:
            return self.serial_log.read_text(errors="replace") if self.serial_log else ""
        except OSError:
            return ""

    def check_guest(self, now: float) -> bool:
        """Whether the guest is at its desktop: the ready line on the serial port (cold boots of a
        guest that prints one), QMP "running" (restored VMs), or at once (images without a line)."""
        if self.guest_ready:
            return True
        if self.mode == RESTORE:
            if now - self.t_status >= 0.5:
                self.t_status = now
                self.restore_status = vmstate().qmp_status(self.qmp, timeout=1.0, resume=True)
            self.guest_ready = self.restore_status == "running"
            if self.guest_ready and self.lan_plug:
                self.plug_lan()
        elif self.ready_marker is None:
            self.guest_ready = True
        else:
            self.guest_ready = self.ready_marker in self.serial()
        return self.guest_ready

    def plug_lan(self) -> None:
        """Hot-plugs the guest LAN's NIC into the restored, running VM (the guest takes its address
        by DHCP); a failure is said and the VM goes on without the LAN."""
        vs = vmstate()
        cmds, self.lan_plug = self.lan_plug, None
        try:
            with vs.QMP(self.qmp, timeout=5.0) as q:
                for cmd, args in cmds:
                    q.execute(cmd, **args)
        except (vs.QMPError, ValueError, OSError) as e:
            warn(f"{self.name}: could not plug its guest LAN NIC in ({e}); it runs without the LAN")

    def stage(self) -> str:
        """Where the VM is, in words, for the progress line."""
        if self.failed:
            return "failed"
        if self.t_ready is not None:
            return "ready"
        if self.mode == WAIT:
            return "waiting for the saved state"
        if self.mode == RESTORE and not self.guest_ready:
            return "restoring" if self.restore_status in (None, "inmigrate") else (self.restore_status or "restoring")
        if not self.guest_ready:
            text, where = self.serial(), "booting"
            for marker, name in self.stages:
                if marker in text:
                    where = f"booting: {name}"
            return where + (", to be saved" if self.mode == SAVER else "")
        if self.health is None:
            return "agent connecting"
        return "agent waiting for the screen mode"
