"""The Packer template for the Windows 98 SoftGPU image, and packer/qemu-args.json (the QEMU
options shared by Packer, scripts/up.py and the VM runner). Packer itself cannot run here: every
*.pkr.hcl is parsed with a real HCL2 parser (python-hcl2, packer/requirements.txt) and checked.

    ~/.cache/loco/venv/bin/python -m pytest -q packer/test_packer.py
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import hcl2
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
import qemuargs  # noqa: E402

TEMPLATES = sorted(HERE.rglob("*.pkr.hcl"))
WIN98 = HERE / "win98" / "win98-softgpu.pkr.hcl"


def parse(path: Path) -> dict:
    with open(path) as f:
        return hcl2.load(f)


def unq(v):
    """python-hcl2 keeps string literals' quotes; strip them."""
    if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1]
    return v


def variables(doc) -> dict:
    out = {}
    for block in doc.get("variable", []):
        for name, body in block.items():
            out[unq(name)] = body
    return out


def test_templates_exist():
    assert WIN98 in TEMPLATES, f"no {WIN98}"


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: str(p.relative_to(HERE)))
def test_every_template_parses(path):
    doc = parse(path)
    assert doc, f"{path} parsed to nothing"


def test_required_variables_refuse_clearly_when_missing():
    v = variables(parse(WIN98))
    for name in ("iso_path", "iso_checksum", "product_key", "softgpu_dir"):
        assert name in v, f"variable {name} missing"
        body = v[name]
        assert unq(body.get("default")) == "", f"{name} must default to empty (the user supplies it)"
        vals = body.get("validation")
        assert vals, f"{name} has no validation block"
        msgs = " ".join(unq(x["error_message"]) for x in vals)
        assert name in msgs or name.replace("_", " ") in msgs, f"{name}'s error message does not name it: {msgs}"
    # The key is a secret and must look like a key.
    assert v["product_key"].get("sensitive") is True
    key_rule = unq(v["product_key"]["validation"][0]["condition"])
    assert "regex" in key_rule and "{5}" in key_rule
    # The user's own media: the messages say loco does not ship Windows.
    assert "does not download or ship" in unq(v["iso_path"]["validation"][0]["error_message"])
    assert "sha256sum" in unq(v["iso_checksum"]["validation"][0]["error_message"])


def test_builder_is_qemu_and_uses_the_user_media():
    doc = parse(WIN98)
    plugins = doc["packer"][0]["required_plugins"][0]
    assert unq(plugins["qemu"]["source"]) == "github.com/hashicorp/qemu"
    sources = doc["source"]
    assert len(sources) == 1
    (kind, named), = sources[0].items()
    assert unq(kind) == "qemu"
    (name, body), = named.items()
    assert unq(body["iso_url"]) == "${var.iso_path}"
    assert unq(body["iso_checksum"]) == "${var.iso_checksum}"
    assert unq(body["communicator"]) == "none"
    assert "MSBATCH.INF" in json.dumps(body["floppy_content"])
    assert "var.softgpu_dir" in json.dumps(body["cd_files"])
    # Nothing is fetched from the internet by the template.
    text = WIN98.read_text()
    code = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
    urls = re.findall(r"https?://[^\s\"']+", code)
    assert all("github.com/JHRobotics/softgpu/releases" in u for u in urls), urls
    build = doc["build"][0]
    assert f"source.qemu.{unq(name)}" in json.dumps(build["sources"])


def test_template_takes_its_hardware_from_the_shared_file():
    doc = parse(WIN98)
    locals_ = {k: v for block in doc["locals"] for k, v in block.items()}
    assert "qemu-args.json" in locals_["rt"] and "profiles.win98" in locals_["rt"]
    (_, named), = doc["source"][0].items()
    (_, body), = named.items()
    for key, ref in [("memory", "local.rt.memory_mb"), ("cpus", "local.rt.smp"), ("vm_name", "local.rt.image"),
                     ("format", "local.rt.disk.format"), ("disk_interface", "local.rt.disk.interface"),
                     ("qemuargs", "local.qemuargs")]:
        assert ref in unq(body[key]), f"{key} = {body[key]!r}, not from {ref}"
    q = locals_["qemuargs"]
    for ref in ("local.rt.machine", "local.rt.cpu", "local.rt.memory_mb", "local.rt.devices"):
        assert ref in q, f"qemuargs does not use {ref}"


def test_msbatch_template_has_the_key_placeholder():
    t = (HERE / "win98" / "msbatch.inf.pkrtpl").read_text()
    assert 'ProductKey="${product_key}"' in t
    assert "$CHICAGO$" in t and "EBD=0" in t and "LOCOPOST.BAT" in t
    for f in ("LOCOPOST.BAT", "DISPLAY.REG"):
        data = (HERE / "win98" / "files" / f).read_bytes()
        assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b""), f"{f}: DOS line ends"
    reg = (HERE / "win98" / "files" / "DISPLAY.REG").read_text()
    assert '"Resolution"="1024,768"' in reg and '"BitsPerPixel"="32"' in reg


# ----------------------------------------------------------------------------- the guest LAN (Windows 98 side)
# The build VM carries the LAN's NIC (qemu-args.json lan_nic) so Setup detects it, on a network that
# goes nowhere, and MSBATCH.INF installs TCP/IP by DHCP, IPX/SPX and NetBEUI on it.

MSBATCH = HERE / "win98" / "msbatch.inf.pkrtpl"


def _source_body(doc) -> dict:
    (_, named), = doc["source"][0].items()
    (_, body), = named.items()
    return body


def _locals(doc) -> dict:
    return {k: v for block in doc["locals"] for k, v in block.items()}


def test_build_vm_has_the_lan_nic_on_a_network_that_goes_nowhere():
    lan_nic = ARGS["profiles"]["win98"]["lan_nic"]
    assert lan_nic == "ne2k_pci"  # Realtek RTL8029 (NE2000 PCI): its driver is on the Windows 98 SE CD
    doc = parse(WIN98)
    loc = _locals(doc)
    groups = [[unq(x) for x in g] for g in loc["build_nic"]]
    assert "local.build_nic" in loc["qemuargs"], "the build NIC is not in the qemuargs Packer gets"
    netdevs = [g[1] for g in groups if g[0] == "-netdev"]
    devices = [g[1] for g in groups if g[0] == "-device"]
    assert len(netdevs) == 1 and len(devices) == 1, groups
    # One NIC, of the run-time model, on Packer's own netdev id (so Packer adds no second NIC) ...
    assert devices[0] == "${local.rt.lan_nic},netdev=user.0"
    assert devices[0].replace("${local.rt.lan_nic}", lan_nic) == "ne2k_pci,netdev=user.0"
    assert unq(_source_body(doc)["net_device"]) == "${local.rt.lan_nic}"
    # ... on user-mode networking that answers DHCP and routes nothing (no host, no internet).
    opts = netdevs[0].split(",")
    assert opts[0] == "user" and "id=user.0" in opts and "restrict=on" in opts, netdevs[0]
    assert not any(o.startswith(("hostfwd", "guestfwd", "smb")) for o in opts), netdevs[0]
    # Nothing else in the template adds a network.
    assert "-nic" not in json.dumps(doc) and "-net\"" not in json.dumps(doc)


def render_msbatch(**values: str) -> str:
    """What Packer's templatefile() makes of msbatch.inf.pkrtpl: ${"$"} is a literal $, ${name} a value;
    a name without a value (or a %{ directive, which the template does not use) fails."""
    text = MSBATCH.read_text()
    assert "%{" not in text

    def sub(m):
        name = m.group(1)
        if name == '"$"':
            return "$"
        assert name in values, f"msbatch.inf.pkrtpl uses ${{{name}}}, which templatefile() is not given"
        return values[name]
    return re.sub(r"\$\{([^}]*)\}", sub, text)


def parse_inf(text: str) -> dict:
    """{SECTION: {KEY: value}}, upper-cased names, quotes stripped, ; comment lines skipped."""
    out, cur = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith("["):
            cur = out.setdefault(line.strip("[]").upper(), {})
            continue
        key, _, value = line.partition("=")
        cur[key.strip().upper()] = value.strip().strip('"')
    return out


def test_msbatch_template_is_given_exactly_what_it_uses():
    call = unq(_locals(parse(WIN98))["msbatch"])
    given = set(re.findall(r"(\w+)\s*=", call.split("{", 2)[-1]))
    used = {n for n in re.findall(r"\$\{([^}]*)\}", MSBATCH.read_text()) if n != '"$"'}
    assert used == given, (used, given)
    # Client and sharing follow lan_file_sharing (a bool, off by default).
    assert re.search(r'clients\s*=\s*var\.lan_file_sharing \? "VREDIR" : ""', call), call
    assert re.search(r'services\s*=\s*var\.lan_file_sharing \? "VSERVER" : ""', call), call
    v = variables(parse(WIN98))["lan_file_sharing"]
    assert unq(v["type"]) == "bool" and v["default"] is False


@pytest.mark.parametrize("sharing", [False, True], ids=["default", "lan_file_sharing"])
def test_msbatch_installs_tcpip_by_dhcp_ipx_and_netbeui(sharing):
    inf = parse_inf(render_msbatch(product_key="ABCDE-FGHIJ-KLMNO-PQRST-UVWXY",
                                   clients="VREDIR" if sharing else "", services="VSERVER" if sharing else ""))
    assert inf["SETUP"]["NETWORK"] == "1", "Setup skips the [Network] section"
    net = inf["NETWORK"]
    assert net["DISPLAY"] == "0"  # no network dialog: the install stays unattended
    assert {"MSTCP", "NWLINK", "NETBEUI"} <= {p.strip().upper() for p in net["PROTOCOLS"].split(",")}
    assert "NETCARDS" not in net and net.get("IGNOREDETECTEDNETCARDS", "0") == "0"  # the detected NIC is used
    tcp = inf["MSTCP"]
    assert tcp["DHCP"] == "1", "TCP/IP does not take its address from the LAN's DHCP"
    assert not {"IPADDRESS", "IPMASK", "GATEWAYS"} & set(tcp), "a static address would override DHCP"
    assert net["CLIENTS"] == ("VREDIR" if sharing else "")
    assert net["SERVICES"] == ("VSERVER" if sharing else "")
    assert inf["SETUP"]["PRODUCTKEY"] == "ABCDE-FGHIJ-KLMNO-PQRST-UVWXY"


def test_msbatch_network_keys_each_have_a_comment():
    lines = MSBATCH.read_text().splitlines()
    section = None
    for i, line in enumerate(lines):
        if line.startswith("["):
            section = line.strip("[]").upper()
        elif section in ("NETWORK", "MSTCP", "VREDIR") and "=" in line and not line.startswith(";"):
            if section == "NETWORK" and line.startswith("Display="):
                continue  # as before the LAN
            assert lines[i - 1].startswith(";"), f"[{section}] {line}: no comment line above it"


# ----------------------------------------------------------------------------- qemu-args.json

ARGS = json.loads((HERE / "qemu-args.json").read_text())


def test_shared_file_shape():
    profiles = ARGS["profiles"]
    assert set(profiles) >= {"standin", "win98"}
    for name, p in profiles.items():
        for key in ("image", "machine", "memory_mb", "smp", "disk", "devices", "run_extra", "screen"):
            assert key in p, f"{name}: no {key}"
        assert p["screen"] == [1024, 768]
        assert isinstance(p["memory_mb"], int) and p["memory_mb"] >= 256
        assert p["disk"]["format"] == "qcow2" and p["disk"]["interface"] in ("ide", "virtio")
        for g in p["devices"] + p["run_extra"]:
            assert isinstance(g, list) and g and g[0].startswith("-") and all(isinstance(x, str) for x in g), g
        flat = qemuargs.flatten(p["devices"])
        assert "usb-tablet" in flat, f"{name}: no absolute pointer"
        # The caller's options stay out of the profile.
        for opt in ("-vnc", "-accel", "-enable-kvm", "-serial", "-display", "-name", "-monitor", "-drive"):
            assert opt not in qemuargs.flatten(p["devices"] + p["run_extra"]), f"{name}: {opt} is per-VM"


def test_win98_runtime_options():
    p = ARGS["profiles"]["win98"]
    assert p["machine"].startswith("pc")  # i440fx, not q35
    assert p["memory_mb"] >= 512
    flat = qemuargs.flatten(p["devices"])
    assert flat[flat.index("-vga") + 1] == "std"  # Bochs VBE, what SoftGPU drives
    assert "-usb" in flat  # UHCI: Win98 has no xHCI driver
    assert p["disk"]["interface"] == "ide"
    assert not any("audiodev" in x for x in flat)  # the sound card is in `sound`, not in devices


# ----------------------------------------------------------------------------- sound
# Every profile's sound card plays into -audiodev none; audio on only appends ,audiodev=ID to -vnc.

SOUND_CARDS = {"win98": "sb16", "standin": "ES1370"}


def test_sound_entries():
    for name, card in SOUND_CARDS.items():
        snd = ARGS["profiles"][name]["sound"]
        assert snd["audiodev"] == "snd0"
        group = snd["device"]
        assert group[0] == "-device" and len(group) == 2, group
        model, *opts = group[1].split(",")
        assert model == card, (name, model)
        assert f"audiodev={snd['audiodev']}" in opts, f"{name}: the card is not bound to its audiodev"
    # Windows 98 SE's in-box Sound Blaster 16 driver, at the card's factory (and QEMU's default) resources.
    opts = dict(o.split("=") for o in ARGS["profiles"]["win98"]["sound"]["device"][1].split(",")[1:])
    assert opts == {"audiodev": "snd0", "iobase": "0x220", "irq": "5", "dma": "1", "dma16": "5"}, opts
    assert "sound" in " ".join(ARGS["_doc"])


@pytest.mark.parametrize("name", sorted(SOUND_CARDS))
def test_qemuargs_always_has_the_sound_card_and_audio_switches_only_vnc(name, tmp_path):
    kw = dict(disk=str(tmp_path / "o.qcow2"), image_dir=str(tmp_path), vnc="unix:/tmp/v.sock", qemu_name="t")
    on = qemuargs.qemu_argv(name, **kw)
    off = qemuargs.qemu_argv(name, audio=False, **kw)
    assert on == qemuargs.qemu_argv(name, audio="on", **kw) and off == qemuargs.qemu_argv(name, audio="off", **kw)
    for argv in (on, off):
        assert argv[argv.index("-audiodev") + 1] == "none,id=snd0"
        assert argv.count("-audiodev") == 1
        assert argv[argv.index("-audiodev") + 2:argv.index("-audiodev") + 4] == ARGS["profiles"][name]["sound"]["device"]
    assert on[on.index("-vnc") + 1] == "unix:/tmp/v.sock,audiodev=snd0"
    assert off[off.index("-vnc") + 1] == "unix:/tmp/v.sock"
    assert [a for a in on if a != "unix:/tmp/v.sock,audiodev=snd0"] == [a for a in off if a != "unix:/tmp/v.sock"]
    # A TCP VNC display takes the option the same way; no -vnc, nothing to append.
    tcp = qemuargs.qemu_argv(name, **{**kw, "vnc": "127.0.0.1:3"})
    assert tcp[tcp.index("-vnc") + 1] == "127.0.0.1:3,audiodev=snd0"
    assert "-vnc" not in qemuargs.qemu_argv(name, **{**kw, "vnc": None})
    # The backend can be replaced (the sound test records into a WAV file); the id stays the profile's.
    wav = qemuargs.qemu_argv(name, audio_backend="wav,path=/tmp/o.wav", **kw)
    assert wav[wav.index("-audiodev") + 1] == "wav,path=/tmp/o.wav,id=snd0"


def test_qemuargs_rejects_bad_audio_values():
    for bad in ("maybe", "", "ON", 1, None):
        with pytest.raises(ValueError, match="audio must be 'on' or 'off'"):
            qemuargs.qemu_argv("standin", disk="d", audio=bad)
    for bad in ("", "id=x", "wav,id=x", "=wav"):
        with pytest.raises(ValueError, match="audio_backend"):
            qemuargs.qemu_argv("standin", disk="d", audio_backend=bad)


def test_saved_state_key_fits_audio_on_and_off_but_not_the_old_hardware(tmp_path):
    import vmstate
    kw = dict(disk="/d/o.qcow2", image_dir="/c", accel="tcg", serial="file:/s", qmp="unix:/q,server=on,wait=off")
    on = vmstate.shape_of(qemuargs.qemu_argv("standin", vnc="unix:/a/vnc.sock", **kw))
    off = vmstate.shape_of(qemuargs.qemu_argv("standin", vnc="unix:/b/vnc.sock", audio=False, **kw))
    assert on == off, "audio on/off must not change the hardware a saved state was made on"
    assert "ES1370,audiodev=snd0" in on
    # A state saved before the sound card (the same command line without it) does not fit.
    old = qemuargs.qemu_argv("standin", vnc="unix:/a/vnc.sock", audio=False, **kw)
    i = old.index("-audiodev")
    assert old[i:i + 4] == ["-audiodev", "none,id=snd0", "-device", "ES1370,audiodev=snd0"]
    del old[i:i + 4]
    assert vmstate.shape_of(old) != on


def test_build_vm_has_the_sound_card():
    doc = parse(WIN98)
    loc = _locals(doc)
    assert "local.build_sound" in loc["qemuargs"], "the build VM has no sound card: Setup would not install its driver"
    groups = [[unq(x) for x in g] if isinstance(g, list) else unq(g) for g in loc["build_sound"]]
    assert groups[0] == ["-audiodev", "none,id=${local.rt.sound.audiodev}"], groups
    assert groups[1] == "${local.rt.sound.device}", groups


def test_qemuargs_builds_valid_command_lines(tmp_path):
    for name in ARGS["profiles"]:
        argv = qemuargs.qemu_argv(name, disk=str(tmp_path / "overlay.qcow2"), image_dir=str(tmp_path),
                                  accel="tcg", vnc="unix:/tmp/x.sock", serial="file:/tmp/s.log", qemu_name="t")
        assert argv[0] == "qemu-system-x86_64"
        assert argv[argv.index("-accel") + 1] == "tcg"
        assert argv[argv.index("-vnc") + 1] == "unix:/tmp/x.sock,audiodev=snd0"  # audio on by default
        drive = argv[argv.index("-drive") + 1]
        assert drive.startswith(f"file={tmp_path}/overlay.qcow2,")
        if ARGS["profiles"][name].get("kernel_boot"):
            assert argv[argv.index("-kernel") + 1] == str(tmp_path / "vmlinuz")
    with pytest.raises(KeyError):
        qemuargs.profile("nope")


def test_up_py_uses_the_shared_file():
    up = "".join(p.read_text() for p in sorted((ROOT / "scripts" / "loco_up").glob("*.py")))
    assert "qemuargs" in up and "qemu_argv(" in up
    assert '"win98"' in up and '"standin"' in up


# ----------------------------------------------------------------------------- qemuargs.py CLI
# What runner/start.sh runs: `python3 qemuargs.py PROFILE --disk ... --nul`, read into an array.

import subprocess  # noqa: E402

QEMUARGS = HERE / "qemuargs.py"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(QEMUARGS), *args], capture_output=True, timeout=60)


def test_cli_nul_matches_the_library_with_runner_overrides(tmp_path):
    disk = tmp_path / "odd dir" / "over'lay\n.qcow2"  # spaces, a quote, a newline: NUL keeps them whole
    r = cli("win98", "--disk", str(disk), "--accel", "kvm", "--vnc", "unix:/run/loco/vnc.sock",
            "--qmp", "unix:/tmp/qmp.sock,server=on,wait=off", "--serial", "none", "--name", "vm-0",
            "--memory", "384", "--cpus", "2", "--nic", "user,model=ne2k_pci", "--qemu", "/opt/qemu", "--nul")
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith(b"\0")
    argv = r.stdout.decode().split("\0")[:-1]
    assert argv == qemuargs.qemu_argv("win98", disk=str(disk), accel="kvm", vnc="unix:/run/loco/vnc.sock",
                                      qmp="unix:/tmp/qmp.sock,server=on,wait=off", serial="none",
                                      qemu_name="vm-0", memory_mb=384, smp=2, nic="user,model=ne2k_pci",
                                      qemu="/opt/qemu")
    assert argv[0] == "/opt/qemu"
    assert argv[argv.index("-m") + 1] == "384" and argv[argv.index("-smp") + 1] == "2"
    assert argv[argv.index("-qmp") + 1] == "unix:/tmp/qmp.sock,server=on,wait=off"
    assert argv[argv.index("-serial") + 1] == "none"
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert argv[argv.index("-drive") + 1] == f"file={disk},if=ide,format=qcow2"
    # --nic replaces the profile's -nic none (QEMU would otherwise get both).
    nics = [argv[i + 1] for i, x in enumerate(argv) if x == "-nic"]
    assert nics == ["user,model=ne2k_pci"]
    # --audio off: -vnc without the audiodev; the sound card is there all the same.
    r = cli("win98", "--disk", str(disk), "--vnc", "unix:/run/loco/vnc.sock", "--audio", "off", "--nul")
    assert r.returncode == 0, r.stderr
    off = r.stdout.decode().split("\0")[:-1]
    assert off[off.index("-vnc") + 1] == "unix:/run/loco/vnc.sock" and "-audiodev" in off
    assert off == qemuargs.qemu_argv("win98", disk=str(disk), vnc="unix:/run/loco/vnc.sock", audio=False)
    assert argv[argv.index("-vnc") + 1] == "unix:/run/loco/vnc.sock,audiodev=snd0"  # on by default
    # --lines refuses what it cannot print unambiguously.
    r = cli("win98", "--disk", str(disk), "--lines")
    assert r.returncode == 2 and b"--nul" in r.stderr


def test_cli_defaults_are_the_profile(tmp_path):
    r = cli("win98", "--disk", str(tmp_path / "o.qcow2"), "--lines")
    assert r.returncode == 0, r.stderr
    argv = r.stdout.decode().splitlines()
    p = ARGS["profiles"]["win98"]
    assert argv[argv.index("-m") + 1] == str(p["memory_mb"]) and argv[argv.index("-smp") + 1] == str(p["smp"])
    assert "-qmp" not in argv
    assert [argv[i + 1] for i, x in enumerate(argv) if x == "-nic"] == ["none"]
    # The library's existing keyword-only form is unchanged for up.py.
    assert argv == qemuargs.qemu_argv("win98", disk=str(tmp_path / "o.qcow2"))


def test_cli_kernel_boot_files_next_to_the_base_image(tmp_path):
    images, run = tmp_path / "images", tmp_path / "run"
    images.mkdir()
    run.mkdir()
    disk = str(run / "overlay.qcow2")
    r = cli("standin", "--disk", disk, "--image-dir", str(images), "--nul")
    assert r.returncode == 2
    assert f"{images}/vmlinuz is missing".encode() in r.stderr
    kb = ARGS["profiles"]["standin"]["kernel_boot"]
    for f in (kb["kernel"], kb["initrd"]):
        (images / f).write_bytes(b"")
    r = cli("standin", "--disk", disk, "--image-dir", str(images), "--nul")
    assert r.returncode == 0, r.stderr
    argv = r.stdout.decode().split("\0")[:-1]
    assert argv[argv.index("-kernel") + 1] == str(images / kb["kernel"])
    assert argv[argv.index("-initrd") + 1] == str(images / kb["initrd"])
    assert argv[argv.index("-append") + 1] == kb["append"]
    # Without --image-dir they are looked for next to the disk.
    r = cli("standin", "--disk", disk)
    assert r.returncode == 2 and f"{run}/vmlinuz".encode() in r.stderr


@pytest.mark.parametrize("args, message", [
    (["win98", "--disk", "d", "--memory", "8"], b"--memory: must be at least 16"),
    (["win98", "--disk", "d", "--cpus", "0"], b"--cpus: must be at least 1"),
    (["win98", "--disk", "d", "--memory", "lots"], b"--memory: must be a whole number"),
    (["win98", "--disk", "d", "--accel", "hvf"], b"--accel: invalid choice"),
    (["nope", "--disk", "d"], b"no QEMU profile 'nope'"),
    (["win98"], b"--disk is required"),
    (["win98", "--disk", "d", "--audio", "maybe"], b"--audio: must be on or off, not 'maybe'"),
    (["win98", "--disk", "d", "--audio-backend", "wav,id=x"], b"must not set id="),
])
def test_cli_bad_input_exits_2(args, message):
    r = cli(*args)
    assert r.returncode == 2, r
    assert message in r.stderr, r.stderr


def test_library_rejects_bad_overrides():
    for kw in ({"memory_mb": 8}, {"smp": 0}, {"memory_mb": "512"}, {"smp": True}):
        with pytest.raises(ValueError):
            qemuargs.qemu_argv("win98", disk="d", **kw)


def test_runner_builds_its_command_line_from_the_shared_file():
    start = (ROOT / "runner" / "start.sh").read_text()
    assert "qemuargs.py" in start and "--nul" in start and "mapfile -d ''" in start
    code = "\n".join(l for l in start.splitlines() if not l.lstrip().startswith("#"))
    for opt in ("-vga", "usb-tablet", "-machine", "-rtc"):  # hardware comes from qemu-args.json only
        assert opt not in code, f"start.sh hard-codes {opt}"
    docker = (ROOT / "runner" / "Dockerfile").read_text()
    # qemuargs.py imports guestlan.py (the guest LAN), so the image carries all three.
    assert re.search(r"^COPY .*packer/qemu-args\.json packer/qemuargs\.py packer/guestlan\.py /opt/loco/", docker, re.M)
    assert "QEMUARGS=/opt/loco/qemuargs.py" in docker and " python3" in docker


# ----------------------------------------------------------------------------- VM control
# QEMU stays alive when the guest powers off (-no-shutdown), so the agent can power it on again;
# the agent gets a QMP socket of its own beside whoever else speaks QMP (QEMU serves one client
# per socket).

def test_qemuargs_no_shutdown_and_a_second_qmp_socket(tmp_path):
    kw = dict(disk=str(tmp_path / "o.qcow2"), image_dir=str(tmp_path), vnc="unix:/tmp/v.sock")
    for name in ARGS["profiles"]:
        argv = qemuargs.qemu_argv(name, qmp=["unix:/a/qmp,server=on,wait=off", "unix:/b/aq,server=on,wait=off"], **kw)
        assert argv.count("-no-shutdown") == 1
        assert [argv[i + 1] for i, x in enumerate(argv) if x == "-qmp"] == ["unix:/a/qmp,server=on,wait=off",
                                                                          "unix:/b/aq,server=on,wait=off"]
        one = qemuargs.qemu_argv(name, qmp="unix:/a/qmp,server=on,wait=off", **kw)
        assert argv == one + ["-qmp", "unix:/b/aq,server=on,wait=off"], (one, argv)
        assert "-no-shutdown" not in qemuargs.qemu_argv(name, no_shutdown=False, **kw)
    # The CLI: --qmp repeats; --exit-on-poweroff leaves -no-shutdown out.
    for f in ("vmlinuz", "initrd.img"):
        (tmp_path / f).write_bytes(b"")
    r = cli("standin", "--disk", kw["disk"], "--image-dir", kw["image_dir"], "--qmp", "unix:/a/q,server=on,wait=off",
            "--qmp", "unix:/b/q,server=on,wait=off", "--nul")
    assert r.returncode == 0, r.stderr
    argv = r.stdout.decode().split("\0")[:-1]
    assert argv == qemuargs.qemu_argv("standin", disk=kw["disk"], image_dir=kw["image_dir"],
                                      qmp=["unix:/a/q,server=on,wait=off", "unix:/b/q,server=on,wait=off"])
    r = cli("standin", "--disk", kw["disk"], "--image-dir", kw["image_dir"], "--exit-on-poweroff", "--nul")
    assert r.returncode == 0 and b"-no-shutdown" not in r.stdout, r.stderr


def test_saved_state_key_ignores_the_qmp_sockets(tmp_path):
    import vmstate
    kw = dict(disk="/d/o.qcow2", image_dir="/c", accel="tcg", serial="file:/s", vnc="unix:/a/vnc.sock")
    one = vmstate.shape_of(qemuargs.qemu_argv("standin", qmp="unix:/q1,server=on,wait=off", **kw))
    two = vmstate.shape_of(qemuargs.qemu_argv("standin", qmp=["unix:/q2,server=on,wait=off",
                                                              "unix:/aq,server=on,wait=off"], **kw))
    # -qmp values are per VM; a state saved with one socket is restored with two (./loco up).
    assert [a for a in one if a != "-qmp"] == [a for a in two if a != "-qmp"]
    assert "-no-shutdown" in one
