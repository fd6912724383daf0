"""The processes `./loco up` starts (QEMU, agents): each in its own process group (started by
loco_testkit.procs, the one implementation the tests use too), its output in a log file, stopped
as a group; they get SIGTERM when up.py goes away, even by SIGKILL."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from loco_testkit.procs import spawn  # tools/, on PYTHONPATH (see up.py)


@dataclass
class Child:
    name: str  # "vm1 QEMU", "vm1 agent"
    argv: list[str]
    log: Path
    proc: subprocess.Popen | None = None
    expected_exit: bool = False

    def start(self):
        self.proc = spawn(self.argv, log_path=self.log, header=f"# {shlex.join(self.argv)}", name=self.name,
                          parent_death_signal=True, track=False)
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
