"""Unit tests for packer/vmstate.py (saved VM states): the key, why a state does not fit, and an
interrupted save leaving nothing behind. The real save and restore under QEMU are tested through
`./loco up` in scripts/test_up.py."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import qemuargs  # noqa: E402
import vmstate  # noqa: E402

ARGV = qemuargs.qemu_argv("standin", disk="/run/a/vm1/overlay.qcow2", image_dir="/cache/standin", accel="tcg",
                          vnc="unix:/run/a/vm1/vnc.sock", serial="file:/run/a/vm1/serial.log", qemu_name="loco-vm1",
                          qmp="unix:/run/a/vm1/qmp.sock,server=on,wait=off")


def test_shape_leaves_out_what_differs_per_vm():
    other = qemuargs.qemu_argv("standin", disk="/tmp/x/vm7/overlay.qcow2", image_dir="/elsewhere", accel="tcg",
                               vnc="unix:/tmp/x/vm7/vnc.sock", serial="file:/tmp/x/vm7/serial.log",
                               qemu_name="loco-vm7", qmp="unix:/tmp/x/vm7/qmp.sock,server=on,wait=off")
    assert vmstate.shape_of(ARGV) == vmstate.shape_of(other)
    shape = vmstate.shape_of(ARGV)
    assert "-drive" in shape and "if=virtio,format=qcow2" in shape
    assert not any("/run/a" in a for a in shape), shape
    assert shape[shape.index("-kernel") + 1] == "vmlinuz"
    # What the state depends on is kept: memory, devices, accelerator.
    for opt in (["-m", "512"], ["-accel", "tcg"]):
        assert opt[1] == shape[shape.index(opt[0]) + 1]
    more = qemuargs.qemu_argv("standin", disk="/d", image_dir="/c", accel="tcg", memory_mb=1024)
    assert vmstate.shape_of(more) != vmstate.shape_of(qemuargs.qemu_argv("standin", disk="/d", image_dir="/c",
                                                                         accel="tcg"))


def test_key_changes_with_qemu_image_and_options():
    shape = vmstate.shape_of(ARGV)
    k, what = vmstate.make_key(qemu_version="QEMU 10.0.2", argv_shape=shape, image="standin recipe abc")
    assert vmstate.make_key(qemu_version="QEMU 10.0.2", argv_shape=shape, image="standin recipe abc")[0] == k
    for change in ({"qemu_version": "QEMU 10.1.0"}, {"image": "standin recipe abd"},
                   {"argv_shape": shape + ["-nic", "user"]}):
        args = {"qemu_version": "QEMU 10.0.2", "argv_shape": shape, "image": "standin recipe abc", **change}
        assert vmstate.make_key(**args)[0] != k, change
    assert what["qemu"] == "QEMU 10.0.2" and what["format"] == vmstate.FORMAT


def test_image_identity(tmp_path):
    img = tmp_path / "win98.qcow2"
    img.write_bytes(b"x" * 1024)
    a = vmstate.image_identity(str(img))
    assert str(img) in a and " 1024 " in a
    os.utime(img, ns=(1, 1))
    assert vmstate.image_identity(str(img)) != a
    standin = tmp_path / "standin.qcow2"
    standin.write_bytes(b"")
    (tmp_path / ".recipe-hash").write_text("0123abcd\n")
    assert vmstate.image_identity(str(standin)) == "standin recipe 0123abcd"


def _write_state(d: Path, key: str, what: dict, stream=b"S" * 100):
    d.mkdir(parents=True, exist_ok=True)
    (d / vmstate.STATE_FILE).write_bytes(stream)
    (d / vmstate.DISK_FILE).write_bytes(b"")
    (d / vmstate.META_FILE).write_text(json.dumps({"key": key, "what": what, "bytes": 100}))


def test_lookup_says_why_a_state_does_not_fit(tmp_path):
    key, what = vmstate.make_key(qemu_version="QEMU 10.0.2", argv_shape=["-m", "512"], image="img 1")
    d = tmp_path / "state"
    assert vmstate.lookup(d, key, what) == (None, "there is no saved state yet")
    _write_state(d, key, what)
    st, why = vmstate.lookup(d, key, what)
    assert st is not None and why == "fits" and st.incoming() == ["-incoming", f"file:{d / 'state.mig'}"]
    for change, reason in (({"qemu_version": "QEMU 11"}, "QEMU changed (QEMU 10.0.2 → QEMU 11)"),
                           ({"image": "img 2"}, "the image changed"),
                           ({"argv_shape": ["-m", "1024"]}, "the VM's QEMU options changed")):
        args = {"qemu_version": "QEMU 10.0.2", "argv_shape": ["-m", "512"], "image": "img 1", **change}
        k2, w2 = vmstate.make_key(**args)
        assert vmstate.lookup(d, k2, w2) == (None, "it does not fit: " + reason)
    (d / vmstate.STATE_FILE).write_bytes(b"S" * 99)  # truncated
    assert vmstate.lookup(d, key, what)[1] == "state.mig is 99 bytes, not the 100 saved"
    (d / vmstate.DISK_FILE).unlink()
    assert vmstate.lookup(d, key, what)[1] == "disk.qcow2 is missing"
    (d / vmstate.META_FILE).write_text("{not json")
    assert vmstate.lookup(d, key, what)[1].startswith("its meta.json is unreadable")


def test_an_abandoned_save_leaves_nothing_and_keeps_the_old_state(tmp_path):
    image = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    d = tmp_path / "state"
    key, what = vmstate.make_key(qemu_version="Q", argv_shape=[], image="i")
    _write_state(d, key, what)
    s = vmstate.Saving(d, str(image), "qcow2")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(s.disk)], capture_output=True,
                                     text=True, check=True).stdout)
    assert info["backing-filename"] == str(image)
    s.abandon()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.qcow2", "state"]
    assert vmstate.lookup(d, key, what)[0] is not None


def test_qmp_status_of_nothing_is_none(tmp_path):
    assert vmstate.qmp_status(tmp_path / "no.sock") is None
    with pytest.raises(vmstate.QMPError):
        vmstate.QMP(tmp_path / "no.sock")
