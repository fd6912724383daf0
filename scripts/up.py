#!/usr/bin/env python3
"""`./loco up`: start N VMs, one loco-agent beside each, and a page that shows them all.

    ./loco up [--vms N] [--codec h264|vp8] [--port P] [--host ADDR] [--image DISK | --test-pattern]
              [--key-file FILE] [--view-key | --view-key-file FILE]
              [--cold | --save-state | --from-state] [--state-dir DIR] [--boot-timeout S] [--no-lan] [--no-audio]

N VMs (default 9, the most; --vms 1 for one).

Each VM is a QEMU process with its VNC server (and QMP) on Unix sockets in a private runtime
directory; each agent reads that socket and serves WHEP on --port+1, --port+2, ... The WebXR
page (the client built into www/dist/ by scripts/build-web.sh; `./loco up` builds it) and
`desktops.json` are served on --port, and the plain-JS flat page (scripts/wall/, for
browsers without WebAssembly; not in the Helm chart) on /wall/.
Every child runs in its own process group with its log in the runtime directory. Ctrl-C (or
SIGTERM) stops them all: SIGTERM, then SIGKILL after a grace period. A VM whose QEMU or agent
dies on its own is reported and left out; the others go on being served (up.py exits 1 when
none is left). Bad arguments exit 2.

By default (or with --standin) the VMs run the free IceWM stand-in desktop (packer/standin/,
built on first use and cached); with --image, that disk (e.g. the Windows 98 SoftGPU image from
packer/win98/); with --test-pattern, the tiny test-pattern guest (packer/testpattern). The
stand-in and --image VMs each run on their own copy-on-write overlay (the image itself is never
written; the overlays are deleted at exit), with the QEMU options of the image's profile in
packer/qemu-args.json (shared with the VM runner).

Sound: every stand-in and --image VM has its profile's sound card (packer/qemu-args.json `sound`),
and QEMU's VNC server carries its audio to the VM's agent (`-vnc ...,audiodev=snd0`, agent
`--audio on`), which sends it to the page. --no-audio turns that off (no audiodev on -vnc, agents
`--audio off`); the card stays in the VMs, so a saved state fits either way. The test-pattern
guest has no sound card (its agents get `--audio off`).

Saved state (packer/vmstate.py): the stand-in's first run boots one VM cold, saves its running
state once its desktop is up, and starts every VM from that state; later runs restore all N in
seconds, even under TCG. The state is kept under $LOCO_CACHE/vm-state (or --state-dir) and made
anew when the image, QEMU or the VM's QEMU options change; a state QEMU cannot load is discarded
and made again (and if that fails too, the VMs boot cold). --image DISK --save-state does the same
for your own image (it saves when the profile's ready line appears on the serial port, or when you
press Enter); later runs of --image DISK start from it (--from-state insists on it). --cold boots
every VM cold.

Off loopback (--host 0.0.0.0 or a LAN address) every agent requires an access key: a new random
one each run, or --key-file's; the page's URL is printed with it after #key= (scripts/loco_up/
keys.py). --view-key adds a view-only key for spectators.

The parts live in scripts/loco_up/ (one module a job; run.py ties them together). It uses
packer/qemuargs.py and packer/vmstate.py (shared with the VM runner) and the test-pattern guest's
packer/testpattern/testguest.py, and starts its children with tools/loco_testkit/procs.py (the
harness's one process-group implementation): `./loco up` puts those folders on PYTHONPATH; by
hand, `PYTHONPATH=tools:packer:packer/testpattern python3 scripts/up.py ...`.
"""
import importlib.util
import sys

_SIBLINGS = {"qemuargs": "packer", "vmstate": "packer", "guestlan": "packer", "testguest": "packer/testpattern", "loco_testkit": "tools"}


def _siblings_missing() -> list[str]:
    return sorted({d for m, d in _SIBLINGS.items() if importlib.util.find_spec(m) is None})


if __name__ == "__main__":
    missing = _siblings_missing()
    if missing:
        where = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]
        print(f"up.py: {where} must be on PYTHONPATH: start it as `./loco up ...`, or "
              f"PYTHONPATH={':'.join(missing)} python3 scripts/up.py ... from the repository's root",
              file=sys.stderr)
        sys.exit(2)
    from loco_up.run import main

    sys.exit(main())
