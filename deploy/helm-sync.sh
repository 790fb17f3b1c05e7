#!/usr/bin/env bash
# Copy what the chart must carry inside itself (Helm reads files only from the chart's own
# folder) from where the project keeps it: the alert rules and the Nginx template.
# tests/test_helm_sync.py fails when a copy is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
chart=helm/vlm-serve/files
cp nginx/nginx.conf.template "$chart/nginx.conf.template"
if compgen -G "deploy/prometheus/rules/*.yml" >/dev/null; then
  rm -f "$chart"/alerts/*.yml
  cp deploy/prometheus/rules/*.yml "$chart/alerts/"
  echo "helm-sync: $(ls deploy/prometheus/rules/*.yml | wc -l) rule file(s) copied"
else
  echo "helm-sync: no deploy/prometheus/rules/*.yml yet; the chart keeps its placeholder"
fi
