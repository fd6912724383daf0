"""What `./loco up` prints once the VMs are up: the page's and agents' URLs, how to reach them
from a headset, the memory the VMs use."""
from __future__ import annotations

import os
import time
from pathlib import Path

from .common import say
from .host import is_wildcard, lan_addresses, url_host


class Announce:
    """The announcement part of `Up` (a mixin: it reads Up's fields)."""

    def memory_mib(self) -> float:
        """Resident memory of the VMs' QEMUs together, MiB."""
        total = 0
        for vm in self.vms:
            if vm.qemu is not None and vm.qemu.alive():
                try:
                    for line in Path(f"/proc/{vm.qemu.pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
                except OSError:
                    pass
        return total / 1024

    def announce(self):
        a = self.args
        self.t_announced = time.monotonic()
        say("")
        if is_wildcard(a.host):
            hosts = lan_addresses() + ["127.0.0.1"]
        else:
            hosts = [url_host(a.host)]
        h0 = hosts[0]
        ready = [vm for vm in self.vms if vm.t_ready is not None]
        say(f"loco is up: {len(self.vms)} desktop{'s' if len(self.vms) > 1 else ''}, codec {a.codec}"
            + (f", {len(ready)} ready {self.t_announced - self.t0:.1f}s after the start" if ready else ""))
        key, view = self.keys.fragment(), self.keys.fragment(view=True)
        for h in hosts:
            say(f"  page   http://{h}:{a.port}/{key}        (WebXR scene; flat view in any desktop browser)")
        say(f"  plain  http://{h0}:{a.port}/wall/{key}   (the plain-JS flat page, no WebAssembly)")
        if view:
            say(f"  watch  http://{h0}:{a.port}/{view}        (view-only key: spectators watch, their input is refused)")
        for vm in self.vms:
            if vm.failed:
                note = "   (failed: see above)"
            elif vm.t_ready is None:
                note = f"   ({vm.stage()})"
            elif vm.health and vm.health.get("width"):
                note = f"   ({vm.health['width']}x{vm.health['height']})"
            else:
                note = ""
            vm.told_ready = vm.t_ready is not None
            say(f"  {vm.name:<6} http://{h0}:{vm.agent_port}/whep{note}")
        if self.lan is not None:
            import guestlan  # packer/
            n = len(self.vms)
            say(f"  lan    one isolated Ethernet segment: vm1 {guestlan.address(1)}"
                f"{f' ... vm{n} {guestlan.address(n)}' if n > 1 else ''} by DHCP (no route out; --no-lan turns it off)")
        say(f"  logs   {self.runtime_dir}")
        if self.state is not None:
            say(f"  state  {self.state_dir}   (the VMs started from it; QEMU memory {self.memory_mib():.0f} MiB "
                "in all)")
        if self.image is not None and not self.profile_spec.get("ready_marker"):
            say(f"  (the VMs are booting {os.path.basename(self.image[0])}: watch them on the page)")
        say("")
        if self.keys.control:
            say("Every agent wants the key (the part after #key= above): the page keeps it for this address once "
                "opened with it, or asks for it. Without it, nobody on the network can watch or use a desktop.")
        if is_wildcard(a.host):
            lan = lan_addresses()
            where = f"http://{lan[0]}:{a.port}/{key}" if lan else f"http://<this machine's LAN address>:{a.port}/{key}"
            say(f"Quest on the same LAN: open {where} in Quest Browser.")
        else:
            say(f"Quest on the same LAN: restart with --host 0.0.0.0 and open http://<this machine's LAN address>:"
                f"{a.port}/ in Quest Browser.")
        say("Browsers allow WebXR (the Enter VR button) only on HTTPS or localhost: for a Quest over plain "
            "http://, use `adb reverse tcp:PORT tcp:PORT` for each port and open http://localhost:PORT/, or put "
            "an HTTPS proxy in front (docs in README).")
        say("Press Ctrl-C to stop everything.")
