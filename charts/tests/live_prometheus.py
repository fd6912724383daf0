"""monitoring/ against the real thing: Prometheus (Debian's binary, loopback, 1 s scrapes)
scraping a real loco-agent that streams a real Xvnc desktop (its root window repainted ten
times a second) to a real WebRTC viewer (aiortc, tools/loco_testkit/whep_aiortc.py).

The viewer goes through a local nginx configured the way ingress-nginx configures VM 0's
Ingress of the rendered chart (regex location, `rewrite ... break` from rewrite-target,
`proxy_redirect` from proxy-redirect-from/to), so the test also shows that the agent's
`Location: /whep/sessions/ID` comes back as /vm/0/whep/sessions/ID and that the DELETE sent
there reaches the agent.

Checks: every recording rule and every dashboard query evaluates without error and returns
series; every alert expression evaluates without error (none fires while healthy); Prometheus
reports every rule healthy; then, with Xvnc stopped, the VNC-disconnected alert expression
returns the VM, and with the agent stopped, the agent-down expression does.
Prints `ok NAME` / `FAIL NAME` lines; exits 1 on a failure.
"""
import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--agent", required=True)
ap.add_argument("--work", required=True)
ap.add_argument("--input", required=True,
                help='JSON {"rules": <monitoring/rules/loco.rules.yaml>, "ingress": <VM 0\'s rendered Ingress>}')
ap.add_argument("--dashboard", required=True)
a = ap.parse_args()
INPUT = json.load(open(a.input))
# The harness (tools/ on PYTHONPATH: charts/test.sh and ./loco set it).
from loco_testkit import whep_aiortc  # noqa: E402
from loco_testkit.agent import Agent  # noqa: E402
from loco_testkit.procs import kill_all_groups, kill_group, spawn  # noqa: E402
from loco_testkit.waits import free_port, port_accepts, wait_until  # noqa: E402
from loco_testkit.xvnc import Xvnc  # noqa: E402

W = Path(a.work)
W.mkdir(parents=True, exist_ok=True)
os.chmod(W, 0o755)
procs: list[subprocess.Popen] = []
failed = 0


def ok(name):
    print(f"ok {name}", flush=True)


def fail(name, why):
    global failed
    failed += 1
    print(f"FAIL {name}\n{why}", flush=True)


def start(name, cmd, **kw):
    p = spawn(cmd, log_path=W / f"{name}.log", name=name, **kw)
    procs.append(p)
    return p


def wait_for(what, fn, timeout=20.0, interval=0.2):
    return wait_until(fn, timeout, interval, what)


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


PROM = None


def query(expr):
    body = json.loads(http_get(f"{PROM}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    if body.get("status") != "success":
        raise RuntimeError(body.get("error", body))
    return body["data"]["result"]


def main():
    global PROM
    # --- Xvnc with a changing screen
    xvnc = Xvnc(W).start()
    procs.append(xvnc.proc)
    disp, vnc_port = xvnc.display, xvnc.port
    nginx_port, prom_port = free_port(), free_port()
    stop_anim = threading.Event()

    def animate():
        colours = ["#203040", "#804020", "#208040", "#402080"]
        i = 0
        while not stop_anim.is_set():
            subprocess.run(["xsetroot", "-display", f":{disp}", "-solid", colours[i % 4]], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            i += 1
            stop_anim.wait(0.1)
    threading.Thread(target=animate, daemon=True).start()

    # --- the agent
    agent = Agent.start(f"127.0.0.1:{vnc_port}", W / "agent.log", binary=a.agent)
    procs.append(agent.proc)
    agent_port = agent.port
    agent.wait_vnc(True, timeout=20)

    # --- nginx doing what ingress-nginx does for VM 0's Ingress
    ing = INPUT["ingress"]
    ann = ing["metadata"]["annotations"]
    path = ing["spec"]["rules"][0]["http"]["paths"][0]["path"]
    assert ann["nginx.ingress.kubernetes.io/use-regex"] == "true"
    conf = W / "nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes 1;
pid {W}/nginx.pid;
error_log {W}/nginx-error.log info;
events {{ worker_connections 64; }}
http {{
  access_log {W}/nginx-access.log;
  client_body_temp_path {W}/nginx-body;
  proxy_temp_path {W}/nginx-proxy;
  client_body_buffer_size 128k;
  client_max_body_size {ann.get("nginx.ingress.kubernetes.io/proxy-body-size", "1m")};
  server {{
    listen 127.0.0.1:{nginx_port};
    location ~* "^{path}" {{
      rewrite "(?i){path}" {ann["nginx.ingress.kubernetes.io/rewrite-target"]} break;
      proxy_redirect {ann["nginx.ingress.kubernetes.io/proxy-redirect-from"]} {ann["nginx.ingress.kubernetes.io/proxy-redirect-to"]};
      proxy_pass http://127.0.0.1:{agent_port};
    }}
  }}
}}
""")
    start("nginx", ["nginx", "-c", str(conf), "-p", str(W)])
    wait_for("nginx", lambda: port_accepts(nginx_port))

    # --- Prometheus with the shipped rules (group intervals shortened to 1 s)
    rules = INPUT["rules"]
    for g in rules["groups"]:
        g["interval"] = "1s"
    # JSON is YAML: Prometheus reads both files as they are.
    (W / "rules.yaml").write_text(json.dumps(rules))
    (W / "prometheus.yml").write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(W / "rules.yaml")],
        "scrape_configs": [{"job_name": "loco-agent", "static_configs": [
            {"targets": [f"127.0.0.1:{agent_port}"], "labels": {"vm": "loco-vm-0"}}]}],
    }))
    start("prometheus", ["prometheus", f"--config.file={W}/prometheus.yml", f"--storage.tsdb.path={W}/data",
                         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"])
    PROM = f"http://127.0.0.1:{prom_port}"
    wait_for("Prometheus", lambda: "Ready" in http_get(f"{PROM}/-/ready"), timeout=30)

    # --- a viewer through the ingress-like proxy
    async def view():
        v = await whep_aiortc.connect(f"http://127.0.0.1:{nginx_port}/vm/0", codec="h264")
        loc = urllib.parse.urlparse(v.location).path
        if re.fullmatch(r"/vm/0/whep/sessions/[^/]+", loc):
            ok(f"WHEP through the ingress rewrite: Location resolves to {loc}")
        else:
            fail("WHEP Location through the ingress rewrite", f"got {v.location}")
        t0 = time.monotonic()
        while v.frame_count < 30 and time.monotonic() - t0 < 20:
            await asyncio.sleep(0.2)
        # Let Prometheus see a few scrapes with the viewer on and frames flowing.
        await asyncio.sleep(12)
        return v
    loop = asyncio.new_event_loop()
    v = loop.run_until_complete(view())
    if v.frame_count >= 30:
        ok(f"viewer decoded {v.frame_count} frames")
    else:
        fail("viewer frames", f"only {v.frame_count} decoded")

    # --- every query evaluates; data-bearing ones return series
    dash = json.load(open(a.dashboard))
    for p in dash["panels"]:
        for t in p["targets"]:
            expr = t["expr"].replace("$vm", ".*").replace("$__rate_interval", "15s")
            name = f"dashboard \"{p['title']}\" {t.get('legendFormat', '')}"
            try:
                res = query(expr)
                (ok(f"{name}: {len(res)} series") if res else fail(name, f"no series for {expr}"))
            except Exception as e:  # noqa: BLE001
                fail(name, f"{expr}: {e}")
    for g in rules["groups"]:
        for r in g["rules"]:
            if "record" in r:
                try:
                    res = query(r["record"])
                    vals = [s["value"][1] for s in res]
                    (ok(f"recording rule {r['record']}: {vals}") if res else fail(f"recording rule {r['record']}", "no series"))
                except Exception as e:  # noqa: BLE001
                    fail(f"recording rule {r['record']}", str(e))
            else:
                try:
                    res = query(r["expr"])
                    (ok(f"alert {r['alert']}: evaluates, not firing while healthy") if not res
                     else fail(f"alert {r['alert']}", f"fires while healthy: {res}"))
                except Exception as e:  # noqa: BLE001
                    fail(f"alert {r['alert']}", str(e))
    health = json.loads(http_get(f"{PROM}/api/v1/rules"))["data"]["groups"]
    bad = [(r.get("name"), r.get("lastError")) for g in health for r in g["rules"] if r.get("health") != "ok"]
    (ok(f"Prometheus: all {sum(len(g['rules']) for g in health)} rules healthy") if not bad else fail("rule health", str(bad)))

    status = loop.run_until_complete(v.close())
    (ok("DELETE of the rewritten Location reached the agent (200)") if status == 200
     else fail("DELETE through the ingress rewrite", f"status {status}"))
    loop.close()

    # --- failures make the alert expressions return the VM
    stop_anim.set()
    xvnc.kill()
    vnc_alert = next(r["expr"] for g in rules["groups"] for r in g["rules"] if r.get("alert") == "LocoVNCDisconnected")
    try:
        res = wait_for("VNC alert", lambda: query(vnc_alert), timeout=15)
        ok(f"LocoVNCDisconnected expression returns {res[0]['metric'].get('vm')} once Xvnc is gone")
    except Exception as e:  # noqa: BLE001
        fail("LocoVNCDisconnected expression after stopping Xvnc", str(e))
    agent.stop(grace=5)
    down_alert = next(r["expr"] for g in rules["groups"] for r in g["rules"] if r.get("alert") == "LocoAgentDown")
    try:
        res = wait_for("agent-down alert", lambda: query(down_alert), timeout=15)
        ok(f"LocoAgentDown expression returns {res[0]['metric'].get('vm')} once the agent is gone")
    except Exception as e:  # noqa: BLE001
        fail("LocoAgentDown expression after stopping the agent", str(e))


try:
    main()
except Exception as e:  # noqa: BLE001
    fail("live test", f"{type(e).__name__}: {e}")
    for p in sorted(W.glob("*.log")):
        print(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-10:]))
finally:
    for p in reversed(procs):
        kill_group(p, grace=5)
    kill_all_groups()
    shutil.rmtree(W / "data", ignore_errors=True)
sys.exit(1 if failed else 0)
