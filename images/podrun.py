#!/usr/bin/env python3
"""Runs a rendered Helm release's pods under Docker, as a kubelet would: a test stand-in for a cluster.

    podrun.py up   --manifest RENDERED.yaml --claim NAME=HOSTDIR ... --state DIR [--prefix P]
    podrun.py down --state DIR

No Kubernetes runs on loco's development machines, so images/test_images.py checks the chart's
pods by running exactly what `helm template` renders: every container of every StatefulSet and
Deployment pod, with the rendered image, command, args, env (values, Secret and ConfigMap keys,
the downward API's metadata.name/namespace/labels), volumes (emptyDir, the StatefulSet's
volumeClaimTemplates, existing claims bound to host directories with --claim, Secret, ConfigMap
and projected volumes written out with the rendered modes and fsGroup ownership), security
contexts (user and group, supplemental groups and fsGroup, read-only root, dropped capabilities,
no-new-privileges, privileged, runAsNonRoot checked against the image), resource limits (memory,
CPU) and termination grace periods. A pod is a "pause" container holding the network namespace
(and the pod's hostname) that its containers join, so they share localhost as in a pod; Services
become network aliases of their pods on one Docker network, so in-cluster names resolve. Probes
are run from the host against the pod's address (httpGet, tcpSocket), as the kubelet runs them
from the node.

Ingresses become an nginx reverse proxy (`Cluster.start_ingress`) that applies the rules the
chart gives ingress-nginx: Prefix and regex paths, rewrite-target, proxy-redirect-from/to,
proxy-body-size, proxy-read-timeout and TLS. It is a stand-in for ingress-nginx with the same
semantics for these annotations, not ingress-nginx itself.

Not modelled (and not used by the test): NetworkPolicy, Service port remapping (a Service's port
must equal its target port), emptyDir sizeLimit and medium Memory (a host directory either way),
CPU requests, init containers, STUNner's Gateway resources. Unsupported fields in a pod raise
an error naming them rather than being ignored.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DOCKER = os.environ.get("LOCO_DOCKER", "docker").split()


class PodRunError(RuntimeError):
    pass


def docker(*args: str, check: bool = True, capture: bool = True, timeout: float | None = 300) -> str:
    r = subprocess.run([*DOCKER, *args], capture_output=capture, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise PodRunError(f"docker {' '.join(args[:3])} … failed ({r.returncode}): {(r.stderr or '').strip()[-2000:]}")
    return (r.stdout or "").strip()


def quantity_bytes(q: str) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q))
    if not m:
        raise PodRunError(f"memory quantity {q!r} is not understood")
    mult = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
            "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[m.group(2)]
    return int(m.group(1)) * mult


def quantity_cpus(q: str) -> str:
    q = str(q)
    return f"{int(q[:-1]) / 1000:g}" if q.endswith("m") else f"{float(q):g}"


def expand(s: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values; $$ is a literal $."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), s)


@dataclass
class Pod:
    name: str
    kind: str  # StatefulSet or Deployment
    owner: str
    spec: dict
    labels: dict
    claims: dict = field(default_factory=dict)  # volumeClaimTemplate name -> claim name

    @property
    def grace(self) -> int:
        return int(self.spec.get("terminationGracePeriodSeconds", 30))


class Cluster:
    """The pods, Services and Ingresses of one rendered release, run under Docker."""

    POD_KEYS = {"serviceAccountName", "automountServiceAccountToken", "enableServiceLinks", "securityContext",
                "containers", "volumes", "terminationGracePeriodSeconds", "imagePullSecrets", "nodeSelector",
                "tolerations", "affinity"}
    CONTAINER_KEYS = {"name", "image", "imagePullPolicy", "command", "args", "env", "ports", "readinessProbe",
                      "livenessProbe", "securityContext", "resources", "volumeMounts"}

    def __init__(self, docs: list[dict], prefix: str, work: Path, claims: dict[str, Path]):
        self.docs = [d for d in docs if d]
        self.prefix = prefix
        self.work = work
        self.host_claims = claims
        self.network = f"{prefix}-net"
        self.namespace = "default"
        self.pods: list[Pod] = []
        for d in self.docs:
            if d["kind"] == "StatefulSet":
                tmpl = d["spec"]["template"]
                for i in range(int(d["spec"].get("replicas", 1))):
                    name = f"{d['metadata']['name']}-{i}"
                    labels = {**tmpl["metadata"].get("labels", {}), "statefulset.kubernetes.io/pod-name": name,
                              "apps.kubernetes.io/pod-index": str(i)}
                    claims_ = {c["metadata"]["name"]: f"{c['metadata']['name']}-{name}"
                               for c in d["spec"].get("volumeClaimTemplates", [])}
                    self.pods.append(Pod(name, "StatefulSet", d["metadata"]["name"], tmpl["spec"], labels, claims_))
            elif d["kind"] == "Deployment":
                tmpl = d["spec"]["template"]
                for i in range(int(d["spec"].get("replicas", 1))):
                    name = f"{d['metadata']['name']}-{secrets.token_hex(3)}"
                    self.pods.append(Pod(name, "Deployment", d["metadata"]["name"], tmpl["spec"],
                                         dict(tmpl["metadata"].get("labels", {}))))
        self.state: dict = {"containers": [], "network": self.network, "prefix": prefix, "pods": {}}

    # ------------------------------------------------------------------ lookups
    def find(self, kind: str, name: str) -> dict:
        for d in self.docs:
            if d["kind"] == kind and d["metadata"]["name"] == name:
                return d
        raise PodRunError(f"the release has no {kind} {name}")

    def key_of(self, kind: str, name: str, key: str) -> str:
        d = self.find(kind, name)
        if key in d.get("stringData", {}):
            return d["stringData"][key]
        if key in d.get("data", {}):
            v = d["data"][key]
            return base64.b64decode(v).decode() if kind == "Secret" else v
        raise PodRunError(f"{kind} {name} has no key {key}")

    def services_of(self, pod: Pod) -> list[str]:
        names = []
        for d in self.docs:
            if d["kind"] != "Service":
                continue
            sel = d["spec"].get("selector") or {}
            if sel and all(pod.labels.get(k) == v for k, v in sel.items()):
                names.append(d["metadata"]["name"])
                for p in d["spec"].get("ports", []):
                    tp = p.get("targetPort", p["port"])
                    if isinstance(tp, str):
                        tp = self.container_port(pod, tp)
                    if int(tp) != int(p["port"]):
                        raise PodRunError(f"Service {d['metadata']['name']} maps port {p['port']} to {tp}: "
                                          "port remapping is not modelled")
                if d["spec"].get("clusterIP") == "None":
                    names.append(f"{pod.name}.{d['metadata']['name']}")
        return names

    @staticmethod
    def container_port(pod: Pod, name: str) -> int:
        for c in pod.spec["containers"]:
            for p in c.get("ports", []):
                if p.get("name") == name:
                    return int(p["containerPort"])
        raise PodRunError(f"pod {pod.name} has no port named {name}")

    def pod(self, name: str) -> Pod:
        for p in self.pods:
            if p.name == name:
                return p
        raise PodRunError(f"no pod {name}")

    def pods_of(self, owner: str) -> list[Pod]:
        return [p for p in self.pods if p.owner == owner]

    def pod_ip(self, pod: Pod) -> str:
        return docker("inspect", "-f", f"{{{{ (index .NetworkSettings.Networks \"{self.network}\").IPAddress }}}}",
                      self.cname(pod))

    def cname(self, pod: Pod, container: str | None = None) -> str:
        return f"{self.prefix}-{pod.name}" + (f"-{container}" if container else "")

    # ------------------------------------------------------------------ volumes
    def _write_files(self, dst: Path, files: dict[str, str], mode: int, gid: int | None) -> None:
        dst.mkdir(parents=True, exist_ok=True)
        os.chown(dst, 0, gid if gid is not None else 0)
        dst.chmod(0o755)
        for rel, text in files.items():
            f = dst / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text)
            os.chown(f, 0, gid if gid is not None else 0)
            f.chmod(mode)

    def _source_files(self, kind: str, src: dict) -> dict[str, str]:
        name = src.get("name") or src.get("secretName")
        d = self.find(kind, name)
        if src.get("items"):
            return {it["path"]: self.key_of(kind, name, it["key"]) for it in src["items"]}
        keys = list(d.get("stringData", {})) + list(d.get("data", {}))
        return {k: self.key_of(kind, name, k) for k in keys}

    def volume_dirs(self, pod: Pod) -> dict[str, tuple[Path, bool]]:
        """Each pod volume as a host directory (and whether it must be mounted read-only)."""
        psc = pod.spec.get("securityContext", {})
        fs_group = psc.get("fsGroup")
        root = self.work / pod.name
        out: dict[str, tuple[Path, bool]] = {}
        for v in pod.spec.get("volumes", []):
            name = v["name"]
            d = root / "volumes" / name
            if "emptyDir" in v:
                d.mkdir(parents=True, exist_ok=True)
                d.chmod(0o777)  # what the kubelet gives an emptyDir
                out[name] = (d, False)
            elif "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                if claim not in self.host_claims:
                    raise PodRunError(f"pod {pod.name} needs the claim {claim}: pass --claim {claim}=HOSTDIR")
                out[name] = (self.host_claims[claim], bool(v["persistentVolumeClaim"].get("readOnly")))
            elif "secret" in v or "configMap" in v:
                kind = "Secret" if "secret" in v else "ConfigMap"
                src = v["secret"] if kind == "Secret" else v["configMap"]
                mode = int(src.get("defaultMode", 0o644))
                self._write_files(d, self._source_files(kind, src), mode, fs_group)
                out[name] = (d, True)
            elif "projected" in v:
                files: dict[str, str] = {}
                for s in v["projected"]["sources"]:
                    kind = "Secret" if "secret" in s else "ConfigMap"
                    files.update(self._source_files(kind, s.get("secret") or s.get("configMap")))
                self._write_files(d, files, int(v["projected"].get("defaultMode", 0o644)), fs_group)
                out[name] = (d, True)
            elif "hostPath" in v:
                out[name] = (Path(v["hostPath"]["path"]), False)
            else:
                raise PodRunError(f"pod {pod.name}: volume {name} is of a kind not modelled: {sorted(v)}")
        for tmpl, claim in pod.claims.items():
            d = self.work / "claims" / claim
            d.mkdir(parents=True, exist_ok=True)
            # fsGroup: the volume's root belongs to the group, setgid, group-writable.
            os.chown(d, 0, fs_group if fs_group is not None else 0)
            d.chmod(0o2775 if fs_group is not None else 0o777)
            out[tmpl] = (d, False)
        return out

    # ------------------------------------------------------------------ containers
    def env_of(self, pod: Pod, c: dict) -> dict[str, str]:
        env: dict[str, str] = {"HOSTNAME": pod.name}
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = expand(str(e["value"]), env)
            elif "valueFrom" in e:
                vf = e["valueFrom"]
                if "secretKeyRef" in vf:
                    env[e["name"]] = self.key_of("Secret", vf["secretKeyRef"]["name"], vf["secretKeyRef"]["key"])
                elif "configMapKeyRef" in vf:
                    env[e["name"]] = self.key_of("ConfigMap", vf["configMapKeyRef"]["name"], vf["configMapKeyRef"]["key"])
                elif "fieldRef" in vf:
                    path = vf["fieldRef"]["fieldPath"]
                    m = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path)
                    if path == "metadata.name":
                        env[e["name"]] = pod.name
                    elif path == "metadata.namespace":
                        env[e["name"]] = self.namespace
                    elif m:
                        env[e["name"]] = pod.labels[m.group(1)]
                    else:
                        raise PodRunError(f"fieldRef {path} is not modelled")
                else:
                    raise PodRunError(f"env valueFrom {sorted(vf)} is not modelled")
            else:
                env[e["name"]] = ""
        return env

    def run_args(self, pod: Pod, c: dict, vols: dict[str, tuple[Path, bool]]) -> list[str]:
        extra = set(c) - self.CONTAINER_KEYS
        if extra:
            raise PodRunError(f"container {c['name']} of {pod.name} has fields not modelled: {sorted(extra)}")
        psc = pod.spec.get("securityContext", {})
        csc = c.get("securityContext", {})
        sc = {**psc, **csc}
        args = ["run", "-d", "--name", self.cname(pod, c["name"]), "--network", f"container:{self.cname(pod)}",
                "--label", f"loco.podrun={self.prefix}"]
        image_user = docker("image", "inspect", "-f", "{{.Config.User}}", c["image"])
        uid = sc.get("runAsUser")
        gid = sc.get("runAsGroup")
        if uid is not None:
            args += ["--user", f"{uid}:{gid}" if gid is not None else str(uid)]
        if sc.get("runAsNonRoot"):
            effective = str(uid) if uid is not None else image_user.split(":")[0]
            if not effective.isdigit() or int(effective) == 0:
                raise PodRunError(f"{pod.name}/{c['name']}: runAsNonRoot, but the user is {effective or 'root'} "
                                  "(the kubelet refuses a non-numeric or root user)")
        for g in psc.get("supplementalGroups", []) + ([psc["fsGroup"]] if "fsGroup" in psc else []):
            args += ["--group-add", str(g)]
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        caps = sc.get("capabilities", {})
        for cap in caps.get("drop", []):
            args += ["--cap-drop", cap]
        for cap in caps.get("add", []):
            args += ["--cap-add", cap]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        if sc.get("privileged"):
            args.append("--privileged")
        limits = c.get("resources", {}).get("limits", {})
        if "memory" in limits:
            args += ["--memory", str(quantity_bytes(limits["memory"]))]
        if "cpu" in limits:
            args += ["--cpus", quantity_cpus(limits["cpu"])]
        env = self.env_of(pod, c)
        for k, v in env.items():
            args += ["-e", f"{k}={v}"]
        for m in c.get("volumeMounts", []):
            host, ro = vols[m["name"]]
            if m.get("subPath"):
                host = host / m["subPath"]
            args += ["-v", f"{host}:{m['mountPath']}{':ro' if ro or m.get('readOnly') else ''}"]
        argv = [expand(a, env) for a in c.get("args", [])]
        if c.get("command"):
            cmd = [expand(a, env) for a in c["command"]]
            args += ["--entrypoint", cmd[0], c["image"], *cmd[1:], *argv]
        else:
            args += [c["image"], *argv]
        return args

    # ------------------------------------------------------------------ life cycle
    def setup(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        if docker("network", "ls", "-q", "-f", f"name=^{self.network}$"):
            raise PodRunError(f"network {self.network} exists: another run with prefix {self.prefix} is up (podrun.py down)")
        docker("network", "create", "--label", f"loco.podrun={self.prefix}", self.network)

    def start_pod(self, pod: Pod) -> None:
        extra = set(pod.spec) - self.POD_KEYS
        if extra:
            raise PodRunError(f"pod {pod.name} has fields not modelled: {sorted(extra)}")
        vols = self.volume_dirs(pod)
        image = pod.spec["containers"][0]["image"]
        pause = ["run", "-d", "--name", self.cname(pod), "--hostname", pod.name, "--network", self.network,
                 "--label", f"loco.podrun={self.prefix}", "--read-only", "--cap-drop", "ALL",
                 "--security-opt", "no-new-privileges", "--user", "65534:65534"]
        for a in self.services_of(pod):
            pause += ["--network-alias", a]
        for s in pod.spec.get("securityContext", {}).get("sysctls", []):
            pause += ["--sysctl", f"{s['name']}={s['value']}"]
        docker(*pause, "--entrypoint", "sleep", image, "infinity")
        self.state["containers"].append(self.cname(pod))
        names = []
        for c in pod.spec["containers"]:
            docker(*self.run_args(pod, c, vols))
            self.state["containers"].append(self.cname(pod, c["name"]))
            names.append(c["name"])
        self.state["pods"][pod.name] = {"owner": pod.owner, "containers": names, "grace": pod.grace}

    def start(self, owners: list[str] | None = None) -> None:
        for p in self.pods:
            if owners is None or p.owner in owners:
                self.start_pod(p)

    def probe(self, pod: Pod, c: dict, which: str = "readinessProbe") -> tuple[bool, str]:
        pr = c.get(which)
        if not pr:
            return True, "no probe"
        ip = self.pod_ip(pod)
        if "httpGet" in pr:
            port = pr["httpGet"]["port"]
            port = self.container_port(pod, port) if isinstance(port, str) else int(port)
            url = f"http://{ip}:{port}{pr['httpGet'].get('path', '/')}"
            try:
                with urllib.request.urlopen(url, timeout=pr.get("timeoutSeconds", 1) + 1) as r:
                    return 200 <= r.status < 400, f"{url} {r.status}"
            except Exception as e:  # noqa: BLE001 - any failure is a failed probe
                return False, f"{url} {e}"
        if "tcpSocket" in pr:
            port = pr["tcpSocket"]["port"]
            port = self.container_port(pod, port) if isinstance(port, str) else int(port)
            try:
                socket.create_connection((ip, port), timeout=1).close()
                return True, f"tcp {ip}:{port}"
            except OSError as e:
                return False, f"tcp {ip}:{port} {e}"
        raise PodRunError(f"probe {sorted(pr)} is not modelled")

    def running(self, pod: Pod, container: str) -> tuple[bool, int | None]:
        out = docker("inspect", "-f", "{{.State.Running}} {{.State.ExitCode}}", self.cname(pod, container))
        run, code = out.split()
        return run == "true", None if run == "true" else int(code)

    def wait_ready(self, timeout: float, pods: list[Pod] | None = None) -> float:
        """Waits until every container's readiness probe passes; the seconds it took. Fails early,
        with the container's last log lines, when a container exits."""
        t0 = time.monotonic()
        pods = pods or [p for p in self.pods if p.name in self.state["pods"]]
        pending = [(p, c) for p in pods for c in p.spec["containers"]]
        last = ""
        while pending:
            for p, c in list(pending):
                alive, code = self.running(p, c["name"])
                if not alive:
                    raise PodRunError(f"{p.name}/{c['name']} exited ({code}):\n{self.logs(p, c['name'])}")
                ok, last = self.probe(p, c)
                if ok:
                    pending.remove((p, c))
            if pending and time.monotonic() - t0 > timeout:
                p, c = pending[0]
                raise PodRunError(f"{p.name}/{c['name']} not ready after {timeout:.0f} s ({last}):\n{self.logs(p, c['name'])}")
            if pending:
                time.sleep(0.5)
        return time.monotonic() - t0

    def logs(self, pod: Pod, container: str, tail: int = 30) -> str:
        r = subprocess.run([*DOCKER, "logs", "--tail", str(tail), self.cname(pod, container)],
                           capture_output=True, text=True)
        return (r.stdout + r.stderr).strip()

    def stop_pod(self, pod: Pod) -> dict[str, tuple[int, float]]:
        """Stops a pod as the kubelet deletes one: SIGTERM to every container at once, SIGKILL after
        the pod's terminationGracePeriodSeconds. Each container's exit code and seconds to stop."""
        def stop(c: str) -> tuple[str, tuple[int, float]]:
            t = time.monotonic()
            docker("stop", "-t", str(pod.grace), self.cname(pod, c), timeout=pod.grace + 30)
            code = int(docker("inspect", "-f", "{{.State.ExitCode}}", self.cname(pod, c)))
            return c, (code, time.monotonic() - t)
        names = [c["name"] for c in pod.spec["containers"]]
        with ThreadPoolExecutor(len(names)) as ex:
            return dict(ex.map(stop, names))

    # ------------------------------------------------------------------ ingress
    def nginx_ingress_conf(self, cert: Path | None) -> str:
        servers: dict[str, list[str]] = {}
        tls_hosts: set[str] = set()
        for d in self.docs:
            if d["kind"] != "Ingress":
                continue
            ann = d["metadata"].get("annotations") or {}
            known = {"nginx.ingress.kubernetes.io/use-regex", "nginx.ingress.kubernetes.io/rewrite-target",
                     "nginx.ingress.kubernetes.io/proxy-redirect-from", "nginx.ingress.kubernetes.io/proxy-redirect-to",
                     "nginx.ingress.kubernetes.io/proxy-body-size", "nginx.ingress.kubernetes.io/proxy-read-timeout"}
            extra = {k for k in ann if k.startswith("nginx.ingress.kubernetes.io/")} - known
            if extra:
                raise PodRunError(f"Ingress {d['metadata']['name']}: annotations not modelled: {sorted(extra)}")
            for t in d["spec"].get("tls", []):
                tls_hosts.update(t.get("hosts", []))
            regex = ann.get("nginx.ingress.kubernetes.io/use-regex") == "true"
            rewrite = ann.get("nginx.ingress.kubernetes.io/rewrite-target")
            for rule in d["spec"]["rules"]:
                host = rule.get("host", "_")
                for p in rule["http"]["paths"]:
                    svc = p["backend"]["service"]
                    port = svc["port"].get("number")
                    if port is None:
                        sdoc = self.find("Service", svc["name"])
                        port = next(x["port"] for x in sdoc["spec"]["ports"] if x["name"] == svc["port"]["name"])
                    body = [f"proxy_pass http://{svc['name']}:{port};"]
                    if regex or rewrite:
                        # ingress-nginx: regex paths are case-insensitive and anchored at the start.
                        loc = f'location ~* "^{p["path"]}"'
                        if rewrite:
                            body.insert(0, f'rewrite "(?i)^{p["path"]}" {rewrite} break;')
                    elif p["pathType"] == "Exact":
                        loc = f"location = {p['path']}"
                    else:
                        loc = f"location {p['path']}"
                    if "nginx.ingress.kubernetes.io/proxy-redirect-from" in ann:
                        body.append(f"proxy_redirect {ann['nginx.ingress.kubernetes.io/proxy-redirect-from']} "
                                    f"{ann['nginx.ingress.kubernetes.io/proxy-redirect-to']};")
                    body.append(f"client_max_body_size {ann.get('nginx.ingress.kubernetes.io/proxy-body-size', '1m')};")
                    if "nginx.ingress.kubernetes.io/proxy-read-timeout" in ann:
                        body.append(f"proxy_read_timeout {ann['nginx.ingress.kubernetes.io/proxy-read-timeout']}s;")
                    servers.setdefault(host, []).append(f"        {loc} {{\n" + "".join(f"            {b}\n" for b in body)
                                                        + "        }\n")
        out = ["pid /tmp/proxy.pid;", "error_log stderr warn;", "events { worker_connections 512; }", "http {",
               "    access_log /dev/stdout;", "    client_body_temp_path /tmp/body;", "    proxy_temp_path /tmp/proxy;",
               "    fastcgi_temp_path /tmp/fastcgi;", "    uwsgi_temp_path /tmp/uwsgi;", "    scgi_temp_path /tmp/scgi;",
               "    proxy_http_version 1.1;", "    proxy_set_header Host $host;",
               "    proxy_set_header X-Forwarded-For $remote_addr;", "    proxy_set_header X-Forwarded-Proto $scheme;"]
        for host, locs in servers.items():
            if host in tls_hosts:
                if cert is None:
                    raise PodRunError(f"the Ingress wants TLS for {host}: pass a certificate")
                out += ["    server {", f"        listen 80;", f"        server_name {host};",
                        "        return 308 https://$host$request_uri;", "    }",
                        "    server {", "        listen 443 ssl;", f"        server_name {host};",
                        "        ssl_certificate /etc/loco/proxy/tls.crt;", "        ssl_certificate_key /etc/loco/proxy/tls.key;"]
            else:
                out += ["    server {", "        listen 80;", f"        server_name {host};"]
            out += locs
            out.append("    }")
        out.append("}")
        return "\n".join(out) + "\n"

    def start_ingress(self, image: str, cert: Path | None = None, key: Path | None = None) -> str:
        """Starts the ingress stand-in (nginx from `image`) on the release's network; its address."""
        d = self.work / "ingress"
        d.mkdir(parents=True, exist_ok=True)
        (d / "nginx.conf").write_text(self.nginx_ingress_conf(cert))
        if cert is not None and key is not None:
            shutil.copy(cert, d / "tls.crt")
            shutil.copy(key, d / "tls.key")
        for f in d.iterdir():
            f.chmod(0o644)
        name = f"{self.prefix}-ingress"
        docker("run", "-d", "--name", name, "--network", self.network, "--label", f"loco.podrun={self.prefix}",
               "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
               "--sysctl", "net.ipv4.ip_unprivileged_port_start=0", "-v", f"{d}:/etc/loco/proxy:ro",
               "--entrypoint", "nginx", image, "-c", "/etc/loco/proxy/nginx.conf", "-g", "daemon off;")
        self.state["containers"].append(name)
        ip = docker("inspect", "-f", f"{{{{ (index .NetworkSettings.Networks \"{self.network}\").IPAddress }}}}", name)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((ip, 443 if cert else 80), timeout=1).close()
                return ip
            except OSError:
                if time.monotonic() > deadline:
                    raise PodRunError(f"the ingress did not listen:\n{docker('logs', name, check=False)}")
                time.sleep(0.2)

    def save(self) -> None:
        (self.work / "state.json").write_text(json.dumps(self.state, indent=1))


def down(work: Path, prefix: str | None = None) -> None:
    """Removes every container and the network of a run (by its state file, or by the prefix label)."""
    names: list[str] = []
    st = work / "state.json"
    if st.exists():
        s = json.loads(st.read_text())
        prefix = prefix or s["prefix"]
        names = s["containers"]
    if prefix:
        names += docker("ps", "-aq", "-f", f"label=loco.podrun={prefix}", check=False).split()
    if names:
        subprocess.run([*DOCKER, "rm", "-f", *names], capture_output=True)
    if prefix:
        subprocess.run([*DOCKER, "network", "rm", f"{prefix}-net"], capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start every pod of a rendered release, and the ingress stand-in")
    up.add_argument("--manifest", required=True, type=Path, help="helm template's output")
    up.add_argument("--claim", action="append", default=[], help="NAME=HOSTDIR: an existing claim's contents")
    up.add_argument("--state", required=True, type=Path, help="work directory (volumes, state.json)")
    up.add_argument("--prefix", default="loco")
    up.add_argument("--ingress-image", help="run the Ingresses through nginx from this image (loco-web)")
    up.add_argument("--tls", nargs=2, type=Path, metavar=("CERT", "KEY"))
    up.add_argument("--timeout", type=float, default=600)
    dn = sub.add_parser("down", help="remove a run's containers and network")
    dn.add_argument("--state", required=True, type=Path)
    a = ap.parse_args()
    if a.cmd == "down":
        down(a.state)
        return 0
    claims = {}
    for c in a.claim:
        name, _, path = c.partition("=")
        if not path or not Path(path).is_dir():
            ap.error(f"--claim {c}: want NAME=HOSTDIR with an existing directory")
        claims[name] = Path(path).resolve()
    docs = list(yaml.safe_load_all(a.manifest.read_text()))
    cl = Cluster(docs, a.prefix, a.state.resolve(), claims)
    cl.setup()
    try:
        cl.start()
        cl.save()
        took = cl.wait_ready(a.timeout)
        if a.ingress_image:
            ip = cl.start_ingress(a.ingress_image, *(a.tls or (None, None)))
            print(f"ingress at {ip}")
        cl.save()
        print(f"{len(cl.pods)} pods ready in {took:.1f} s")
    except BaseException:
        cl.save()
        raise
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PodRunError as e:
        sys.exit(f"podrun.py: {e}")
