"""`python -m loadtest.report`: REPORT.md from the benchmarks' JSON (loadtest/report/build.py)."""

from loadtest.report.build import main

main()
