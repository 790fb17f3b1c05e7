"""Deployment artefacts: Prometheus and Alertmanager configuration, alert rules, dashboards."""
