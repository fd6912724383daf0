"""loco's test harness: the pieces that tests, the benchmark and the runner's tests all start and
stop the same way.

    procs     processes in their own process group, killed as a group (and at exit)
    waits     free ports, a port that accepts, a condition that comes true in time
    paths     where ./loco keeps its builds (the agent binary)
    agent     one loco-agent: started, asked (/healthz, /metrics), stopped
    httpio    one HTTP request (http.client) and the Prometheus text format parsed
    sdp       an SDP's candidates and video codecs; this machine's addresses
    whep_aiortc  a WHEP viewer on aiortc (needs aiortc, PyAV, numpy: the venv has them)
    xvnc      TigerVNC's Xvnc and X clients on it (xterm, xdotool, xev, xsetroot)
    serial    the stand-in guest's serial console: its output, and shell commands on it
    standin   the IceWM stand-in desktop under QEMU on a throw-away overlay
    desktop   what the stand-in's screen looks like to a test (needs numpy)

`./loco test` and `./loco bench` put tools/ on PYTHONPATH; by hand: `PYTHONPATH=tools python3 -m
pytest ...` (pytest.ini does it for pytest). Standard library only, but for `desktop` (numpy) and `whep_aiortc`.
"""
