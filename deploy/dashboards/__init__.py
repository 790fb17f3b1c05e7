"""Grafana dashboards as code: spec.py (panel data), panels.py (the five dashboards),
build.py (grafana-foundation-sdk), generate.py (writes and checks json/)."""
