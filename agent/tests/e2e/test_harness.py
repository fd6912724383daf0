"""Self-checks of the harness (no loco-agent needed): if these fail, the environment or the
fixtures are broken, not the agent."""
from __future__ import annotations

import pytest

from loco_testkit.httpio import parse_metrics
from rfb_min import RfbClient
from loco_testkit.xvnc import Xvnc, write_noise_xbm

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


def test_xvnc_serves_rfb_on_a_unix_socket_when_asked(tmp_path):
    """`Xvnc(unix_socket=True)` (./loco bench-agent's default, as a pod reads QEMU's socket)."""
    import socket

    x = Xvnc(tmp_path, unix_socket=True).start()
    try:
        assert x.vnc == f"unix:{x.unix_path}"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(str(x.unix_path))
        assert s.recv(12).startswith(b"RFB 003.")
        s.close()
    finally:
        x.kill()
    assert not x.unix_path.exists()
    assert Xvnc(tmp_path).vnc.startswith("127.0.0.1:")


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


def test_serial_console_run_leaves_out_the_guests_own_announcements(tmp_path):
    """The stand-in's init and session scripts write `loco-standin: ...` lines to the serial port
    whenever they like; one landing inside a command's output is not part of it (a boot message
    once came back as part of `hostname`)."""
    import socket
    import threading
    from loco_testkit.serial import SerialConsole

    path = str(tmp_path / "ttyS0")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def guest():
        conn, _ = server.accept()
        with conn:
            got = b""
            while b"\n" not in got:
                got += conn.recv(1024)
            assert got.startswith(b'echo @@"B"1; hostname; echo @@"E"1'), got
            # The shell echoes the command line, then the output with an announcement inside.
            conn.sendall(got.replace(b"\n", b"\r\n") + b"@@B1\r\nloco-standin: Xorg up (20.77s)\r\n"
                         b"vm1\r\nloco-standin: lan up eth0 10.98.0.101/24 vm1\r\nsecond line\r\n@@E1\r\n")
            conn.recv(1)  # until the console closes

    t = threading.Thread(target=guest, daemon=True)
    t.start()
    console = SerialConsole(path)
    try:
        assert console.run("hostname", timeout=5) == "vm1\r\nsecond line"
        assert "loco-standin: Xorg up" in console.text()  # wait_for still sees it
    finally:
        console.close()
        server.close()
    t.join(5)
