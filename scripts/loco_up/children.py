"""The processes `./loco up` starts (QEMU, agents): each in its own process group, its output in a
log file, stopped as a group."""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path


# Children get SIGTERM when up.py goes away, even by SIGKILL (util-linux's setpriv sets the parent
# death signal and execs; no Python runs between fork and exec, so starting children while the
# page's server threads run is safe).
_PDEATHSIG = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []


@dataclass
class Child:
    name: str  # "vm1 QEMU", "vm1 agent"
    argv: list[str]
    log: Path
    proc: subprocess.Popen | None = None
    expected_exit: bool = False

    def start(self):
        with open(self.log, "ab") as f:
            f.write(f"# {shlex.join(self.argv)}\n".encode())
            f.flush()
            self.proc = subprocess.Popen(_PDEATHSIG + self.argv, stdin=subprocess.DEVNULL, stdout=f,
                                         stderr=subprocess.STDOUT, process_group=0, close_fds=True)
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            pass

    def how_it_ended(self) -> str:
        rc = self.proc.returncode
        if rc is None:
            return "is running"
        if rc < 0:
            try:
                return f"was killed by {signal.Signals(-rc).name}"
            except ValueError:
                return f"was killed by signal {-rc}"
        return f"exited with status {rc}"

    def tail(self, n=15) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        lines = [l for l in lines if not l.startswith("# ")] or lines
        return "\n".join("    " + l for l in lines[-n:])
