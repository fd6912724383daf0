"""Validate rendered manifests offline against Kubernetes' own schemas (kubernetes-validate,
strict: unknown fields fail). Usage: validate.py K8S_VERSION FILE...

Custom resources cannot be validated this way (kubernetes-validate holds only built-in kinds'
schemas; their CRDs come with STUNner, the Gateway API and the Prometheus Operator): they are
skipped explicitly, by kind, and listed. Any other kind without a schema is a failure.
"""
import sys

import kubernetes_validate
import yaml

CRD_KINDS = {
    ("gateway.networking.k8s.io/v1", "GatewayClass"),
    ("gateway.networking.k8s.io/v1", "Gateway"),
    ("stunner.l7mp.io/v1", "GatewayConfig"),
    ("stunner.l7mp.io/v1", "UDPRoute"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

version, files = sys.argv[1], sys.argv[2:]
errors, checked, skipped = [], 0, {}
for f in files:
    for doc in yaml.safe_load_all(open(f)):
        if not doc:
            continue
        key = (doc.get("apiVersion"), doc.get("kind"))
        where = f"{f.rsplit('/', 1)[-1]}: {key[1]}/{doc.get('metadata', {}).get('name')}"
        if key in CRD_KINDS:
            skipped[key[1]] = skipped.get(key[1], 0) + 1
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            checked += 1
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{where}: {'.'.join(str(p) for p in e.path)}: {e.message}")
        except Exception as e:  # SchemaNotFoundError and friends
            errors.append(f"{where}: {type(e).__name__}: {e}")
print(f"{checked} objects valid for Kubernetes {version}; skipped (CRDs): {skipped}")
for e in errors:
    print(e)
sys.exit(1 if errors or not checked else 0)
