"""Unit tests of charts/loco-vm's rendered templates (the YAML `helm template` wrote for each
case in charts/test.sh). Usage: test_templates.py RENDER_DIR CHART_DIR. Prints `ok NAME` or
`FAIL NAME` plus the reason per test; exits 1 on any failure."""
import hashlib
import json
import re
import subprocess
import sys
import traceback
from pathlib import Path

import yaml

R, CHART = Path(sys.argv[1]), Path(sys.argv[2])
ROOT = CHART.parent.parent


def load(case):
    return [d for d in yaml.safe_load_all((R / f"{case}.yaml").read_text()) if d]


def one(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"want one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kinds(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def container(sts, name):
    return next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def desktops(docs):
    for d in docs:
        if d["kind"] == "ConfigMap" and "desktops.json" in d.get("data", {}):
            return json.loads(d["data"]["desktops.json"]), "ConfigMap"
        if d["kind"] == "Secret" and "desktops.json" in d.get("stringData", {}):
            return json.loads(d["stringData"]["desktops.json"]), "Secret"
    raise AssertionError("no desktops.json")


TESTS = []


def test(f):
    TESTS.append(f)
    return f


@test
def statefulset_names_and_replicas():
    for case, n in (("default", 9), ("replicas-1", 1), ("replicas-9", 9), ("tokens-on", 3), ("view-key", 9)):
        sts = one(load(case), "StatefulSet")
        assert sts["spec"]["replicas"] == n, (case, sts["spec"]["replicas"])
        assert sts["metadata"]["name"] == "t-loco-vm"
        assert sts["spec"]["serviceName"] == "t-loco-vm-agents"
        assert sts["spec"]["podManagementPolicy"] == "Parallel"
    # Release "loco-vm": pods are loco-vm-0 … loco-vm-8 (the names the issue asks for).
    sts = one(load("release-loco-vm"), "StatefulSet")
    assert sts["metadata"]["name"] == "loco-vm"
    svcs = sorted(s["metadata"]["name"] for s in kinds(load("release-loco-vm"), "Service"))
    assert [f"loco-vm-{i}" for i in range(9)] == [s for s in svcs if re.fullmatch(r"loco-vm-\d", s)], svcs


@test
def pod_is_runner_plus_agent_sidecar_over_unix_socket():
    sts = one(load("default"), "StatefulSet")
    names = [c["name"] for c in sts["spec"]["template"]["spec"]["containers"]]
    assert names == ["runner", "agent"], names
    args = container(sts, "agent")["args"]
    assert args[:4] == ["--vnc", "unix:/run/loco/vnc.sock", "--listen", "0.0.0.0:8080"], args
    runner_env = {e["name"]: e.get("value") for e in container(sts, "runner")["env"]}
    assert runner_env["VNC_SOCKET"] == "/run/loco/vnc.sock"
    # VM control: the agent speaks QMP over the runner's second QMP socket on the shared volume.
    assert args[args.index("--qmp") + 1] == "unix:/run/loco/qmp.sock", args
    assert runner_env["AGENT_QMP_SOCKET"] == "/run/loco/qmp.sock"
    assert runner_env["BASE_IMAGE"] == "/images/base.qcow2"
    assert runner_env["ACCEL"] == "tcg"
    # Both containers mount the same in-memory emptyDir at /run/loco.
    vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert vols["vnc"]["emptyDir"]["medium"] == "Memory"
    for c in ("runner", "agent"):
        assert {"name": "vnc", "mountPath": "/run/loco"} in container(sts, c)["volumeMounts"], c


@test
def no_vnc_port_anywhere():
    for case in ("default", "kvm-hostpath", "stunner-off"):
        docs = load(case)
        sts = one(docs, "StatefulSet")
        ports = [p for c in sts["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])]
        assert ports == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}], ports
        for s in kinds(docs, "Service"):
            want = {9798, 9799} if s["metadata"]["name"] == "t-loco-vm-lan" else {8080}
            for p in s["spec"].get("ports", []):
                assert p["port"] in want and not (5900 <= p["port"] <= 5999), (s["metadata"]["name"], p)
        text = (R / f"{case}.yaml").read_text()
        assert not re.search(r"\b59\d\d\b", text), "a 59xx (VNC) port appears in the manifests"
        assert "-vnc" not in text.replace("--vnc", "")


@test
def base_image_read_only_and_overlay_claims():
    sts = one(load("default"), "StatefulSet")
    vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert vols["base-image"]["persistentVolumeClaim"] == {"claimName": "loco-base-image", "readOnly": True}
    mount = next(m for m in container(sts, "runner")["volumeMounts"] if m["name"] == "base-image")
    assert mount["readOnly"] is True
    (vct,) = sts["spec"]["volumeClaimTemplates"]
    assert vct["metadata"]["name"] == "overlay"
    assert vct["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert vct["spec"]["resources"]["requests"]["storage"] == "4Gi"


@test
def security_contexts_strict():
    for case in ("default", "kvm-deviceplugin", "tokens-on", "lan-nodhcp"):
        docs = load(case)
        workloads = [one(docs, "StatefulSet")] + kinds(docs, "Deployment")
        assert len(workloads) == 3, [w["metadata"]["name"] for w in workloads]
        for w in workloads:
            spec = w["spec"]["template"]["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            assert spec["automountServiceAccountToken"] is False
            assert not spec.get("hostNetwork") and not spec.get("hostPID"), w["metadata"]["name"]
            for c in spec["containers"]:
                sc = dict(c["securityContext"])
                assert sc.get("runAsUser", 1) != 0 and sc.get("runAsNonRoot", True) is True, (c["name"], sc)
                assert sc["capabilities"] == {"drop": ["ALL"]}, (c["name"], sc["capabilities"])
                assert sc["allowPrivilegeEscalation"] is False, c["name"]
                assert sc["readOnlyRootFilesystem"] is True, c["name"]
                assert sc.get("privileged", False) is False, c["name"]
                r = c["resources"]
                assert {"cpu", "memory"} <= set(r["requests"]) and {"cpu", "memory"} <= set(r["limits"]), c["name"]
    # With lan.dhcp.enabled=false the LAN pod is the switch alone.
    dep = one(load("lan-nodhcp"), "Deployment", "t-loco-vm-lan")
    assert [c["name"] for c in dep["spec"]["template"]["spec"]["containers"]] == ["lan"]


@test
def lan_pod_strict_no_capability_no_checkov_skip():
    """The LAN pod, Kea included, has the chart's strict context exactly: no capability added
    anywhere, no root, no exception for checkov to skip."""
    def adds(x):  # every "add" under a "capabilities" key, anywhere in x
        if isinstance(x, dict):
            found = list(x["capabilities"].get("add") or []) if isinstance(x.get("capabilities"), dict) else []
            return found + [a for v in x.values() for a in adds(v)]
        return [a for v in x for a in adds(v)] if isinstance(x, list) else []
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for case in ("default", "replicas-1", "lan-replicas-64", "lan-nodhcp", "kvm-hostpath"):
        docs = load(case)
        dep = one(docs, "Deployment", "t-loco-vm-lan")
        spec = dep["spec"]["template"]["spec"]
        assert adds(dep) == [], (case, adds(dep))
        assert spec["securityContext"] == values["podSecurityContext"], (case, spec["securityContext"])
        for c in spec["containers"]:
            assert c["securityContext"] == values["containerSecurityContext"], (case, c["name"], c["securityContext"])
        for where in (dep["metadata"], dep["spec"]["template"]["metadata"]):
            assert not [k for k in where.get("annotations", {}) if k.startswith("checkov.io/")], (case, where.get("annotations"))
    for case in ("default", "kvm-hostpath", "sunshine-on", "lan-nodhcp"):
        text = (R / f"{case}.yaml").read_text()
        assert "checkov.io/skip" not in text, f"{case}: a checkov skip annotation in the manifests"
        assert "NET_ADMIN" not in text and "SETUID" not in text and "SETGID" not in text, case


@test
def kvm_modes():
    sts = one(load("kvm-deviceplugin"), "StatefulSet")
    r = container(sts, "runner")
    assert r["resources"]["limits"]["devices.kubevirt.io/kvm"] == "1"
    assert {e["name"]: e.get("value") for e in r["env"]}["ACCEL"] == "kvm"
    assert sts["spec"]["template"]["spec"]["securityContext"]["supplementalGroups"] == [108]
    sts = one(load("kvm-hostpath"), "StatefulSet")
    r = container(sts, "runner")
    assert r["securityContext"]["privileged"] is True  # the one documented exception
    assert container(sts, "agent")["securityContext"]["privileged"] is False
    vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert vols["kvm"]["hostPath"] == {"path": "/dev/kvm", "type": "CharDevice"}
    assert "privileged" in (R / "kvm-hostpath.yaml").read_text()
    sts = one(load("default"), "StatefulSet")
    assert "kvm" not in {v["name"] for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert not any("kvm" in k for k in container(sts, "runner")["resources"]["limits"])


@test
def per_vm_services_select_one_pod():
    docs = load("default")
    for i in range(9):
        s = one(docs, "Service", f"t-loco-vm-{i}")
        assert s["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] == f"t-loco-vm-{i}"
        assert s["spec"]["selector"]["app.kubernetes.io/component"] == "vm"
    h = one(docs, "Service", "t-loco-vm-agents")
    assert h["spec"]["clusterIP"] == "None"


@test
def ingress_paths_for_each_replica():
    for case, n in (("default", 9), ("replicas-1", 1), ("tokens-on", 3)):
        docs = load(case)
        ings = {i["metadata"]["name"]: i for i in kinds(docs, "Ingress")}
        assert len(ings) == 2 * n + 1, (case, sorted(ings))
        web = ings["t-loco-vm-web"]["spec"]["rules"][0]["http"]["paths"]
        assert web == [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "t-loco-vm-web", "port": {"name": "http"}}}}]
        for i in range(n):
            ing = ings[f"t-loco-vm-{i}"]
            (p,) = ing["spec"]["rules"][0]["http"]["paths"]
            assert p["backend"]["service"]["name"] == f"t-loco-vm-{i}"
            rx = re.compile(p["path"])
            assert rx.fullmatch(f"/vm/{i}/whep") and rx.fullmatch(f"/vm/{i}/whep/sessions/abc123")
            assert not rx.match(f"/vm/{i}/metrics") and not rx.match(f"/vm/{i}/healthz")
            assert not rx.match(f"/vm/{i + 10}/whep") if i < 10 else True
            a = ing["metadata"]["annotations"]
            # What ingress-nginx does with the path: rewrite to /whep$1, and the Location header back.
            m = rx.match(f"/vm/{i}/whep/sessions/abc123")
            assert a["nginx.ingress.kubernetes.io/rewrite-target"].replace("$1", m.group(1) or "") == "/whep/sessions/abc123"
            assert a["nginx.ingress.kubernetes.io/proxy-redirect-from"] == "/whep/"
            assert a["nginx.ingress.kubernetes.io/proxy-redirect-to"] == f"/vm/{i}/whep/"
            assert ing["spec"]["tls"][0]["hosts"] == ["loco.example.com"]
            # VM control: /vm/<i>/control[/ACTION] -> agent i's /control[/ACTION], nothing else.
            ctl = ings[f"t-loco-vm-{i}-control"]
            (p,) = ctl["spec"]["rules"][0]["http"]["paths"]
            assert p["backend"]["service"]["name"] == f"t-loco-vm-{i}"
            rx = re.compile(p["path"])
            a = ctl["metadata"]["annotations"]
            for path, want in ((f"/vm/{i}/control", "/control"), (f"/vm/{i}/control/reset", "/control/reset"),
                               (f"/vm/{i}/control/revert", "/control/revert")):
                m = rx.fullmatch(path)
                assert m, path
                assert a["nginx.ingress.kubernetes.io/rewrite-target"].replace("$1", m.group(1) or "") == want
            for path in (f"/vm/{i}/control/../metrics", f"/vm/{i}/controlx", f"/vm/{i}/whep", f"/vm/{i}/healthz"):
                assert not rx.fullmatch(path), path
            assert ctl["spec"]["tls"][0]["hosts"] == ["loco.example.com"]
    ing = one(load("tls-off-no-netpol"), "Ingress", "t-loco-vm-0")
    assert "tls" not in ing["spec"]
    assert "tls" not in one(load("tls-off-no-netpol"), "Ingress", "t-loco-vm-0-control")["spec"]


def shared_config_rules(d):
    """What shared/src/config.rs (the client's strict parser, deny_unknown_fields) accepts."""
    assert set(d) <= {"desktops", "iceServers"}, set(d)
    assert d["desktops"], "empty desktop list"
    names = set()
    for x in d["desktops"]:
        assert set(x) <= {"name", "whep", "token"} and {"name", "whep"} <= set(x), set(x)
        assert x["name"].strip() and len(x["name"]) <= 64 and x["name"] not in names
        names.add(x["name"])
        assert re.match(r"^(https?://[^/\s]+/|/)\S*$", x["whep"]), x["whep"]
        assert x["token"] is None or (x["token"].strip() and "\n" not in x["token"])
    for s in d.get("iceServers", []):
        assert set(s) <= {"urls", "username", "credential"} and isinstance(s["urls"], list) and s["urls"], s
        assert all(re.match(r"^(stun|stuns|turn|turns):", u) for u in s["urls"]), s


@test
def desktops_json_content():
    d, where = desktops(load("default"))
    # No credential at all: STUNner's address and credentials come from each agent's GET /ice.
    assert where == "ConfigMap" and d["iceServers"] == [], (where, d.get("iceServers"))
    assert [x["name"] for x in d["desktops"]] == [f"vm{i}" for i in range(9)]
    assert [x["whep"] for x in d["desktops"]] == [f"https://loco.example.com/vm/{i}/whep" for i in range(9)]
    assert all(x["token"] is None for x in d["desktops"])
    d, where = desktops(load("stunner-static"))
    assert where == "ConfigMap" and d["iceServers"] == [], "the static TURN password reached desktops.json"
    for case in ("default", "stunner-off", "stunner-static", "tokens-on", "keys-existing", "view-key", "auth-off",
                 "replicas-1", "tls-off-no-netpol"):
        d = desktops(load(case))[0]
        shared_config_rules(d)
        # desktops.json as served carries no access key in any configuration.
        assert all(x["token"] is None for x in d["desktops"]), case
    d, where = desktops(load("stunner-off"))
    assert where == "ConfigMap" and d["iceServers"] == [] and len(d["desktops"]) == 9
    d, _ = desktops(load("tls-off-no-netpol"))
    assert d["desktops"][0]["whep"] == "http://loco.example.com/vm/0/whep"
    d, _ = desktops(load("replicas-1"))
    assert len(d["desktops"]) == 1


@test
def web_serves_page_and_desktops():
    docs = load("default")
    cm = one(docs, "ConfigMap", "t-loco-vm-web")
    assert set(cm["data"]) == {"desktops.json"}, "the page itself is in the loco-web image, not the chart"
    dep = one(docs, "Deployment", "t-loco-vm-web")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "loco-web:dev", c["image"]
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts == {"desktops": "/etc/loco/web", "tmp": "/tmp"}, mounts
    vol = next(v for v in pod["volumes"] if v["name"] == "desktops")
    assert vol["configMap"]["name"] == "t-loco-vm-web" and "secret" not in vol, \
        "desktops.json carries no credential by default: no Secret for it"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/desktops.json"


@test
def stunner_resources_and_agent_turn_settings():
    docs = load("default")
    gw = one(docs, "Gateway")
    assert gw["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert gw["spec"]["gatewayClassName"] == "t-loco-vm-stunner"
    assert gw["spec"]["listeners"] == [{"name": "turn-udp", "port": 3478, "protocol": "TURN-UDP"}]
    gwc = one(docs, "GatewayClass")
    assert gwc["spec"]["controllerName"] == "stunner.l7mp.io/gateway-operator"
    assert gwc["spec"]["parametersRef"]["name"] == one(docs, "GatewayConfig")["metadata"]["name"]
    route = one(docs, "UDPRoute")
    assert route["apiVersion"] == "stunner.l7mp.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": gw["metadata"]["name"]}]
    assert route["spec"]["rules"][0]["backendRefs"][0]["name"] == "t-loco-vm-agents"
    cfg = one(docs, "GatewayConfig")
    assert cfg["spec"]["authRef"]["name"] == "t-loco-vm-turn"
    # Ephemeral by default: a random shared secret, read by the agents as a file.
    turn = one(docs, "Secret", "t-loco-vm-turn")["stringData"]
    assert set(turn) == {"type", "secret"} and turn["type"] == "ephemeral", turn
    assert re.fullmatch(r"[A-Za-z0-9]{40}", turn["secret"]), turn
    sts = one(docs, "StatefulSet")
    agent = container(sts, "agent")
    args = agent["args"]
    assert args[args.index("--ice-server") + 1] == "turn:t-loco-vm-turn.loco.svc:3478?transport=udp"
    assert args[args.index("--viewer-ice-server") + 1] == "turn:turn.example.com:3478?transport=udp"
    assert args[args.index("--turn-secret-file") + 1] == "/etc/loco/turn/secret"
    assert args[args.index("--turn-ttl-s") + 1] == "3600"
    assert not any(e["name"].startswith("LOCO_TURN") for e in agent["env"])
    vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert vols["turn"]["secret"] == {"secretName": "t-loco-vm-turn", "defaultMode": 0o440,
                                      "items": [{"key": "secret", "path": "secret"}]}
    assert turn["secret"] not in json.dumps(docs[0:0] + [d for d in docs if d["kind"] == "ConfigMap"])
    # Static: the username and password from the Secret, as env; still handed out by GET /ice only.
    docs = load("stunner-static")
    turn = one(docs, "Secret", "t-loco-vm-turn")["stringData"]
    assert turn == {"type": "static", "username": "loco", "password": "change-me-please"}
    agent = container(one(docs, "StatefulSet"), "agent")
    assert "--turn-secret-file" not in agent["args"] and "--viewer-ice-server" in agent["args"]
    env = {e["name"]: e for e in agent["env"]}
    for k, key in (("LOCO_TURN_USERNAME", "username"), ("LOCO_TURN_PASSWORD", "password")):
        assert env[k]["valueFrom"]["secretKeyRef"] == {"name": "t-loco-vm-turn", "key": key}
    off = load("stunner-off")
    for k in ("Gateway", "GatewayClass", "GatewayConfig", "UDPRoute"):
        assert not kinds(off, k), k
    agent = container(one(off, "StatefulSet"), "agent")
    assert "--ice-server" not in agent["args"] and "--turn-secret-file" not in agent["args"]
    assert not any(e["name"].startswith("LOCO_TURN") for e in agent["env"])


def key_secret(docs, name="t-loco-vm-key"):
    return [x for x in kinds(docs, "Secret") if x["metadata"]["name"] == name]


@test
def auth_is_on_by_default_with_a_generated_release_key():
    docs = load("default")
    [sec] = key_secret(docs)
    data = sec["stringData"]
    assert set(data) == {"key"}, set(data)
    assert re.fullmatch(r"[A-Za-z0-9]{32}", data["key"]), "a random 32-character key"
    assert data["key"] != key_secret(load("replicas-1"))[0]["stringData"]["key"], "the same key in two renders"
    sts = one(docs, "StatefulSet")
    agent = container(sts, "agent")
    i = agent["args"].index("--token-file")
    assert agent["args"][i + 1] == "/etc/loco/keys/key"
    assert "--token" not in agent["args"] and "--view-token-file" not in agent["args"]
    assert "POD_INDEX" not in {e["name"] for e in agent["env"]}
    vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert vols["keys"]["secret"] == {"secretName": "t-loco-vm-key", "defaultMode": 0o440}
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    assert mounts["keys"] == {"name": "keys", "mountPath": "/etc/loco/keys", "readOnly": True}
    # No key in any ConfigMap, nor in the Secret the web server serves.
    key = data["key"]
    for d in docs:
        if d["kind"] == "ConfigMap" or d["metadata"]["name"] == "t-loco-vm-desktops":
            assert key not in json.dumps(d), d["metadata"]["name"]


@test
def view_key_existing_secret_and_per_vm_keys():
    docs = load("view-key")
    data = key_secret(docs)[0]["stringData"]
    assert set(data) == {"key", "view-key"} and data["key"] != data["view-key"]
    agent = container(one(docs, "StatefulSet"), "agent")
    i = agent["args"].index("--view-token-file")
    assert agent["args"][i + 1] == "/etc/loco/keys/view-key"

    docs = load("keys-existing")
    assert not key_secret(docs), "the chart made a key Secret beside auth.existingSecret"
    vols = {v["name"]: v for v in one(docs, "StatefulSet")["spec"]["template"]["spec"]["volumes"]}
    assert vols["keys"]["secret"]["secretName"] == "my-keys"

    docs = load("tokens-on")
    data = key_secret(docs)[0]["stringData"]
    assert {k: v for k, v in data.items() if k != "key"} == {f"token-{i}": f"tok-{i}-aaaaaaaaaaaaaaaa" for i in range(3)}
    agent = container(one(docs, "StatefulSet"), "agent")
    i = agent["args"].index("--token-file")
    assert agent["args"][i + 1] == "/etc/loco/keys/token-$(POD_INDEX)"
    env = {e["name"]: e for e in agent["env"]}
    assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"

    docs = load("auth-off")
    assert not key_secret(docs)
    agent = container(one(docs, "StatefulSet"), "agent")
    assert "--token-file" not in agent["args"]


@test
def network_policies():
    docs = load("default")
    agents = one(docs, "NetworkPolicy", "t-loco-vm-agents")
    sel = agents["spec"]["podSelector"]["matchLabels"]
    assert sel == {"app.kubernetes.io/name": "loco-vm", "app.kubernetes.io/instance": "t", "app.kubernetes.io/component": "vm"}
    assert agents["spec"]["policyTypes"] == ["Ingress"]
    http, media = agents["spec"]["ingress"]
    assert http["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert http["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
                             "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}}}]
    assert media["ports"] == [{"protocol": "UDP", "port": 1024, "endPort": 65535}]
    assert media["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "loco"}},
                              "podSelector": {"matchLabels": {"app": "stunner"}}}]
    # The selector matches the StatefulSet's pods and nothing else of the release.
    sts = one(docs, "StatefulSet")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in sel.items())
    web_labels = one(docs, "Deployment", "t-loco-vm-web")["spec"]["template"]["metadata"]["labels"]
    assert not all(web_labels.get(k) == v for k, v in sel.items())
    web = one(docs, "NetworkPolicy", "t-loco-vm-web")
    assert web["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "web"
    assert len(web["spec"]["ingress"]) == 1
    lan_labels = one(docs, "Deployment", "t-loco-vm-lan")["spec"]["template"]["metadata"]["labels"]
    assert not all(lan_labels.get(k) == v for k, v in sel.items()), "the agents' policy selects the LAN pod"
    off = one(load("stunner-off"), "NetworkPolicy", "t-loco-vm-agents")
    assert len(off["spec"]["ingress"]) == 1, "no UDP rule without STUNner"
    assert not kinds(load("tls-off-no-netpol"), "NetworkPolicy")


@test
def recommended_labels_everywhere():
    for d in load("default"):
        l = d["metadata"]["labels"]
        for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                  "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert k in l, (d["kind"], d["metadata"]["name"], k)


@test
def values_documented_and_schema_covers_them():
    text = (CHART / "values.yaml").read_text().splitlines()
    values = yaml.safe_load("\n".join(text))
    schema = json.loads((CHART / "values.schema.json").read_text())
    # Every value carries a `# --` comment: a key is fine when the comment is right above it
    # (or above its other comment lines), when it lies inside a documented value (the keys of a
    # default map), or when it is a section whose own keys are all documented.
    undocumented, stack = [], []  # stack: (indent, documented)
    keys = [(n, len(m.group(1)), line) for n, line in enumerate(text) if (m := re.match(r"^( *)[A-Za-z][\w.-]*:", line))]
    for idx, (n, indent, line) in enumerate(keys):
        while stack and stack[-1][0] >= indent:
            stack.pop()
        j = n - 1
        while j >= 0 and text[j].strip().startswith("#") and not text[j].strip().startswith("# --"):
            j -= 1
        here = j >= 0 and text[j].strip().startswith("# --")
        inherited = any(d for _, d in stack)
        has_children = idx + 1 < len(keys) and keys[idx + 1][1] > indent
        if not (here or inherited or has_children):
            undocumented.append(f"line {n + 1}: {line.strip()}")
        stack.append((indent, here or inherited))
    assert not undocumented, undocumented

    def walk(v, s, path):
        if isinstance(v, dict) and s.get("properties") is not None and s.get("additionalProperties") is False:
            for k, sub in v.items():
                assert k in s["properties"], f"{path}.{k} is not in values.schema.json"
                walk(sub, s["properties"][k], f"{path}.{k}")
    walk(values, schema, "")


# ----------------------------------------------------------------------- the guest LAN
def guestlan_conf(vms):
    """What packer/guestlan.py prints for the chart's Kea (the one source of the LAN's plan)."""
    return subprocess.run([sys.executable, str(ROOT / "packer/guestlan.py"), "kea-conf", "--vms", str(vms),
                           "--dhcp-port", "1067"],
                          check=True, capture_output=True, text=True).stdout


@test
def lan_kea_conf_is_guestlans():
    for case, n in (("default", 9), ("replicas-1", 1), ("replicas-9", 9), ("tokens-on", 3), ("lan-replicas-64", 64)):
        docs = load(case)
        cm = one(docs, "ConfigMap", "t-loco-vm-lan")
        assert set(cm["data"]) == {"kea-dhcp4.json"}, set(cm["data"])
        got, want = cm["data"]["kea-dhcp4.json"], guestlan_conf(n)
        # The same JSON, and byte for byte the same text.
        assert json.loads(got) == json.loads(want), (case, got)
        assert got == want, (case, [l for l in got.splitlines() if l not in want.splitlines()],
                             [l for l in want.splitlines() if l not in got.splitlines()])
        conf = json.loads(got)["Dhcp4"]
        (subnet,) = conf["subnet4"]
        res = subnet["reservations"]
        assert [r["hw-address"] for r in res] == [f"52:54:00:4c:00:{i:02x}" for i in range(1, n + 1)], case
        assert [r["ip-address"] for r in res] == [f"10.98.0.{100 + i}" for i in range(1, n + 1)], case
        assert all(r["option-data"] == [{"name": "host-name", "data": r["hostname"], "always-send": True}] for r in res), case
        assert conf["interfaces-config"] == {"interfaces": ["lo"], "dhcp-socket-type": "udp"}, case
        assert conf["lease-database"] == {"type": "memfile", "persist": False}, "leases in memory: nothing written"
        # The pod restarts when the table changes.
        tmpl = one(docs, "Deployment", "t-loco-vm-lan")["spec"]["template"]
        assert tmpl["metadata"]["annotations"]["checksum/kea"] == hashlib.sha256(got.encode()).hexdigest()
    a = one(load("replicas-1"), "Deployment", "t-loco-vm-lan")["spec"]["template"]["metadata"]["annotations"]
    b = one(load("default"), "Deployment", "t-loco-vm-lan")["spec"]["template"]["metadata"]["annotations"]
    assert a != b


@test
def lan_deployment_service_and_runner_env():
    docs = load("default")
    dep = one(docs, "Deployment", "t-loco-vm-lan")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    spec = dep["spec"]["template"]["spec"]
    assert dep["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "loco-vm", "app.kubernetes.io/instance": "t",
                                                      "app.kubernetes.io/component": "lan"}
    cs = {c["name"]: c for c in spec["containers"]}
    assert list(cs) == ["lan", "dhcp"], list(cs)
    lan, dhcp = cs["lan"], cs["dhcp"]
    assert lan["image"] == "loco-agent:dev" and lan["command"] == ["loco-lan"]
    assert lan["args"] == ["--listen", "tcp:0.0.0.0:9798", "--dhcp-server", "127.0.0.1:1067",
                           "--relay-bind", "127.0.0.2:0", "--metrics-listen", "0.0.0.0:9799"], lan["args"]
    assert lan["ports"] == [{"name": "lan", "containerPort": 9798, "protocol": "TCP"},
                            {"name": "metrics", "containerPort": 9799, "protocol": "TCP"}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert lan[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe
    assert lan["resources"] == {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}
    assert "volumeMounts" not in lan, "loco-lan writes nothing"
    assert dhcp["image"] == "loco-runner:dev" and dhcp["command"] == ["kea-dhcp4"]
    assert dhcp["args"] == ["-c", "/etc/loco-lan/kea-dhcp4.json", "-p", "1067"], dhcp["args"]
    assert dhcp["env"] == [{"name": "KEA_PIDFILE_DIR", "value": "/run/kea"},
                           {"name": "KEA_LOCKFILE_DIR", "value": "/run/kea"}], dhcp["env"]
    assert "ports" not in dhcp, "DHCP stays on the pod's loopback"
    mounts = {m["name"]: m for m in dhcp["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    assert set(mounts) == {"kea-conf", "kea-run"} and set(vols) == {"kea-conf", "kea-run"}, (set(mounts), set(vols))
    assert mounts["kea-conf"] == {"name": "kea-conf", "mountPath": "/etc/loco-lan", "readOnly": True}
    assert vols["kea-conf"]["configMap"] == {"name": "t-loco-vm-lan",
                                             "items": [{"key": "kea-dhcp4.json", "path": "kea-dhcp4.json"}]}
    assert mounts["kea-run"] == {"name": "kea-run", "mountPath": "/run/kea"}
    assert vols["kea-run"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Mi"}
    assert dhcp["resources"] == {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "200m", "memory": "64Mi"}}
    svc = one(docs, "Service", "t-loco-vm-lan")
    assert svc["spec"]["type"] == "ClusterIP" and svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"] == [{"name": "lan", "port": 9798, "targetPort": "lan", "protocol": "TCP"},
                                    {"name": "metrics", "port": 9799, "targetPort": "metrics", "protocol": "TCP"}]
    # Every VM's runner joins the switch through that Service; its number comes from the pod name.
    runner = container(one(docs, "StatefulSet"), "runner")
    env = {e["name"]: e.get("value") for e in runner["env"]}
    assert env["LOCO_LAN"] == "tcp:t-loco-vm-lan:9798" and env["VM_NIC"] == "none"
    assert "VM_INDEX" not in env, "start.sh takes it from HOSTNAME (pod t-loco-vm-<n> is VM n+1)"
    # No LAN without DHCP: just the switch; other ports follow the values.
    docs = load("lan-nodhcp")
    dep = one(docs, "Deployment", "t-loco-vm-lan")
    (lan,) = dep["spec"]["template"]["spec"]["containers"]
    assert lan["args"] == ["--listen", "tcp:0.0.0.0:9000", "--metrics-listen", "0.0.0.0:9001"], lan["args"]
    assert "volumes" not in dep["spec"]["template"]["spec"]
    assert all(c["metadata"]["name"] != "t-loco-vm-lan" for c in kinds(docs, "ConfigMap")), "a Kea configuration without Kea"
    assert "annotations" not in dep["metadata"]
    assert [p["port"] for p in one(docs, "Service", "t-loco-vm-lan")["spec"]["ports"]] == [9000, 9001]
    env = {e["name"]: e.get("value") for e in container(one(docs, "StatefulSet"), "runner")["env"]}
    assert env["LOCO_LAN"] == "tcp:t-loco-vm-lan:9000"
    np = one(docs, "NetworkPolicy", "t-loco-vm-lan")
    assert np["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 9000}]
    # release loco-vm: the names the README gives.
    docs = load("release-loco-vm")
    one(docs, "Deployment", "loco-vm-lan")
    env = {e["name"]: e.get("value") for e in container(one(docs, "StatefulSet"), "runner")["env"]}
    assert env["LOCO_LAN"] == "tcp:loco-vm-lan:9798"


@test
def lan_network_policy():
    docs = load("default")
    np = one(docs, "NetworkPolicy", "t-loco-vm-lan")
    assert np["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "loco-vm", "app.kubernetes.io/instance": "t",
                                                        "app.kubernetes.io/component": "lan"}
    assert np["spec"]["policyTypes"] == ["Ingress"]
    # Only the VM pods (the StatefulSet's pod labels), only the switch's port; metrics: no peer by default.
    (rule,) = np["spec"]["ingress"]
    vm_sel = {"app.kubernetes.io/name": "loco-vm", "app.kubernetes.io/instance": "t", "app.kubernetes.io/component": "vm"}
    assert rule == {"from": [{"podSelector": {"matchLabels": vm_sel}}], "ports": [{"protocol": "TCP", "port": 9798}]}, rule
    labels = one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in vm_sel.items())
    lan_labels = one(docs, "Deployment", "t-loco-vm-lan")["spec"]["template"]["metadata"]["labels"]
    assert all(lan_labels.get(k) == v for k, v in np["spec"]["podSelector"]["matchLabels"].items())
    # networkPolicy.metricsFrom (e.g. Prometheus) reaches the LAN's metrics port as it reaches the agents'.
    docs = load("lan-metrics")
    peer = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    vm_rule, metrics_rule = one(docs, "NetworkPolicy", "t-loco-vm-lan")["spec"]["ingress"]
    assert vm_rule == rule
    assert metrics_rule == {"from": peer, "ports": [{"protocol": "TCP", "port": 9799}]}, metrics_rule
    agents = one(docs, "NetworkPolicy", "t-loco-vm-agents")["spec"]["ingress"][0]
    assert agents["from"][1:] == peer


@test
def lan_off_renders_nothing_of_it():
    for case in ("lan-off", "lan-off-nic"):
        docs = load(case)
        lan = [f'{d["kind"]}/{d["metadata"]["name"]}' for d in docs
               if d["metadata"]["name"].endswith("-lan") or d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "lan"]
        assert not lan, lan
        text = (R / f"{case}.yaml").read_text()
        for word in ("LOCO_LAN", "loco-lan", "kea-dhcp4", "9798", "9799", "10.98.0."):
            assert word not in text, (case, word)
        env = {e["name"] for e in container(one(docs, "StatefulSet"), "runner")["env"]}
        assert "LOCO_LAN" not in env and "VM_INDEX" not in env
    # Everything else is the default render, less the LAN.
    strip = lambda docs: [d for d in docs if d["metadata"]["name"] != "t-loco-vm-lan" and d["kind"] != "Secret"]
    on, off = strip(load("default")), strip(load("lan-off"))
    for d in on:
        if d["kind"] == "StatefulSet":
            c = container(d, "runner")
            c["env"] = [e for e in c["env"] if e["name"] != "LOCO_LAN"]
    assert on == off, "lan.enabled=false changed more than the LAN"
    # vm.nic may then be anything again.
    env = {e["name"]: e.get("value") for e in container(one(load("lan-off-nic"), "StatefulSet"), "runner")["env"]}
    assert env["VM_NIC"] == "user,model=ne2k_pci" and "LOCO_LAN" not in env


@test
def audio_on_by_default_and_off_with_audio_enabled_false():
    for case, flag, env_value in (("default", "on", "1"), ("audio-off", "off", "0")):
        sts = one(load(case), "StatefulSet")
        args = container(sts, "agent")["args"]
        assert args.count("--audio") == 1 and args[args.index("--audio") + 1] == flag, (case, args)
        env = {e["name"]: e.get("value") for e in container(sts, "runner")["env"]}
        assert env["LOCO_AUDIO"] == env_value, (case, env)
    # Nothing else changes: the guest's hardware (the sound card) is the runner's, not the chart's.
    strip = lambda docs: [d for d in docs if d["kind"] != "Secret"]
    on, off = strip(load("default")), strip(load("audio-off"))
    for docs in (on, off):
        for d in docs:
            if d["kind"] == "StatefulSet":
                for c in d["spec"]["template"]["spec"]["containers"]:
                    if c["name"] == "runner":
                        c["env"] = [e for e in c["env"] if e["name"] != "LOCO_AUDIO"]
                    if c["name"] == "agent":
                        i = c["args"].index("--audio")
                        del c["args"][i:i + 2]
    assert on == off, "audio.enabled=false changed more than LOCO_AUDIO and --audio"


failed = 0
for t in TESTS:
    try:
        t()
        print(f"ok {t.__name__}")
    except Exception:
        failed += 1
        print(f"FAIL {t.__name__}")
        print(traceback.format_exc(limit=3))
sys.exit(1 if failed else 0)
