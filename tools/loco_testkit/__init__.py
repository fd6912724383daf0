"""loco's test harness: the pieces that tests, the benchmark and the runner's tests all start and
stop the same way.

    procs     processes in their own process group, killed as a group (and at exit)
    serial    the stand-in guest's serial console: its output, and shell commands on it
    standin   the IceWM stand-in desktop under QEMU on a throw-away overlay

`./loco test` and `./loco bench` put tools/ on PYTHONPATH; by hand: `PYTHONPATH=tools python3 -m
pytest ...`. Standard library only (numpy stays with the callers that compare pixels).
"""
