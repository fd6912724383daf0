"""Where loco's builds and caches are, as `./loco` lays them out."""
from __future__ import annotations

import os
from pathlib import Path

CACHE = Path(os.environ.get("LOCO_CACHE") or Path.home() / ".cache" / "loco")


def agent_binary() -> Path:
    """The release loco-agent: LOCO_AGENT_BIN, else CARGO_TARGET_DIR (default $LOCO_CACHE/target)."""
    env = os.environ.get("LOCO_AGENT_BIN")
    if env:
        return Path(env)
    target = os.environ.get("CARGO_TARGET_DIR") or CACHE / "target"
    return Path(target) / "release" / "loco-agent"


def lan_binary() -> Path:
    """The release loco-lan (the guest LAN's switch, built with the agent): LOCO_LAN_BIN, else
    beside the agent binary."""
    env = os.environ.get("LOCO_LAN_BIN")
    if env:
        return Path(env)
    return agent_binary().with_name("loco-lan")
