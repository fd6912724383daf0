"""What every part of `./loco up` shares: where things are, the two kinds of error, how it talks."""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
# The one plain-JS flat page (no WebAssembly, no VR), the same the Helm chart serves.
WALL_DIR = ROOT / "scripts" / "wall"
WEB_DIR = Path(os.environ.get("LOCO_WEB_DIR") or ROOT / "www" / "dist")
GUEST_DIR = ROOT / "packer" / "testpattern"
PACKER_DIR = ROOT / "packer"
STANDIN_BUILD = PACKER_DIR / "standin" / "build.sh"
MAX_VMS = 9
GRACE_S = 5.0  # SIGTERM -> SIGKILL
QEMU = "qemu-system-x86_64"
SUN_PATH_MAX = 100  # sockaddr_un.sun_path is 108 bytes; stay clear of it
RESTORE_S = 120.0  # a VM not running this long after starting from a saved state: the state is bad


class UsageError(Exception):
    """Bad input: one readable sentence, exit status 2."""


class Failure(Exception):
    """Something went wrong at run time: exit status 1."""


def say(msg: str = "") -> None:
    print(msg, flush=True)


def warn(msg: str) -> None:
    print(f"loco up: {msg}", file=sys.stderr, flush=True)


def qemu_profiles():
    """packer/qemuargs.py, the reader of packer/qemu-args.json (shared with the VM runner; packer/
    is on PYTHONPATH, see up.py)."""
    import qemuargs

    return qemuargs


def vmstate():
    """packer/vmstate.py (saved VM states), beside qemuargs.py."""
    import vmstate as mod

    return mod
