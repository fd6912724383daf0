"""`./loco up`'s command line: every value checked, a bad one is one sentence and exit status 2."""
from __future__ import annotations

import argparse

from .common import MAX_VMS


def _vms(s: str) -> int:
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_VMS}, not {s!r}") from None
    if not 1 <= n <= MAX_VMS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_VMS}, not {n}")
    return n


def _port(s: str) -> int:
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a TCP port number, not {s!r}") from None
    if not 1 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"must be from 1 to 65535, not {n}")
    return n


def _seconds(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {s!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {s}")
    return v


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="loco up",
        description="Start N VMs with a loco-agent each, and serve a page that shows them all.",
    )
    ap.add_argument("--vms", type=_vms, default=MAX_VMS, metavar="N",
                    help=f"how many VMs (1-{MAX_VMS}, default {MAX_VMS})")
    ap.add_argument("--codec", choices=["h264", "vp8"], default="h264", help="agents' default codec (default h264)")
    ap.add_argument("--port", type=_port, default=8000, metavar="P",
                    help="the page's port (default 8000); agent i listens on P+i")
    ap.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                    help="address the page and agents listen on (default 127.0.0.1; 0.0.0.0 for the LAN)")
    ap.add_argument("--key-file", metavar="FILE",
                    help="the access key: the first line of FILE (default: a new random key whenever --host is "
                         "not loopback; the page's URL carries it after #key=)")
    view = ap.add_mutually_exclusive_group()
    view.add_argument("--view-key", action="store_true",
                      help="also make a view-only key: spectators with it watch, their input is refused")
    view.add_argument("--view-key-file", metavar="FILE", help="the view-only key: the first line of FILE")
    guest = ap.add_mutually_exclusive_group()
    guest.add_argument("--standin", action="store_true",
                       help="boot the free IceWM stand-in desktop (the default; packer/standin/, built on "
                            "first use, which needs root and the Debian mirror)")
    guest.add_argument("--image", metavar="DISK",
                       help="boot this disk image (qcow2) in every VM, each through its own overlay, "
                            "instead of the stand-in desktop")
    guest.add_argument("--test-pattern", action="store_true",
                       help="boot the tiny test-pattern guest (packer/testpattern) instead of the stand-in")
    ap.add_argument("--profile", metavar="NAME",
                    help="with --image: its QEMU options from packer/qemu-args.json (default win98)")
    ap.add_argument("--no-lan", action="store_true",
                    help="no guest LAN: each VM without a network (by default the VMs share one isolated "
                         "Ethernet segment, loco-lan, and take 10.98.0.101... by DHCP; packer/guestlan.py)")
    ap.add_argument("--no-audio", action="store_true",
                    help="no sound: QEMU's VNC server does not carry the VMs' audio and the agents send none (by "
                         "default every VM's sound card reaches the page through its agent; the card is in the VM "
                         "either way, so saved states fit both)")
    ap.add_argument("--runtime-dir", metavar="DIR",
                    help="where sockets, logs and overlays go (default: a new private temp dir, "
                         "removed at a clean exit)")
    state = ap.add_mutually_exclusive_group()
    state.add_argument("--cold", action="store_true",
                       help="boot every VM cold: neither use nor make a saved state")
    state.add_argument("--save-state", action="store_true",
                       help="make the saved state anew: boot vm1 cold, save it once its desktop is up (the "
                            "profile's ready line, or Enter on the terminal), then start every VM from it")
    state.add_argument("--from-state", action="store_true",
                       help="start from the saved state made earlier with --save-state; stop when there is "
                            "none that fits")
    ap.add_argument("--state-dir", metavar="DIR",
                    help="where the image's saved state is kept (default: under $LOCO_CACHE/vm-state)")
    ap.add_argument("--boot-timeout", type=_seconds, default=None, metavar="S",
                    help="after S seconds, serve the VMs that are up and say which are still booting "
                         "(default: from the number of VMs and the accelerator)")
    a = ap.parse_args(argv)
    if a.port + a.vms > 65535:
        ap.error(f"--port {a.port} leaves no room for {a.vms} agent port(s) above it")
    if a.profile and not a.image:
        ap.error("--profile goes with --image")
    if not a.image and not a.test_pattern:
        a.standin = True
    if a.test_pattern and (a.save_state or a.from_state):
        ap.error("the test-pattern guest boots in seconds: it has no saved state")
    if a.state_dir and a.test_pattern:
        ap.error("--state-dir goes with the stand-in or --image")
    return a
