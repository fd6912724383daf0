"""Self-checks of the harness (no loco-agent needed): if these fail, the environment or the
fixtures are broken, not the agent."""
from __future__ import annotations

import pytest

from loco_testkit.httpio import parse_metrics
from rfb_min import RfbClient
from loco_testkit.xvnc import write_noise_xbm

pytestmark = [pytest.mark.noagent, pytest.mark.timeout(60)]


def test_xvnc_pointer_readback_and_restart(xvnc):
    xvnc.move_pointer(1023, 767)
    assert xvnc.pointer() == (1023, 767)
    port, display = xvnc.port, xvnc.display
    xvnc.restart()
    assert (xvnc.port, xvnc.display) == (port, display)
    c = RfbClient(xvnc.port)
    assert (c.width, c.height) == (1024, 768)
    c.close()


def test_proxy_cuts_inside_a_framebuffer_update(xvnc, vnc_proxy, tmp_path):
    proxy = vnc_proxy(xvnc.port)
    c = RfbClient(proxy.port)
    c.request(incremental=False)
    nrect, nbytes = c.read_update()
    assert nbytes == 1024 * 768 * 4
    proxy.arm_cut(8192)
    xvnc.bitmap(write_noise_xbm(tmp_path / "noise.xbm"), "#ff8000", "#0020ff")
    c.request(incremental=False)
    with pytest.raises((ConnectionError, OSError)) as ei:
        c.read_update()
    assert "EOF after" in str(ei.value)
    assert proxy.cut_event.wait(5)
    assert proxy.cut_info["withheld"] > 0, proxy.cut_info
    # the proxy keeps serving new connections
    c2 = RfbClient(proxy.port)
    c2.request(incremental=False)
    assert c2.read_update()[1] == 1024 * 768 * 4
    c2.close()
    assert proxy.connections == 2


def test_prometheus_parser():
    m = parse_metrics('# HELP a_total x\n# TYPE a_total counter\na_total{codec="h264"} 3\n'
                      'a_total{codec="vp8"} 4\nh_bucket{le="+Inf",codec="vp8"} 2\ng 1.5e3\n')
    assert m.get("a_total") == 7 and m.get("a_total", codec="vp8") == 4
    assert m.get("h_bucket", le="+Inf") == 2 and m.get("g") == 1500 and m.types["a_total"] == "counter"
    assert m.get("missing", None) is None


def test_decoders_present():
    import av
    for name in ("h264", "vp8"):
        assert av.codec.Codec(name, "r").name == name


@pytest.mark.chromium
def test_chromium_loads_viewer_page(chromium):
    v = chromium()
    assert v.page.evaluate("typeof RTCPeerConnection") == "function"
    codecs = v.page.evaluate("RTCRtpReceiver.getCapabilities('video').codecs.map(c => c.mimeType)")
    assert "video/H264" in codecs and "video/VP8" in codecs
