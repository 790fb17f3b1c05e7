"""Prometheus for vlm-serve: scrape configuration (config.py), rules (rules/), their tests."""
