"""What the stand-in's screen and pointer look like to a test: the IceWM desktop's colours and
taskbar, the start menu, and where the guest's X pointer is (asked on its serial console)."""
from __future__ import annotations

import re

import numpy as np

from .serial import SerialConsole
from .standin import HEIGHT as H
from .standin import WIDTH as W

TEAL = (0, 128, 128)  # the desktop background (rootfs/etc/X11/icewm/preferences)
GREY = (192, 192, 192)  # IceWM's win95 theme: taskbar face
TASKBAR_H = 26
START_BUTTON = (20, H - 13)  # IceWM's start button, bottom-left


def near(rgb: np.ndarray, colour, tol=28) -> np.ndarray:
    """Per-pixel mask: every channel within tol of colour."""
    return np.all(np.abs(rgb.astype(np.int16) - np.array(colour, np.int16)) <= tol, axis=-1)


def desktop_stats(rgb: np.ndarray) -> dict:
    h = rgb.shape[0]
    bar = rgb[h - TASKBAR_H + 3:h - 3, 300:900]  # the task pane: grey, away from buttons and clock
    return {
        "size": (rgb.shape[1], rgb.shape[0]),
        "teal": float(near(rgb[:h - TASKBAR_H], TEAL).mean()),
        "taskbar_grey": float(near(bar, GREY).mean()),
        "mean": float(rgb.mean()),
        "dark": float((rgb.max(axis=-1) < 40).mean()),
    }


def looks_like_icewm(rgb: np.ndarray) -> bool:
    s = desktop_stats(rgb)
    return s["size"] == (W, H) and s["teal"] > 0.5 and s["taskbar_grey"] > 0.6 and s["dark"] < 0.3


def start_menu_open(rgb: np.ndarray) -> bool:
    """IceWM's start menu: a grey panel just above the start button, where the desktop is teal."""
    panel = rgb[H - TASKBAR_H - 150:H - TASKBAR_H - 10, 5:120]
    return float(near(panel, GREY).mean()) > 0.4 and float(near(panel, TEAL).mean()) < 0.2


def guest_pointer(console: SerialConsole) -> tuple[int, int]:
    out = console.run("xdotool getmouselocation")
    m = re.search(r"x:(\d+) y:(\d+)", out)
    assert m, f"xdotool said: {out!r}"
    return int(m.group(1)), int(m.group(2))


def close(a, b, tol=1) -> bool:
    """Within a pixel: QEMU scales VNC x to the tablet's 0..32767 with x*32767/1024 (rounding down)
    and the guest scales back rounding down too, so e.g. 600 arrives as 599."""
    return abs(a[0] - b[0]) <= tol and abs(a[1] - b[1]) <= tol
