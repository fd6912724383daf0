"""The three images, run together as the Helm chart runs them, and as compose.yaml does.

    ./loco images && ~/.cache/loco/venv/bin/python -m pytest -q images/test_images.py

Needs the images (`./loco images`: loco-agent, loco-runner and loco-web, tag dev), a Docker engine,
helm (charts/test.sh installs it under ~/.cache/loco/charts-tools), the stand-in image
(packer/standin/build.sh), docker-compose, openssl and Chromium with the Playwright packages
(playwright/). Runs as root (the claim directories get the chart's fsGroup ownership).

What is checked:
- the chart, rendered by helm with three stand-in VMs (vm.profile=standin), TLS on the ingress and
  STUNner off (the browser reaches the agents' containers directly), runs under Docker exactly as
  rendered (images/podrun.py: commands, env, volumes, users, read-only roots, dropped capabilities,
  no-new-privileges, limits): every readiness probe passes, and each container really has the
  security settings;
- through the ingress stand-in (nginx applying the chart's Ingress rules and annotations), the
  page is loco-web's: application/wasm, brotli, a year's cache for hashed files, no-cache for
  index.html and desktops.json; /vm/<n>/whep reaches agent n (401 without the key), a VM that
  does not exist is 404;
- headless Chromium with IWER opens the page from the web container, every panel goes live,
  Enter VR draws them, and a controller click reaches the aimed VM's agent only
  (playwright/deploy/deploy.spec.ts); aimed at that VM's IceWM start button once the desktops are
  up, the click opens the start menu on that VM's screen and no other (read over the pods' VNC
  sockets);
- bad input: loco-web without desktops.json, the runner without its base image or with a wrong
  profile, the agent with an unreadable token file: each exits non-zero with one clear line;
- SIGTERM to a VM pod (as the kubelet deletes it) powers the guest down over ACPI and the runner
  exits 0 within the pod's grace period;
- compose.yaml: docker-compose validates it, and three of its VMs with the web page and the
  proxy come up and go live in Chromium the same way.
Figures printed: image sizes, time from the first `docker run` to every panel live, web memory.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import podrun  # noqa: E402

LOCO_CACHE = Path(os.environ.get("LOCO_CACHE", Path.home() / ".cache" / "loco"))
HELM = Path(os.environ.get("LOCO_HELM", LOCO_CACHE / "charts-tools" / "bin" / "helm" / "helm"))
STANDIN = Path(os.environ.get("LOCO_STANDIN_DIR", LOCO_CACHE / "standin"))
TAG = os.environ.get("LOCO_IMAGES_TAG", "dev")
IMAGES = {n: f"{n}:{TAG}" for n in ("loco-agent", "loco-runner", "loco-web")}
HOST = "loco.test"
N = int(os.environ.get("LOCO_IMAGES_VMS", "3"))
DOCKER = podrun.DOCKER


def docker(*a: str, check: bool = True) -> str:
    return podrun.docker(*a, check=check)


def need(cond: bool, what: str) -> None:
    if not cond:
        pytest.fail(what, pytrace=False)


@pytest.fixture(scope="module")
def tools():
    need(os.geteuid() == 0, "images/test_images.py runs as root (volume ownership as the kubelet sets it)")
    need(subprocess.run([*DOCKER, "version"], capture_output=True).returncode == 0,
         "no Docker engine answers: ./loco images starts one (or start dockerd)")
    for img in IMAGES.values():
        need(subprocess.run([*DOCKER, "image", "inspect", img], capture_output=True).returncode == 0,
             f"{img} is not built: ./loco images")
    need(HELM.exists(), f"no helm at {HELM}: bash charts/test.sh installs it (or set LOCO_HELM)")
    need((STANDIN / "standin.qcow2").exists(), f"the stand-in image is not built in {STANDIN}: sudo packer/standin/build.sh")
    need(shutil.which("openssl") is not None, "openssl is not installed")


def render(values: dict, work: Path) -> list[dict]:
    """helm template of charts/loco-vm with `values` (a copy of the chart with the offline
    placeholder for the STUNner operator dependency, as charts/test.sh does)."""
    chart = work / "chart" / "loco-vm"
    if not chart.exists():
        shutil.copytree(ROOT / "charts" / "loco-vm", chart)
        dep = chart / "charts" / "stunner-gateway-operator"
        dep.mkdir(parents=True)
        (dep / "Chart.yaml").write_text("apiVersion: v2\nname: stunner-gateway-operator\nversion: 1.1.0\n"
                                        "description: offline placeholder (images/test_images.py)\n")
    vf = work / "values.yaml"
    vf.write_text(yaml.safe_dump(values))
    out = subprocess.run([str(HELM), "template", "t", str(chart), "-f", str(vf)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (work / "rendered.yaml").write_text(out.stdout)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def claim_dir(work: Path) -> Path:
    """The base-image volume: the stand-in's disk, kernel and initrd (hard links where possible)."""
    d = work / "claim-base"
    d.mkdir(parents=True, exist_ok=True)
    for f in ("standin.qcow2", "vmlinuz", "initrd.img"):
        try:
            os.link(STANDIN / f, d / f)
        except OSError:
            shutil.copy(STANDIN / f, d / f)
    return d


def tls_pair(work: Path) -> tuple[Path, Path]:
    crt, key = work / "tls.crt", work / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
                    "-days", "2", "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST}"],
                   check=True, capture_output=True)
    return crt, key


def https(ip: str, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict, bytes]:
    """A request to the ingress at `ip` for https://loco.test/path (SNI and Host loco.test)."""
    import http.client
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    class Conn(http.client.HTTPSConnection):
        def connect(self):  # connect to the ingress address, speak TLS for loco.test
            import socket
            sock = socket.create_connection((ip, 443), timeout=10)
            self.sock = ctx.wrap_socket(sock, server_hostname=HOST)

    c = Conn(HOST, 443, context=ctx, timeout=10)
    c.request(method, path, body=b"" if method == "POST" else None, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def run_playwright(env: dict, what: str) -> str:
    pw = ROOT / "playwright"
    r = subprocess.run([str(pw / "node_modules" / ".bin" / "playwright"), "test", "--config", "deploy.config.ts"],
                       cwd=pw, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    print(out[-3000:])
    assert r.returncode == 0, f"{what}: the deployed page's Playwright test failed:\n{out[-6000:]}"
    return out


@pytest.fixture(scope="module")
def release(tools):
    work = Path(tempfile.mkdtemp(prefix="loco-images-"))
    values = {
        "replicas": N,
        "vm": {"profile": "standin", "memoryMB": 512},
        "baseImage": {"existingClaim": "loco-base", "file": "standin.qcow2"},
        "stunner": {"enabled": False},
        "ingress": {"host": HOST},
        "images": {"agent": {"tag": TAG}, "runner": {"tag": TAG}, "web": {"tag": TAG}},
    }
    docs = render(values, work)
    prefix = f"lit{os.getpid()}"
    cl = podrun.Cluster(docs, prefix, work / "run", {"loco-base": claim_dir(work)})
    t0 = time.monotonic()
    cl.setup()
    try:
        cl.start()
        cl.save()
        cl.wait_ready(300)
        crt, key = tls_pair(work)
        ip = cl.start_ingress(IMAGES["loco-web"], crt, key)
        secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-key"))
        access = secret.get("stringData", {}).get("key") or base64.b64decode(secret["data"]["key"]).decode()
        vms = cl.pods_of(next(d["metadata"]["name"] for d in docs if d["kind"] == "StatefulSet"))
        yield {"cluster": cl, "docs": docs, "ip": ip, "key": access, "vms": vms, "t0": t0, "work": work}
    finally:
        podrun.down(work / "run", prefix)
        shutil.rmtree(work, ignore_errors=True)


def test_image_sizes_and_tags(tools):
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    for name, img in IMAGES.items():
        size = int(docker("image", "inspect", "-f", "{{.Size}}", img))
        labels = json.loads(docker("image", "inspect", "-f", "{{json .Config.Labels}}", img))
        print(f"\n[images] {img}: {size / 2**20:.0f} MiB, revision {labels.get('org.opencontainers.image.revision')}")
        assert labels.get("org.opencontainers.image.revision", "").split("-")[0] in (rev, ""), labels
        user = docker("image", "inspect", "-f", "{{.Config.User}}", img)
        assert user == "10001:10001", f"{img} runs as {user!r}, not the numeric non-root user"


def test_pods_run_with_the_charts_security_settings(release):
    cl = release["cluster"]
    for pod in cl.pods:
        for c in pod.spec["containers"]:
            info = json.loads(docker("inspect", cl.cname(pod, c["name"])))[0]
            hc = info["HostConfig"]
            where = f"{pod.name}/{c['name']}"
            assert info["Config"]["User"].split(":")[0] not in ("", "0", "root"), where
            assert hc["ReadonlyRootfs"] is True, f"{where}: root file system writable"
            assert hc["CapDrop"] and "ALL" in hc["CapDrop"], f"{where}: capabilities {hc['CapDrop']}"
            assert "no-new-privileges" in (hc["SecurityOpt"] or []), where
            assert not hc["Privileged"], where
            assert hc["Memory"] > 0, f"{where}: no memory limit"


def test_ingress_serves_loco_web_and_routes_the_agents(release):
    ip = release["ip"]
    st, h, body = https(ip, "/")
    assert st == 200 and h["cache-control"] == "no-cache", (st, h)
    js = re.search(rb'"\./(loco_client\.[0-9a-f]{16}\.js)"', body)
    assert js, body[:500]
    st, h, _ = https(ip, "/" + js.group(1).decode(), headers={"Accept-Encoding": "br, gzip"})
    assert st == 200 and h.get("content-encoding") == "br" and "immutable" in h["cache-control"], h
    st, h, jsplain = https(ip, "/" + js.group(1).decode())
    wasm = re.search(rb"'(loco_client_bg\.[0-9a-f]{16}\.wasm)'", jsplain)
    assert st == 200 and wasm, "the JS names its hashed wasm"
    st, h, _ = https(ip, "/" + wasm.group(1).decode(), headers={"Accept-Encoding": "gzip"})
    assert st == 200 and h["content-type"] == "application/wasm" and h.get("content-encoding") == "gzip", h
    st, h, body = https(ip, "/desktops.json")
    d = json.loads(body)
    assert st == 200 and h["cache-control"] == "no-cache" and len(d["desktops"]) == N, (st, h, d)
    assert d["desktops"][0]["whep"] == f"https://{HOST}/vm/0/whep"
    for n in range(N):
        st, _, _ = https(ip, f"/vm/{n}/whep", "POST", {"Content-Type": "application/sdp"})
        assert st == 401, f"/vm/{n}/whep without the key: {st} (want the agent's 401)"
    for path in (f"/vm/{N}/whep", f"/vm/{N + 5}/control", "/no-such-page"):
        st, _, body = https(ip, path, "POST" if "whep" in path else "GET")
        assert st == 404 and b"<canvas" not in body, f"{path}: {st}"


def test_page_from_the_web_container_in_chromium_with_iwer(release):
    """The deploy spec clicks the aimed VM's start button once every guest's IceWM desktop is up
    (read over each pod's VNC socket, which QEMU serves to a second client beside the agent); the
    start menu must open on that VM's screen only."""
    import rfbgrab
    from loco_testkit.desktop import START_BUTTON, looks_like_icewm, start_menu_open
    cl, vms = release["cluster"], release["vms"]
    socks = [str(cl.work / p.name / "volumes" / "vnc" / "vnc.sock") for p in vms]
    deadline = time.monotonic() + 300
    for p, sock in zip(vms, socks):
        while not looks_like_icewm(rfbgrab.grab(unix=sock, timeout=20)):
            assert time.monotonic() < deadline, f"{p.name}: no IceWM desktop 300 s after start"
            time.sleep(2)
    print(f"\n[images] chart release, {N} stand-in VMs: every desktop up {time.monotonic() - release['t0']:.0f} s "
          "after the first docker run")
    target = 1
    agents = [f"http://{cl.pod_ip(p)}:8080" for p in vms]
    x, y = START_BUTTON
    out = run_playwright({
        "LOCO_DEPLOY_HOST": HOST, "LOCO_DEPLOY_IP": release["ip"], "LOCO_DEPLOY_URL": f"https://{HOST}/",
        "LOCO_DEPLOY_KEY": release["key"], "LOCO_DEPLOY_N": str(N), "LOCO_DEPLOY_AGENTS": ",".join(agents),
        "LOCO_DEPLOY_TARGET": str(target), "LOCO_DEPLOY_UV": f"{(x + 0.5) / 1024},{(y + 0.5) / 768}"}, "chart release")
    assert "1 passed" in out
    deadline = time.monotonic() + 20
    while not start_menu_open(rfbgrab.grab(unix=socks[target], timeout=20)):
        assert time.monotonic() < deadline, f"VM {target}'s start menu did not open after the controller click on it"
        time.sleep(0.5)
    for i, sock in enumerate(socks):
        if i != target:
            assert not start_menu_open(rfbgrab.grab(unix=sock, timeout=20)), f"VM {i}'s start menu opened (not aimed at)"
    web = next(p for p in cl.pods if p.owner.endswith("-web"))
    mem = docker("stats", "--no-stream", "--format", "{{.MemUsage}}", cl.cname(web, "web"))
    print(f"[images] web container memory: {mem}")


def test_bad_input_exits_with_one_clear_line(tools, tmp_path):
    strict = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", "10001:10001"]

    def run(*args: str) -> tuple[int, str]:
        r = subprocess.run([*DOCKER, "run", "--rm", *strict, *args], capture_output=True, text=True, timeout=120)
        return r.returncode, (r.stdout + r.stderr).strip()

    rc, out = run("--tmpfs", "/tmp", IMAGES["loco-web"])
    assert rc != 0 and "desktops.json is missing or unreadable" in out, out
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out = run("--tmpfs", "/tmp", "--tmpfs", "/run/loco:uid=10001", "--tmpfs", "/var/lib/loco:uid=10001",
                  "-v", f"{empty}:/images:ro", "-e", "VM_PROFILE=standin", IMAGES["loco-runner"])
    assert rc != 0 and "base image /images/base.qcow2 is missing or unreadable" in out, out
    base = claim_dir(tmp_path)
    rc, out = run("--tmpfs", "/tmp", "--tmpfs", "/run/loco:uid=10001", "--tmpfs", "/var/lib/loco:uid=10001",
                  "-v", f"{base}:/images:ro", "-e", "BASE_IMAGE=/images/standin.qcow2", "-e", "VM_PROFILE=win97",
                  "-e", "ACCEL=tcg", IMAGES["loco-runner"])
    assert rc != 0 and "win97" in out and "could not build QEMU's command line" in out, out
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "key").write_text("k" * 32)
    (keys / "key").chmod(0o600)  # root's: UID 10001 cannot read it
    rc, out = run("-v", f"{keys}:/etc/loco/keys:ro", IMAGES["loco-agent"], "--vnc", "unix:/run/loco/vnc.sock",
                  "--listen", "0.0.0.0:8080", "--token-file", "/etc/loco/keys/key")
    assert rc != 0 and "/etc/loco/keys/key" in out, out
    print(f"\n[images] agent with an unreadable token file: {out.splitlines()[-1]}")


def test_sigterm_powers_the_guest_down_within_the_grace_period(release):
    """Last for the chart release: it stops the last VM pod as the kubelet would delete it."""
    import rfbgrab
    from loco_testkit.desktop import looks_like_icewm
    cl = release["cluster"]
    pod = release["vms"][-1]
    # The guest must be up to honour the power button: wait for its IceWM desktop, read over the
    # pod's VNC socket (QEMU serves a second client beside the agent).
    sock = cl.work / pod.name / "volumes" / "vnc" / "vnc.sock"
    deadline = time.monotonic() + 300
    while not looks_like_icewm(rfbgrab.grab(unix=str(sock), timeout=20)):
        assert time.monotonic() < deadline, f"{pod.name}: no IceWM desktop in 300 s"
        time.sleep(2)
    t = time.monotonic()
    res = cl.stop_pod(pod)
    took = time.monotonic() - t
    log = subprocess.run([*DOCKER, "logs", cl.cname(pod, "runner")], capture_output=True, text=True)
    log = log.stdout + log.stderr
    print(f"\n[images] SIGTERM to {pod.name}: stopped in {took:.1f} s (grace {pod.grace} s); exits {res}")
    assert "QMP system_powerdown accepted" in log, log[-2000:]
    assert "guest still running after" not in log, f"the guest did not power down by itself:\n{log[-2000:]}"
    assert res["runner"][0] == 0, f"runner exit {res['runner']}:\n{log[-2000:]}"
    assert took < pod.grace, f"{took:.1f} s is not within the grace period {pod.grace} s"


# ---------------------------------------------------------------------------- compose.yaml
COMPOSE = ROOT / "compose.yaml"


def compose(*args: str, env: dict, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    need(exe is not None, "docker-compose is not installed (apt-get install docker-compose)")
    r = subprocess.run([exe, "-f", str(COMPOSE), *args], env={**os.environ, **env}, capture_output=True, text=True,
                       timeout=timeout)
    if check:
        assert r.returncode == 0, f"docker-compose {' '.join(args)}: {r.stdout[-2000:]}{r.stderr[-3000:]}"
    return r


def test_compose_file_validates(tools, tmp_path):
    env = {"LOCO_BASE_DIR": str(tmp_path), "LOCO_KEY": "k" * 32, "COMPOSE_PROJECT_NAME": "locovalidate"}
    r = compose("config", "-q", env=env)
    assert r.stderr.strip() == "", r.stderr
    cfg = yaml.safe_load(compose("config", env=env).stdout)
    names = set(cfg["services"])
    assert {f"vm{i}" for i in range(1, 10)} <= names and {f"agent{i}" for i in range(1, 10)} <= names, names
    assert {"web", "proxy", "lan", "dhcp"} <= names, names
    for name, s in cfg["services"].items():
        assert s.get("read_only") is True, f"{name}: root file system writable"
        assert s.get("cap_drop") == ["ALL"], f"{name}: {s.get('cap_drop')}"
        assert "no-new-privileges:true" in s.get("security_opt", []), name
    r = compose("config", env={k: v for k, v in env.items() if k != "LOCO_KEY"}, check=False)
    assert r.returncode != 0 and "LOCO_KEY" in r.stderr, "a missing LOCO_KEY must be an error"
    # The guest LAN's DHCP configuration is what packer/guestlan.py makes for nine VMs.
    want = subprocess.run([sys.executable, str(ROOT / "packer" / "guestlan.py"), "kea-conf", "--vms", "9",
                           "--dhcp-port", "1067"], capture_output=True, text=True, check=True).stdout
    assert (ROOT / "images" / "compose" / "kea-dhcp4.json").read_text() == want, \
        "images/compose/kea-dhcp4.json is stale: python3 packer/guestlan.py kea-conf --vms 9 --dhcp-port 1067 > it"


def test_compose_three_vms_live_in_chromium(tools, tmp_path):
    key = base64.b32encode(os.urandom(20)).decode().lower()
    project = f"locot{os.getpid()}"
    desktops = tmp_path / "desktops.json"
    desktops.write_text(json.dumps({"desktops": [{"name": f"vm{i}", "whep": f"/vm/{i}/whep", "token": None}
                                                 for i in range(1, N + 1)]}))
    desktops.chmod(0o644)
    env = {"LOCO_BASE_DIR": str(claim_dir(tmp_path)), "LOCO_BASE_FILE": "standin.qcow2", "LOCO_PROFILE": "standin",
           "LOCO_KEY": key, "LOCO_DESKTOPS": str(desktops), "LOCO_TAG": TAG, "LOCO_PORT": "0", "COMPOSE_PROJECT_NAME": project}
    services = ["web", "proxy", "lan", "dhcp"] + [f"{k}{i}" for i in range(1, N + 1) for k in ("vm", "agent")]
    t0 = time.monotonic()
    try:
        compose("up", "-d", "--no-build", *services, env=env)
        ip = docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", f"{project}_proxy_1")
        agents = [f"http://{docker('inspect', '-f', '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}', f'{project}_vm{i}_1')}:8080"
                  for i in range(1, N + 1)]
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://{ip}:8080/desktops.json", timeout=2) as r:
                    if r.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                pass
            assert time.monotonic() < deadline, compose("logs", "--tail", "20", env=env, check=False).stdout[-4000:]
            time.sleep(0.5)
        out = run_playwright({
            "LOCO_DEPLOY_HOST": "", "LOCO_DEPLOY_IP": "", "LOCO_DEPLOY_URL": f"http://{ip}:8080/",
            "LOCO_DEPLOY_KEY": key, "LOCO_DEPLOY_N": str(N), "LOCO_DEPLOY_AGENTS": ",".join(agents),
            "LOCO_DEPLOY_TARGET": "1"}, "compose.yaml")
        print(f"\n[images] compose.yaml, {N} VMs: docker-compose up → every panel live in Chromium "
              f"{time.monotonic() - t0:.0f} s")
        assert "1 passed" in out
    finally:
        compose("down", "-v", "-t", "30", env=env, check=False)
