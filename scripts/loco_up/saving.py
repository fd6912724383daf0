"""Saved running states in `./loco up` (packer/vmstate.py does the saving and the key): whether
the VMs start from one, make one first, or boot cold; what happens when one cannot be loaded."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from .common import QEMU, SUN_PATH_MAX, UsageError, qemu_profiles, say, vmstate, warn
from .vms import COLD, RESTORE, SAVER, WAIT, VM


class SavedStates:
    """The saved-state part of `Up` (a mixin: it reads and sets Up's fields)."""

    def qemu_argv(self, *, disk, vnc, serial, qmp, name, lan_index=None, agent_qmp=None) -> list[str]:
        """QEMU's argv for one VM: -qmp for up.py's socket (qmp) and the agent's (agent_qmp, VM control),
        and -no-shutdown (qemuargs' default) so a guest power-off can be undone from the panel."""
        lan = self.lan.spec if self.lan is not None and lan_index is not None else None
        return qemu_profiles().qemu_argv(self.profile, disk=str(disk), image_dir=self.image_dir, accel=self.accel,
                                         vnc=vnc, serial=f"file:{serial}", qemu_name=name, qemu=QEMU,
                                         qmp=[f"unix:{p},server=on,wait=off" for p in (qmp, agent_qmp) if p],
                                         lan=lan, lan_index=lan_index if lan else None,
                                         audio=self.audio_on)

    def plan_state(self):
        """Whether the VMs start from a saved state (RESTORE), make one first (SAVER), or boot cold."""
        a = self.args
        self.state = None
        self.state_plan = COLD
        self.saving = None
        self.state_made = False  # a state was saved in this run (if that one fails too: cold)
        if self.image is None or a.cold:
            return
        if self.lan_on and not self.profile_spec.get("lan_hotplug"):
            # A saved state would hold vm1's NIC (its MAC) and its DHCP lease: every VM started from
            # it would be vm1 on the LAN. A guest that takes a hot-plugged NIC (lan_hotplug) is saved
            # without one and gets its own once restored; any other boots cold.
            if a.save_state or a.from_state:
                self.lan_on = False
                say(f"loco up: no guest LAN in this run: profile {self.profile} cannot take a hot-plugged NIC, and a "
                    "saved state would give every VM vm1's network identity (--cold keeps the LAN)")
            else:
                say("loco up: the guest LAN is on, so every VM boots cold (a saved state would give each one vm1's "
                    "network identity); --no-lan starts them from a saved state instead")
                return
        sock = self.runtime_dir / f"vm{a.vms}" / "qmp.sock"
        if len(str(sock)) > SUN_PATH_MAX:
            if a.save_state or a.from_state:
                raise UsageError(f"a saved state needs QMP on a Unix socket, and the runtime dir {self.runtime_dir} "
                                 "is too deep for one (pick a shorter --runtime-dir)")
            say("loco up: the runtime dir is too deep for Unix sockets: the VMs boot cold (no saved state)")
            return
        vs = vmstate()
        image, _fmt = self.image
        x = Path("/per-vm")
        shape = vs.shape_of(self.qemu_argv(disk=x, vnc=f"unix:{x}", serial=x, qmp=x, name="x"))
        extra = qemu_profiles().kernel_files(self.profile, disk=image, image_dir=self.image_dir)
        self.state_key, self.state_what = vs.make_key(qemu_version=vs.qemu_version(QEMU), argv_shape=shape,
                                                      image=vs.image_identity(image, extra))
        if a.state_dir:
            self.state_dir = Path(a.state_dir).expanduser().resolve()
        else:
            base = os.environ.get("LOCO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "loco")
            tag = hashlib.sha256(os.path.realpath(image).encode()).hexdigest()[:12]
            self.state_dir = Path(base) / "vm-state" / f"{self.profile}-{tag}"
        self.save_on_enter = not self.profile_spec.get("ready_marker")
        if a.save_state:
            self.state_plan = SAVER
        else:
            st, why = vs.lookup(self.state_dir, self.state_key, self.state_what)
            if st is not None:
                self.state, self.state_plan = st, RESTORE
                say(f"loco up: starting from the saved state in {self.state_dir} (saved {st.meta.get('saved_at')}; "
                    "--cold boots cold instead)")
                return
            if a.from_state:
                raise UsageError(f"--from-state: no saved state of {image} to start from ({why}); make one with "
                                 "--save-state")
            if not a.standin:
                if (self.state_dir / vs.META_FILE).exists():
                    say(f"loco up: the saved state in {self.state_dir} is not used: {why}; --save-state makes a new one")
                return  # your own image boots cold unless you ask for a state
            say(f"loco up: no saved state to start from ({why}): vm1 boots cold and its state is saved once its "
                f"desktop is up, then every VM starts from it (later runs start in seconds)")
            self.state_plan = SAVER
        if self.save_on_enter and not sys.stdin.isatty():
            raise UsageError(f"profile {self.profile} has no ready line, so --save-state saves when you press Enter: "
                             "run it on a terminal")

    def default_timeout(self) -> float:
        n = self.args.vms
        cold_one = 120.0 if self.accel == "tcg" else 40.0
        if self.state_plan == RESTORE:
            return 60.0 + 5 * n
        if self.state_plan == SAVER:
            return cold_one + 60.0 + 5 * n
        return cold_one + (45.0 if self.accel == "tcg" else 10.0) * n

    def begin_save(self, saver: VM, others: list[VM]):
        self.saving = vmstate().Saving(self.state_dir, *self.image)
        self.state_made = True
        self.start_qemu(saver, SAVER)
        for vm in others:
            self.start_qemu(vm, WAIT)

    def restore_failed(self, vm: VM):
        last = (vm.qemu.tail(3).strip().splitlines() or ["(no message)"])[-1].strip()
        pending = [v for v in self.vms if not v.failed and v.mode == RESTORE and v.t_ready is None]
        for v in pending:
            self.stop_qemu(v)
        vmstate().discard(self.state_dir)
        self.state = None
        if not self.state_made:
            warn(f"{vm.name}: QEMU could not start from the saved state ({last}); discarded it. Making it anew: "
                 f"{pending[0].name} boots cold, then the VMs still starting start from its state")
            try:
                self.begin_save(pending[0], pending[1:])
                return
            except OSError as e:
                warn(f"cannot prepare a new saved state ({e})")
        else:
            warn(f"{vm.name}: QEMU could not start from the state saved in this run either ({last})")
        warn(f"booting {', '.join(v.name for v in pending)} cold")
        for v in pending:
            self.start_qemu(v, COLD)

    def save_state(self, saver: VM):
        vs = vmstate()
        waiting = [v for v in self.vms if v.mode == WAIT and not v.failed]
        say(f"loco up: {saver.name} reached its desktop {time.monotonic() - saver.t_started:.0f}s after a cold boot: "
            f"saving its state to {self.state_dir}")
        try:
            seconds = self.saving.save(saver.qmp, self.state_key, self.state_what)
            saver.qemu.expected_exit = True
            try:
                saver.qemu.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.stop_qemu(saver)
            self.state = self.saving.commit()
        except (vs.QMPError, OSError, ValueError) as e:
            warn(f"saving the state failed ({e}); the VMs boot cold")
            self.saving.abandon()
            self.stop_qemu(saver)
            for v in [saver] + waiting:
                self.start_qemu(v, COLD)
            return
        say(f"loco up: saved in {seconds:.1f}s ({self.state.meta['bytes'] / 2**20:.0f} MiB); starting "
            f"{len(waiting) + 1} VM{'s' if waiting else ''} from it")
        for v in [saver] + waiting:
            self.start_qemu(v, RESTORE)
