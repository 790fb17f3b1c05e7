#!/usr/bin/env bash
# Refresh the copies this project keeps of its own sources: the chart carries the alert
# rules, the Nginx template and the tiny model's chat template in files/ (Helm reads files
# only from inside the chart), and compose's Prometheus config is the generator's output. tests/test_helm_sync.py and
# tests/test_deploy_compose.py fail when a copy is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
chart=helm/vlm-serve/files
cp nginx/nginx.conf.template "$chart/nginx.conf.template"
# The tiny model's chat template: gateways in front of triton-cpu-tiny workers render with it.
.venv/bin/python -c 'import sys; from worker.tiny_model import CHAT_TEMPLATE; sys.stdout.write(CHAT_TEMPLATE)' \
  > "$chart/chat-templates/tiny-qwen3-vl.jinja"
if compgen -G "deploy/prometheus/rules/*.yml" >/dev/null; then
  rm -f "$chart"/alerts/*.yml
  cp deploy/prometheus/rules/*.yml "$chart/alerts/"
  echo "helm-sync: $(ls deploy/prometheus/rules/*.yml | wc -l) rule file(s) copied"
else
  echo "helm-sync: no deploy/prometheus/rules/*.yml yet; the chart keeps its placeholder"
fi

# Prometheus for deploy/compose.yaml: the project's generator, with the rules where compose
# mounts them.
.venv/bin/python - <<'PY'
import json, subprocess, sys, tempfile
import yaml
with tempfile.NamedTemporaryFile(suffix=".json") as out:
    subprocess.run([sys.executable, "-m", "deploy.prometheus.config", out.name,
                    "--gateway", "gateway-1:8000", "--gateway", "gateway-2:8000",
                    "--worker", "worker-0:8000", "--worker", "worker-1:8000"], check=True)
    config = json.load(open(out.name))
config["rule_files"] = ["/etc/prometheus/rules/*.yml"]
header = open("deploy/compose/prometheus.yml").read().split("global:", 1)[0]
open("deploy/compose/prometheus.yml", "w").write(header + yaml.safe_dump(config, sort_keys=False))
PY
echo "helm-sync: deploy/compose/prometheus.yml regenerated"
