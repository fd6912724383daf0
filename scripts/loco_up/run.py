"""The run of `./loco up`: prepare, start the VMs and their agents, watch them, serve the page, stop
everything on a signal."""
from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .announce import Announce
from .args import parse_args
from .children import Child
from .common import (GRACE_S, QEMU, RESTORE_S, SUN_PATH_MAX, WALL_DIR, WEB_DIR, Failure, UsageError,
                     qemu_profiles, say, warn)
from .host import (agent_binary, bind_family, build_standin, check_image, healthz, is_wildcard, lan_addresses,
                   port_problem, url_host)
from .saving import SavedStates
from .vms import COLD, RESTORE, SAVER, WAIT, VM
from .keys import Keys, plan_keys
import guestlan  # packer/, on PYTHONPATH (see up.py)
from loco_testkit.lan import commands as lan_commands, kea_binary  # tools/, on PYTHONPATH (see up.py)
from .web import WallServer


class Up(SavedStates, Announce):
    def __init__(self, args):
        self.args = args
        self.vms: list[VM] = []
        self.children: list[Child] = []
        self.httpd: WallServer | None = None
        self.stop_signal: int | None = None
        self.hurry = False
        self.own_runtime_dir = False
        self.runtime_dir: Path | None = None
        self.http_log: Path | None = None
        self.accel = "kvm"
        self.serving = False
        self.saving = None
        self.state = None
        self.t0 = time.monotonic()
        self.t_announced = self.t0
        self.lan = None      # loco_testkit.lan.LanCommands once the guest LAN is planned
        self.lan_on = False
        self.audio_on = False  # the VMs' sound reaches their agents (not --no-audio, a guest with a sound card)

    def on_signal(self, signum, _frame):
        if self.stop_signal is not None:
            self.hurry = True  # second Ctrl-C: do not wait for the grace period
        self.stop_signal = signum

    def default_url_host(self) -> str:
        h = self.args.host
        if is_wildcard(h):
            lan = lan_addresses()
            return lan[0] if lan else ("[::1]" if ":" in h else "127.0.0.1")
        return url_host(h)

    def desktops(self, host: str) -> dict:
        return {"desktops": [{"name": vm.name, "whep": f"http://{host}:{vm.agent_port}/whep", "token": None}
                             for vm in self.vms]}

    def prepare(self):
        a = self.args
        self.agent = agent_binary()
        if not shutil.which(QEMU):
            raise UsageError(f"{QEMU} is not installed (./loco deps installs it)")
        self.image = check_image(a.image) if a.image else None
        self.profile = None  # the packer/qemu-args.json profile of self.image
        self.image_dir = None
        if self.image is not None:
            self.profile = a.profile or "win98"
            self.image_dir = os.path.dirname(self.image[0])
        elif a.standin:
            self.profile = "standin"
        if self.profile is not None:
            try:
                self.profile_spec = qemu_profiles().profile(self.profile)
            except (KeyError, OSError, ValueError) as e:
                raise UsageError(str(e.args[0] if isinstance(e, KeyError) else e)) from None
        # Sound: every profile guest has its profile's sound card; its audio reaches the agent over
        # VNC unless --no-audio (the test-pattern guest has no sound card: its agent gets --audio off).
        self.audio_on = self.profile is not None and not a.no_audio and bool(self.profile_spec.get("sound"))
        # The guest LAN: for profile guests whose profile names a NIC (not the test-pattern guest).
        self.lan_on = self.profile is not None and not a.no_lan and bool(self.profile_spec.get("lan_nic"))
        if self.lan_on and kea_binary() is None:
            raise UsageError("the guest LAN needs kea-dhcp4 (./loco deps installs kea-dhcp4-server), or run with --no-lan")
        if not WALL_DIR.joinpath("index.html").is_file():
            raise UsageError(f"the page is missing: {WALL_DIR}/index.html")
        if not WEB_DIR.joinpath("index.html").is_file():
            raise UsageError(f"the WebXR page is not built: {WEB_DIR}/index.html is missing "
                             "(run scripts/build-web.sh, or ./loco up, which builds it)")
        self.family, self.bind_addr = bind_family(a.host)
        # The page's port first (and keep it), then check the agents' ports are free.
        why = port_problem(self.family, self.bind_addr, a.port)
        if why and "does not have" in why:
            raise UsageError(f"--host {a.host}: not an address of this machine")
        if why:
            raise UsageError(f"port {a.port} on {a.host} {why} (pick another with --port)")
        try:
            self.httpd = WallServer((self.bind_addr, a.port), self.family, self)
        except OSError as e:
            raise UsageError(f"cannot serve the page on {a.host}:{a.port}: {e.strerror}") from None
        for i in range(1, a.vms + 1):
            why = port_problem(self.family, self.bind_addr, a.port + i)
            if why:
                raise UsageError(f"port {a.port + i} on {a.host} (vm{i}'s agent) {why}; agents use "
                                 f"--port+1 to --port+{a.vms}, so pick another --port")
        # Runtime dir.
        if a.runtime_dir:
            self.runtime_dir = Path(a.runtime_dir).resolve()
            self.runtime_dir.mkdir(parents=True, exist_ok=True)
        else:
            base = os.environ.get("XDG_RUNTIME_DIR")
            if not (base and os.path.isdir(base) and os.access(base, os.W_OK)):
                base = None
            self.runtime_dir = Path(tempfile.mkdtemp(prefix="loco-up-", dir=base))
            self.own_runtime_dir = True
        os.chmod(self.runtime_dir, 0o700)
        self.http_log = self.runtime_dir / "http.log"
        self.keys: Keys = plan_keys(a, self.runtime_dir)
        # Guest.
        import testguest  # packer/testpattern/, on PYTHONPATH (see up.py)

        self.testguest = testguest
        self.accel = "kvm" if testguest.kvm_usable() else "tcg"
        if a.standin and self.stop_signal is None:
            d = build_standin()
            self.image = check_image(str(d / self.profile_spec["image"]))
            self.image_dir = str(d)
        self.guest_paths = None if self.image else testguest.build()
        self.plan_state()

    def plan_vm(self, i: int) -> VM:
        a = self.args
        d = self.runtime_dir / f"vm{i}"
        d.mkdir(exist_ok=True)
        sock = d / "vnc.sock"
        if len(str(sock)) <= SUN_PATH_MAX:
            vnc_unix, vnc_port = str(sock), None
            vnc = f"unix:{sock}"
        else:  # runtime dir too deep for a Unix socket: loopback TCP
            vnc_unix, vnc_port = None, self.testguest.free_vnc_port(5900 + i, 5999)
            vnc = f"127.0.0.1:{vnc_port}"
        port = a.port + i
        # VM control: the agent's own QMP socket (QEMU serves one client per QMP socket, and up.py
        # uses vm.qmp while restoring). None when the runtime dir is too deep for a Unix socket.
        agent_qmp = d / "agent-qmp.sock"
        agent_qmp = agent_qmp if len(str(agent_qmp)) <= SUN_PATH_MAX else None
        agent = Child(f"vm{i} agent", [str(self.agent), "--vnc", vnc,
                                       "--listen", f"{url_host(self.bind_addr)}:{port}", "--codec", a.codec,
                                       "--audio", "on" if self.audio_on else "off",
                                       *(["--qmp", f"unix:{agent_qmp}"] if agent_qmp else []),
                                       *self.keys.agent_args()],
                      d / "agent.log")
        if self.image is None:
            marker, stages = self.testguest.READY_MARKER, []
            want = (self.guest_paths.width, self.guest_paths.height)
        else:
            marker, stages = self.profile_spec.get("ready_marker"), self.profile_spec.get("boot_stages") or []
            want = tuple(self.profile_spec["screen"]) if marker and self.profile_spec.get("screen") else None
        return VM(i, d, port, vnc, None, agent, serial_log=d / "serial.log", ready_marker=marker, stages=stages,
                  want_size=want, qmp=d / "qmp.sock" if self.state_plan != COLD else None,
                  extra_vnc=(vnc_unix, vnc_port), agent_qmp=agent_qmp)

    def start_qemu(self, vm: VM, mode: str):
        """Start (or restart) vm's QEMU in `mode`; WAIT starts nothing yet."""
        vm.mode, vm.guest_ready, vm.restore_status, vm.health = mode, False, None, None
        vm.t_started = time.monotonic()
        vm.serial_log.write_text("")
        if mode == WAIT:
            vm.qemu = None
            return
        vnc_unix, vnc_port = vm.extra_vnc
        if self.image is None:
            cmd = self.testguest.qemu_command(self.guest_paths, vnc_port=vnc_port, vnc_unix=vnc_unix,
                                              serial_log=str(vm.serial_log), accel=self.accel,
                                              qmp=self.qmp_values(vm), no_shutdown=True)
            cmd[cmd.index("-name") + 1] = f"loco-{vm.name}"
        else:
            overlay = vm.dir / "overlay.qcow2"
            try:
                overlay.unlink()
            except FileNotFoundError:
                pass
            if mode == SAVER:
                disk = self.saving.disk
            elif mode == RESTORE:
                try:
                    self.state.overlay(overlay)
                except OSError as e:
                    raise Failure(f"{vm.name}: {e}") from None
                disk = overlay
            else:
                image, fmt = self.image
                r = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", image, "-F", fmt, str(overlay)],
                                   capture_output=True, text=True)
                if r.returncode != 0:
                    raise Failure(f"{vm.name}: qemu-img create failed: {r.stderr.strip()}")
                disk = overlay
            vnc_arg = f"unix:{vnc_unix}" if vnc_unix else f"127.0.0.1:{vnc_port - 5900}"
            # The LAN NIC: on the command line for a cold boot (or a guest that cannot take a hot-plugged
            # one); plugged over QMP once restored otherwise, so the saved state holds no NIC and every
            # VM gets its own MAC and lease.
            hotplug = self.lan is not None and mode != COLD and bool(self.profile_spec.get("lan_hotplug"))
            vm.lan_plug = (guestlan.qmp_hotplug(self.lan.spec, vm.index, self.profile_spec["lan_nic"])
                           if hotplug and mode == RESTORE else None)
            cmd = self.qemu_argv(disk=disk, vnc=vnc_arg, serial=vm.serial_log, qmp=vm.qmp, name=f"loco-{vm.name}",
                                 lan_index=None if hotplug else vm.index, agent_qmp=vm.agent_qmp)
            if mode == RESTORE:
                cmd += self.state.incoming()
        vm.qemu = Child(f"{vm.name} QEMU", cmd, vm.dir / "qemu.log").start()
        self.children.append(vm.qemu)

    @staticmethod
    def qmp_values(vm: VM) -> list[str]:
        """QEMU's -qmp values for vm: up.py's own socket (restoring, LAN hot-plug) and the agent's."""
        return [f"unix:{p},server=on,wait=off" for p in (vm.qmp, vm.agent_qmp) if p is not None]

    def start_lan(self):
        """The guest LAN's switch and DHCP server, before the VMs (QEMU would wait for the switch
        anyway: it reconnects by itself)."""
        d = self.runtime_dir / "lan"
        try:
            self.lan = lan_commands(d, self.args.vms)
        except (FileNotFoundError, OSError) as e:
            raise Failure(f"the guest LAN cannot start: {e} (--no-lan runs without it)") from None
        for name, argv, log in (("LAN dhcp", self.lan.dhcp, d / "kea-dhcp4.log"),
                                ("LAN switch", self.lan.switch, d / "loco-lan.log")):
            self.children.append(Child(name, argv, log).start())

    def stop_qemu(self, vm: VM):
        """End vm's QEMU now (it is being replaced): SIGKILL its group and reap it."""
        if vm.qemu is None:
            return
        vm.qemu.expected_exit = True
        vm.qemu.signal_group(signal.SIGKILL)
        try:
            vm.qemu.proc.wait(10)
        except subprocess.TimeoutExpired:
            warn(f"{vm.qemu.name} (pid {vm.qemu.pid}) did not exit after SIGKILL")

    def start(self):
        for i in range(1, self.args.vms + 1):
            self.vms.append(self.plan_vm(i))
        if self.lan_on:
            self.start_lan()
        # QEMUs first (their VNC sockets exist as soon as they start), then the agents.
        if self.state_plan == SAVER:
            try:
                self.begin_save(self.vms[0], self.vms[1:])
            except OSError as e:
                raise Failure(f"cannot prepare the saved state in {self.state_dir}: {e}") from None
        else:
            for vm in self.vms:
                self.start_qemu(vm, self.state_plan)
        for vm in self.vms:
            self.children.append(vm.agent.start())
        threading.Thread(target=self.httpd.serve_forever, name="wall-http", daemon=True).start()
        self.serving = True

    def fail(self, vm: VM, why: str):
        """vm is out of the run (its QEMU or agent died): say why, stop what is left of it."""
        vm.failed = why
        warn(f"{why}\n  {vm.name} is left out; the other VMs go on (logs: {vm.dir})")
        for c in (vm.qemu, vm.agent):
            if c is not None:
                c.expected_exit = True
                c.signal_group(signal.SIGTERM)
        waiting = [v for v in self.vms if v.mode == WAIT and not v.failed]
        if vm.mode == SAVER and waiting:
            warn("no saved state this time: the other VMs boot cold")
            self.saving.abandon()
            for v in waiting:
                self.start_qemu(v, COLD)

    def check_vms(self, now: float):
        for vm in self.vms:
            if vm.failed:
                continue
            q = vm.qemu
            if q is not None and not q.alive() and not q.expected_exit:
                if vm.mode == RESTORE and vm.t_ready is None:
                    self.restore_failed(vm)
                else:
                    self.fail(vm, f"{q.name} (pid {q.pid}) {q.how_it_ended()}; its log ({q.log}) ends:\n{q.tail()}")
                continue
            if not vm.agent.alive() and not vm.agent.expected_exit:
                a = vm.agent
                self.fail(vm, f"{a.name} (pid {a.pid}) {a.how_it_ended()}; its log ({a.log}) ends:\n{a.tail()}")
                continue
            if vm.mode == RESTORE and vm.t_ready is None and not vm.guest_ready and now - vm.t_started > RESTORE_S:
                warn(f"{vm.name}: still {vm.restore_status or 'not answering'} {RESTORE_S:.0f}s after starting "
                     "from the saved state")
                self.restore_failed(vm)
                continue
            if vm.mode == SAVER:
                if self.save_on_enter:
                    if self.enter_pressed():
                        self.save_state(vm)
                elif vm.check_guest(now):
                    self.save_state(vm)
                continue
            if vm.mode == WAIT or vm.t_ready is not None:
                continue
            vm.check_guest(now)
            status, body = healthz(self.args.host, vm.agent_port, timeout=1.0)
            vm.health = body if status == 200 and isinstance(body, dict) else None
            if vm.guest_ready and vm.health and self.size_ok(vm):
                vm.t_ready = now - self.t0

    @staticmethod
    def enter_pressed() -> bool:
        try:
            r, _, _ = select.select([sys.stdin], [], [], 0)
        except (OSError, ValueError):
            return False
        return bool(r) and sys.stdin.readline() != ""

    def progress(self) -> str:
        groups: dict[str, list[str]] = {}
        for vm in self.vms:
            groups.setdefault(vm.stage(), []).append(vm.name)
        n_ready = sum(vm.t_ready is not None for vm in self.vms)
        return f"{n_ready}/{len(self.vms)} ready: " + "; ".join(f"{s} ({', '.join(v)})" for s, v in groups.items())

    def run(self):
        """Start the VMs, say how they get on, serve them; until a signal (or no VM is left)."""
        a = self.args
        if self.image is None:
            what = "test-pattern guest"
        elif self.args.standin:
            what = "IceWM stand-in desktop"
        else:
            what = f"{os.path.basename(self.image[0])}, QEMU profile {self.profile}"
        timeout = a.boot_timeout or self.default_timeout()
        say(f"loco up: starting {a.vms} VM{'s' if a.vms > 1 else ''} ({what}, {self.accel.upper()}"
            f"{', slow: no usable KVM here' if self.accel == 'tcg' else ''}) with "
            f"{'their agents' if a.vms > 1 else 'its agent'}; logs in {self.runtime_dir}")
        self.start()
        tty = sys.stderr.isatty()
        last_line, last_print = None, 0.0
        deadline = self.t0 + timeout
        announced = False
        if self.state_plan == SAVER and self.save_on_enter:
            self.announce()
            announced = True
            say(f"loco up: {self.vms[0].name} is booting {os.path.basename(self.image[0])} to have its state saved: "
                "watch it on the page and press Enter here once its desktop is up")
        while self.stop_signal is None:
            now = time.monotonic()
            self.check_vms(now)
            live = [vm for vm in self.vms if not vm.failed]
            if not live:
                raise Failure("no VM is left running (see above)")
            all_ready = all(vm.t_ready is not None for vm in live)
            if not announced:
                line = self.progress()
                if tty:
                    sys.stderr.write(f"\r\033[K  [{now - self.t0:5.1f}s] {line}")
                    sys.stderr.flush()
                elif line != last_line or now - last_print > 15:
                    print(f"  [{now - self.t0:5.1f}s] {line}", file=sys.stderr, flush=True)
                    last_line, last_print = line, now
                if all_ready or now > deadline:
                    if tty:
                        sys.stderr.write("\n")
                    if not all_ready:
                        warn(f"after {timeout:.0f}s not every VM is ready; serving those that are and still "
                             "waiting for: " + ", ".join(f"{vm.name} ({vm.stage()})" for vm in live
                                                         if vm.t_ready is None))
                    self.announce()
                    announced = True
            else:
                for vm in live:
                    if vm.t_ready is not None and not vm.told_ready:
                        say(f"loco up: {vm.name} is ready too ({vm.t_ready:.0f}s after the start)")
                        vm.told_ready = True
            self.sleep(0.25)

    @staticmethod
    def size_ok(vm) -> bool:
        if vm.want_size is None:
            return True
        return (vm.health.get("width"), vm.health.get("height")) == vm.want_size

    def sleep(self, s):
        end = time.monotonic() + s
        while self.stop_signal is None and time.monotonic() < end:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))

    def shutdown(self, grace=GRACE_S):
        live = [c for c in self.children if c.proc is not None]
        for c in live:
            c.expected_exit = True
        # Agents first (they hold the VNC connections), then the VMs, all without waiting between.
        for c in sorted(live, key=lambda c: "agent" not in c.name):
            if c.alive():
                c.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(c.alive() for c in live) and time.monotonic() < deadline and not self.hurry:
            time.sleep(0.05)
        for c in live:
            if c.alive():
                warn(f"{c.name} (pid {c.pid}) ignored SIGTERM for {grace:.0f}s; killing it")
            # The whole group: a leader that left children behind leaves none.
            c.signal_group(signal.SIGKILL)
        for c in live:
            try:
                c.proc.wait(10)
            except subprocess.TimeoutExpired:
                warn(f"{c.name} (pid {c.pid}) did not exit even after SIGKILL")
        if self.saving is not None:
            self.saving.abandon()  # an unfinished save leaves nothing behind (a finished one was moved away)
        if self.httpd is not None:
            if self.serving:
                self.httpd.shutdown()
            self.httpd.server_close()


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except (AttributeError, ValueError):
        pass
    up = Up(args)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, up.on_signal)
    rc = 0
    try:
        up.prepare()
        if up.stop_signal is None:
            up.run()
        if up.stop_signal is not None:
            say(f"\nloco up: {signal.Signals(up.stop_signal).name}: stopping {sum(c.alive() for c in up.children)} processes ...")
    except UsageError as e:
        warn(str(e))
        rc = 2
    except Failure as e:
        warn(str(e))
        rc = 1
    except Exception as e:  # noqa: BLE001 - still stop the children
        warn(f"unexpected error: {e!r}")
        rc = 1
    finally:
        up.shutdown()
    failed = [vm.name for vm in up.vms if vm.failed]
    if failed and rc == 0:
        warn(f"{', '.join(failed)} failed during the run (see above)")
        rc = 1
    left = [c for c in up.children if c.alive()]
    if left:
        warn("still running: " + ", ".join(f"{c.name} (pid {c.pid})" for c in left))
        rc = rc or 1
    if up.runtime_dir is not None:
        # The run's keys die with it, even where its logs are kept.
        shutil.rmtree(up.runtime_dir / "keys", ignore_errors=True)
        for vm in up.vms:  # the VMs' writes go with them (the image itself is untouched)
            for f in ("overlay.qcow2", "vnc.sock", "qmp.sock", "agent-qmp.sock"):
                try:
                    (vm.dir / f).unlink()
                except OSError:
                    pass
        if rc == 0 and up.own_runtime_dir:
            shutil.rmtree(up.runtime_dir, ignore_errors=True)
        elif up.children:
            warn(f"logs kept in {up.runtime_dir}")
        elif up.own_runtime_dir:
            shutil.rmtree(up.runtime_dir, ignore_errors=True)
    if rc == 0 and up.children:
        say("loco up: stopped; no VM or agent is left running.")
    return rc
