"""Input over the `input` data channel reaches the real X server behind Xvnc: pointer position
(read back with xdotool), clamping, buttons and wheel (seen by xev), keys (typed into an xterm
running `cat > FILE`). Driven once from aiortc and once from Chromium."""
from __future__ import annotations

import pytest

from checks import XK_Return, XK_h, XK_i, wait_metric
from loco_testkit.waits import wait_until

POINTS = [(0, 0), (1023, 767), (512, 384), (1023, 0), (0, 767), (1, 766), (300, 200)]
CLAMPED = [((5000, 4000), (1023, 767)), ((5000, 10), (1023, 10)), ((10, 100000), (10, 767))]
# buttons mask -> X button number
BUTTONS = [(1, 1), (2, 2), (4, 3), (8, 4), (16, 5)]


def exercise_pointer(send, xvnc, tmp_path, agent) -> int:
    """Runs the pointer checks through `send(msg)`; returns how many messages were sent."""
    sent = 0
    for (x, y) in POINTS:
        # start from somewhere else so that a no-op would be noticed
        xvnc.move_pointer(700 if x < 600 else 100, 500 if y < 400 else 100)
        send({"type": "pointer", "x": x, "y": y, "buttons": 0})
        sent += 1
        xvnc.wait_pointer(x, y)
    for (x, y), (cx, cy) in CLAMPED:
        xvnc.move_pointer(200, 200)
        send({"type": "pointer", "x": x, "y": y, "buttons": 0})
        sent += 1
        xvnc.wait_pointer(cx, cy)

    xev = xvnc.xev_buttons(tmp_path)
    try:
        x, y = 100, 200
        for mask, button in BUTTONS:
            before = len(xev.events())
            send({"type": "pointer", "x": x, "y": y, "buttons": mask})
            send({"type": "pointer", "x": x, "y": y, "buttons": 0})
            sent += 2
            want = [("ButtonPress", x, y, button), ("ButtonRelease", x, y, button)]
            try:
                wait_until(lambda: xev.events()[before:] == want, 5, 0.05,
                           f"press+release of X button {button} at ({x},{y})")
            except TimeoutError as e:
                raise AssertionError(f"buttons mask {mask}: X saw {xev.events()[before:]}, want {want}") from e
            x += 50
        # drag: press at one place, release at another
        before = len(xev.events())
        for msg in ({"type": "pointer", "x": 400, "y": 300, "buttons": 1},
                    {"type": "pointer", "x": 450, "y": 320, "buttons": 1},
                    {"type": "pointer", "x": 450, "y": 320, "buttons": 0}):
            send(msg)
            sent += 1
        want = [("ButtonPress", 400, 300, 1), ("ButtonRelease", 450, 320, 1)]
        try:
            wait_until(lambda: xev.events()[before:] == want, 5, 0.05, "drag")
        except TimeoutError as e:
            raise AssertionError(f"drag: X saw {xev.events()[before:]}, want {want}") from e
    finally:
        xev.close()
    wait_metric(agent, "loco_input_events_total", lambda v: v >= sent, result="accepted")
    assert agent.metric("loco_input_events_total", 0, result="rejected") == 0
    return sent


@pytest.mark.timeout(120)
def test_pointer_from_aiortc(xvnc, agent, aiortc_viewer, tmp_path):
    a = agent(xvnc.port)
    a.wait_vnc(True, 30)
    v = aiortc_viewer(a)
    v.wait_channel_open()
    v.wait_frame(timeout=10)
    exercise_pointer(v.send, xvnc, tmp_path, a)
    assert v.connection_state == "connected"


def wait_typed(out, want: str) -> None:
    """Waits for the xterm running `cat > FILE` to have written `want`."""
    try:
        wait_until(lambda: out.exists() and out.read_text() == want, 10, 0.05, f"FILE == {want!r}")
    except TimeoutError as e:
        got = out.read_text() if out.exists() else None
        raise AssertionError(f"xterm `cat > FILE` got {got!r}, want {want!r}") from e


@pytest.mark.timeout(90)
def test_keys_type_into_xterm(xvnc, agent, aiortc_viewer, tmp_path):
    out = tmp_path / "typed.txt"
    a = agent(xvnc.port)
    a.wait_vnc(True, 30)
    xt = xvnc.xterm_cat(out, tmp_path)
    try:
        v = aiortc_viewer(a)
        v.wait_channel_open()
        for ks in (XK_h, XK_i, XK_Return):
            v.send({"type": "key", "keysym": ks, "down": True})
            v.send({"type": "key", "keysym": ks, "down": False})
        wait_typed(out, "hi\n")
        wait_metric(a, "loco_input_events_total", lambda n: n >= 6, result="accepted")
    finally:
        xt.close()


@pytest.mark.chromium
@pytest.mark.timeout(120)
def test_click_and_type_from_the_real_page(xvnc, agent, loco_page, tmp_path):
    """The WebXR page itself (flat view) as the viewer: a mouse move over its panel puts the X
    pointer on the matching desktop pixel, a click focuses the panel, and typed keys reach the
    xterm holding X's input focus."""
    out = tmp_path / "typed.txt"
    a = agent(xvnc.port)
    a.wait_vnc(True, 30)
    xt = xvnc.xterm_cat(out, tmp_path)
    try:
        page = loco_page([{"name": "xvnc", "whep": a.url + "/whep", "token": None}])
        page.wait_live(0)
        for u, v in ((0.25, 0.5), (0.75, 0.25), (0.1, 0.1)):
            pt = page.screen_point(0, u, v)
            page.page.mouse.move(pt["x"], pt["y"])
            want = (int(u * 1024), int(v * 768))
            # One CSS pixel of the 1280x720 view spans ~2.5 desktop pixels of a panel: within 4.
            try:
                wait_until(lambda: all(abs(g - w) <= 4 for g, w in zip(xvnc.pointer(), want)), 10, 0.05,
                           f"X pointer near {want}")
            except TimeoutError as e:
                raise AssertionError(f"X pointer at {xvnc.pointer()}, want {want} (screen point {pt}); "
                                     f"accepted input: {a.metric('loco_input_events_total', 0.0, result='accepted')}"
                                     ) from e
        page.page.mouse.click(pt["x"], pt["y"])  # inside the xterm (at 0,0): focuses the panel
        assert page.page.evaluate("window.__loco.focus") == 0
        page.page.keyboard.type("hi")
        page.page.keyboard.press("Enter")
        wait_typed(out, "hi\n")
        wait_metric(a, "loco_input_events_total", lambda n: n >= 8, result="accepted")
    finally:
        xt.close()
