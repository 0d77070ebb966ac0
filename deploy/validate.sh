#!/usr/bin/env bash
# Lints deploy/ (CI runs this):
#   - the Kubernetes example with kubernetes-validate (pinned, from PyPI, in a venv under target/) in strict mode
#     (unknown fields are errors), against its default Kubernetes version;
#   - the ServiceMonitor, a Prometheus Operator CRD kubernetes-validate has no schema for, by a consistency check
#     instead: its kind and apiVersion, and that it selects the Service by its labels and scrapes /metrics on a port
#     the Service names;
#   - the alert rules with `promtool check rules` and their tests with `promtool test rules` (hand-written series, and
#     series recorded from soak runs by deploy/prometheus/record-series.sh); promtool is taken from
#     Debian's prometheus package, extracted under target/ (not installed: no service is set up).
set -euo pipefail
cd "$(dirname "$0")/.."

validate_version=1.37.0
venv=target/kubernetes-validate-venv
if [ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" != "$validate_version" ]; then
  echo "== installing kubernetes-validate $validate_version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "kubernetes-validate==$validate_version"
fi

echo "== kubernetes-validate --strict deploy/kubernetes/*.yaml"
"$venv/bin/kubernetes-validate" --strict --quiet deploy/kubernetes/*.yaml
echo "passed: $(ls deploy/kubernetes/*.yaml | xargs -n1 basename | tr '\n' ' ')"

echo "== ServiceMonitor (a CRD: checked against the Service instead of a schema)"
"$venv/bin/python" - deploy/kubernetes/service.yaml deploy/kubernetes/prometheus-operator/servicemonitor.yaml <<'PY'
import sys
import yaml

service = yaml.safe_load(open(sys.argv[1]))
monitor = yaml.safe_load(open(sys.argv[2]))
problems = []
if (monitor.get("apiVersion"), monitor.get("kind")) != ("monitoring.coreos.com/v1", "ServiceMonitor"):
    problems.append("not a monitoring.coreos.com/v1 ServiceMonitor")
wanted = monitor.get("spec", {}).get("selector", {}).get("matchLabels", {})
labels = service.get("metadata", {}).get("labels", {})
if not wanted or any(labels.get(k) != v for k, v in wanted.items()):
    problems.append(f"selector {wanted} does not match the Service's labels {labels}")
ports = {p.get("name") for p in service.get("spec", {}).get("ports", [])}
endpoints = monitor.get("spec", {}).get("endpoints", [])
if not endpoints:
    problems.append("no endpoints")
for e in endpoints:
    if e.get("port") not in ports:
        problems.append(f"endpoint port {e.get('port')!r} is not one of the Service's ports {sorted(ports)}")
    if e.get("path") != "/metrics":
        problems.append(f"endpoint path {e.get('path')!r} is not /metrics")
for p in problems:
    print("FAIL: servicemonitor.yaml:", p)
sys.exit(1 if problems else 0)
PY
echo "passed"

echo "== promtool check rules / test rules deploy/prometheus/"
promtool=target/promtool/usr/bin/promtool
if [ ! -x "$promtool" ]; then
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  (cd "$scratch" && apt-get download prometheus >/dev/null 2>&1) || {
    apt-get update -q >/dev/null
    (cd "$scratch" && apt-get download prometheus >/dev/null 2>&1)
  }
  dpkg-deb -x "$scratch"/prometheus_*.deb "$scratch/x"
  install -D -m 0755 "$scratch/x/usr/bin/promtool" "$promtool"
fi
"$promtool" check rules deploy/prometheus/avemint-alerts.yaml
"$promtool" test rules deploy/prometheus/avemint-alerts.test.yaml
# Series recorded from real soak runs (deploy/prometheus/record-series.sh regenerates them).
"$promtool" test rules deploy/prometheus/avemint-alerts.soak.test.yaml
