"""Measuring the stack, in three jobs:

locust/   the load test users run (`make loadtest`): shoppers' photos, questions, traffic
bench/    the benchmarks of `make bench`, each beside its anchors in the same run
report/   REPORT.md and its plots, rendered from the benchmarks' JSON in results/
"""
