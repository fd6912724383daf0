"""monitoring/ consistency: the PrometheusRule's groups equal the plain rules file, the
kustomize output carries the dashboard JSON verbatim, every dashboard/rule metric exists in
docs/protocol.md, and the PodMonitor selects the chart's agent pods on their `http` port.
Usage: check_monitoring.py MONITORING_DIR KUSTOMIZE_OUTPUT RENDERED_CHART"""
import json
import re
import sys
from pathlib import Path

import yaml

M, K, CHART = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
plain = yaml.safe_load((M / "rules/loco.rules.yaml").read_text())
docs = [d for d in yaml.safe_load_all(K.read_text()) if d]
by_kind = {d["kind"]: d for d in docs}
assert set(by_kind) == {"ConfigMap", "PodMonitor", "PrometheusRule"}, set(by_kind)
assert by_kind["PrometheusRule"]["spec"]["groups"] == plain["groups"], "prometheusrule.yaml and rules/loco.rules.yaml differ"
cm = by_kind["ConfigMap"]
assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
dash_text = (M / "dashboards/loco-agents.json").read_text()
assert cm["data"]["loco-agents.json"] == dash_text
dash = json.loads(dash_text)
exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
exprs += [r["expr"] for g in plain["groups"] for r in g["rules"]]
documented = set(re.findall(r"`(loco_[a-z_]+)(?:\{[a-z,]*\})?`", (M.parent / "docs/protocol.md").read_text()))
used = set(re.findall(r"\b(loco_[a-z_]+?)(?:_bucket|_sum|_count)?\b", " ".join(exprs)))
unknown = {u for u in used if u not in documented}
assert not unknown, f"metrics not in docs/protocol.md: {unknown}"
pm = by_kind["PodMonitor"]
sts = next(d for d in yaml.safe_load_all(CHART.read_text()) if d and d["kind"] == "StatefulSet")
labels = sts["spec"]["template"]["metadata"]["labels"]
assert all(labels.get(k) == v for k, v in pm["spec"]["selector"]["matchLabels"].items()), "PodMonitor does not select the VM pods"
ports = [p["name"] for c in sts["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])]
assert pm["spec"]["podMetricsEndpoints"][0]["port"] in ports
print(f"{len(exprs)} expressions use documented metrics: {sorted(used)}")
