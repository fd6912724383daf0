"""Several viewers at once (aiortc with both codecs plus Chromium); DELETE of one session leaves
the others streaming and the viewer count drops."""
from __future__ import annotations

import pytest

from checks import wait_metric
from loco_testkit.xvnc import Animator


@pytest.mark.chromium
@pytest.mark.timeout(150)
def test_four_viewers_and_delete(xvnc, agent, aiortc_viewer, chromium):
    a = agent(xvnc.port, codec="h264")
    a.wait_vnc(True, 30)
    vs = [aiortc_viewer(a, codec=c, name=f"aiortc-{i}-{c}") for i, c in enumerate(["h264", "vp8", "h264"])]
    c = chromium()
    c.start(a.url, codec="vp8")
    with Animator(xvnc, 0.25):
        for v in vs:
            v.wait_frames(3, timeout=30)
        c.wait_playing(timeout=30)
        c.wait_more_frames(3, timeout=30)
        wait_metric(a, "loco_viewers", lambda n: n == 4)
        st, hz = a.healthz()
        assert st == 200 and hz["viewers"] == 4, hz
        m = a.metrics()
        assert m.get("loco_frames_sent_total", codec="h264") > 0 and m.get("loco_frames_sent_total", codec="vp8") > 0

        gone = vs.pop(0)
        loc = gone.location
        assert gone.close() == 200, "DELETE of a live session"
        wait_metric(a, "loco_viewers", lambda n: n == 3)
        assert a.request("DELETE", loc).status == 404, "second DELETE of the same session"
        for v in vs:
            v.wait_frames(3, timeout=20)
            assert v.connection_state == "connected", v.describe()
        c.wait_more_frames(3, timeout=20)

        assert c.stop() == 200
        wait_metric(a, "loco_viewers", lambda n: n == 2)
        for v in vs:
            v.wait_frames(3, timeout=20)
    st, hz = a.healthz()
    assert hz["viewers"] == 2, hz
