"""Access keys for `./loco up`.

Off loopback (`--host 0.0.0.0`, a LAN address) every run has a key: a new random one, or the
first line of `--key-file`. Every agent requires it (it reads it from a file: keys never go into
argv, the environment of a child, a log or `desktops.json`), and the page's URL carries it in
its fragment (`#key=…`), which browsers never send to a server. A view-only key (`--view-key`
makes one, `--view-key-file` reads one) lets spectators watch without sending input. On
loopback nothing changes unless a key is asked for.
"""
from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from .common import UsageError

MAX_KEY_CHARS = 256
# What a key may contain: it goes into a URL fragment and an HTTP header as it is.
KEY_ALPHABET = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_key() -> str:
    """32 URL-safe characters from the OS's CSPRNG (192 bits)."""
    return secrets.token_urlsafe(24)


def read_key_file(path: str, flag: str) -> str:
    """The key on the first line of `path`, checked; a bad file is one sentence (exit 2)."""
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline(MAX_KEY_CHARS + 2)
    except FileNotFoundError:
        raise UsageError(f"{flag} {path}: no such file") from None
    except UnicodeDecodeError:
        raise UsageError(f"{flag} {path}: the key is not text") from None
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot read it ({e.strerror})") from None
    key = line.strip()
    if not key:
        raise UsageError(f"{flag} {path}: the first line is empty (the key goes there)")
    if len(key) > MAX_KEY_CHARS:
        raise UsageError(f"{flag} {path}: the key is longer than {MAX_KEY_CHARS} characters")
    if len(key) < 12:
        raise UsageError(f"{flag} {path}: the key is too short to be a key (at least 12 characters)")
    bad = sorted(set(key) - KEY_ALPHABET)
    if bad:
        raise UsageError(f"{flag} {path}: the key may use letters, digits and - . _ ~ only "
                         f"(it goes into a URL); found {''.join(bad)!r}")
    return key


def _write_secret(path: Path, key: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")


@dataclass
class Keys:
    control: str | None = None  # sends input and may (later) reset the VM
    view: str | None = None  # watches only
    control_file: Path | None = None  # what the agents read (--token-file)
    view_file: Path | None = None  # (--view-token-file)

    def agent_args(self) -> list[str]:
        out = []
        if self.control_file:
            out += ["--token-file", str(self.control_file)]
        if self.view_file:
            out += ["--view-token-file", str(self.view_file)]
        return out

    def fragment(self, view: bool = False) -> str:
        k = self.view if view else self.control
        return f"#key={k}" if k else ""

    def secrets(self) -> list[str]:
        return [k for k in (self.control, self.view) if k]


def plan_keys(args, runtime_dir: Path) -> Keys:
    """The run's keys, with files for the agents in `runtime_dir/keys/` (0700; files 0600) where
    they are new. up.py removes that folder at exit, even when it keeps the run's logs."""
    keys = Keys()
    wants_view = bool(args.view_key or args.view_key_file)
    if args.key_file:
        keys.control = read_key_file(args.key_file, "--key-file")
        keys.control_file = Path(args.key_file).resolve()
    elif not is_loopback(args.host) or wants_view:
        keys.control = new_key()
    if args.view_key_file:
        keys.view = read_key_file(args.view_key_file, "--view-key-file")
        keys.view_file = Path(args.view_key_file).resolve()
    elif args.view_key:
        keys.view = new_key()
    if keys.view and keys.view == keys.control:
        raise UsageError("--view-key-file: the view-only key is the same as the key; they must differ")
    if keys.control and keys.control_file is None or keys.view and keys.view_file is None:
        d = runtime_dir / "keys"
        d.mkdir(mode=0o700, exist_ok=True)
        if keys.control and keys.control_file is None:
            keys.control_file = d / "key"
            _write_secret(keys.control_file, keys.control)
        if keys.view and keys.view_file is None:
            keys.view_file = d / "view-key"
            _write_secret(keys.view_file, keys.view)
    return keys
