"""make loadtest: Locust, headless, for a fixed time against a URL; reports; thresholds.

    .venv/bin/python -m loadtest.locust.run --host http://127.0.0.1:8080 --duration 60s \\
        [--users 16] [--spawn-rate 4] [--max-error-rate 0.01] [--max-p95-ms 20000] \\
        [--max-ttft-p95-ms MS] [--out loadtest/runs/locust] [--ready-path /readyz] \\
        [any option of loadtest/locust/locustfile.py or of Locust, e.g. --repeat-share 0.5]

It waits until ``GET {host}{ready-path}`` answers 200, runs ``loadtest/locust/locustfile.py``
with Locust in its own process, and writes into ``--out``:

* ``locust_stats.csv``, ``locust_stats_history.csv``, ``locust_failures.csv``,
  ``locust_exceptions.csv``: Locust's CSV reports;
* ``report.html``: Locust's HTML report, with its charts;
* ``summary.json``: the locustfile's summary (HTTP aggregate without the custom TTFT
  and ITL entries, per-entry figures, failures, the ``X-Cache`` tally) plus the
  thresholds checked here, the verdict and the machine. ``loadtest/report/build.py`` reads it.

Thresholds, on the HTTP requests only (the TTFT/ITL entries are not requests): the
failure ratio, and the 95th percentile of response time (a streamed request is timed
to its last byte); optionally the 95th percentile of TTFT. No request made at all
is a failure too.

Exit status: 0 every threshold met; 1 a threshold missed; 2 Locust failed or wrote no
summary; 3 the host never became ready. The API key is read by the locustfile from
``LOADTEST_API_KEY``, never from the command line.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO_ROOT / "loadtest" / "locust" / "locustfile.py"
# Runs write to an ignored folder, so running the load test leaves the tree clean; the
# committed report (loadtest/results/locust/) is refreshed on purpose: make loadtest-publish.
DEFAULT_OUT = REPO_ROOT / "loadtest" / "runs" / "locust"
CSV_PREFIX = "locust"
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")


def parse_duration(text: str) -> int:
    """Locust's run-time syntax ("90", "60s", "2m", "1h30m") in seconds."""
    match = _DURATION.match(text.strip())
    if not text.strip() or not match or not any(match.groups()):
        raise ValueError(f"not a duration: {text!r} (e.g. 60s, 2m, 1h30m)")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError("the duration must be positive")
    return total


@dataclass(frozen=True)
class Thresholds:
    max_error_rate: float = 0.01
    max_p95_ms: float = 20_000.0
    max_ttft_p95_ms: float | None = None


@dataclass(frozen=True)
class Check:
    name: str
    limit: str
    measured: str
    met: bool


def check_thresholds(summary: dict[str, Any], thresholds: Thresholds) -> list[Check]:
    """The thresholds against a locustfile summary (its ``http`` and ``ttft`` aggregates)."""
    http = summary.get("http") or {}
    requests = int(http.get("requests") or 0)
    failures = int(http.get("failures") or 0)
    checks = [Check("HTTP requests made", "> 0", str(requests), requests > 0)]
    ratio = failures / requests if requests else 1.0
    checks.append(
        Check(
            "HTTP error rate",
            f"<= {thresholds.max_error_rate:.2%}",
            f"{ratio:.2%} ({failures}/{requests})",
            requests > 0 and ratio <= thresholds.max_error_rate,
        )
    )
    p95 = http.get("p95_ms")
    checks.append(
        Check(
            "HTTP p95 response time",
            f"<= {thresholds.max_p95_ms:.0f} ms",
            "none" if p95 is None else f"{float(p95):.0f} ms",
            p95 is not None and float(p95) <= thresholds.max_p95_ms,
        )
    )
    if thresholds.max_ttft_p95_ms is not None:
        ttft = (summary.get("ttft") or {}).get("p95_ms")
        checks.append(
            Check(
                "streamed TTFT p95",
                f"<= {thresholds.max_ttft_p95_ms:.0f} ms",
                "none" if ttft is None else f"{float(ttft):.0f} ms",
                ttft is not None and float(ttft) <= thresholds.max_ttft_p95_ms,
            )
        )
    return checks


def wait_ready(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(1.0)


def locust_command(args: argparse.Namespace, extra: list[str]) -> list[str]:
    out: Path = args.out
    command = [
        sys.executable, "-m", "locust",
        "-f", str(LOCUSTFILE),
        "--headless",
        "--host", args.host,
        "--users", str(args.users),
        "--spawn-rate", str(args.spawn_rate),
        "--run-time", f"{parse_duration(args.duration)}s",
        # Let in-flight requests finish when the time is up, so they count.
        "--stop-timeout", str(args.stop_timeout),
        "--csv", str(out / CSV_PREFIX),
        "--html", str(out / "report.html"),
        "--summary-json", str(out / "summary.json"),
        # Failures are judged here, against the thresholds, not by Locust's own rule.
        "--exit-code-on-error", "0",
    ]  # fmt: skip
    if not args.progress:
        command.append("--only-summary")
    return command + extra


def _machine() -> str:
    from loadtest.bench.worker import machine_description

    return machine_description()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the Locust load test headless and check its thresholds.",
        epilog="Unknown options are passed to Locust (and to loadtest/locust/locustfile.py).",
        allow_abbrev=False,  # an abbreviation of a Locust option must reach Locust
    )
    parser.add_argument("--host", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--duration", default="60s", help="run time: 60s, 2m, 1h30m")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--spawn-rate", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--max-error-rate", type=float, default=Thresholds.max_error_rate)
    parser.add_argument("--max-p95-ms", type=float, default=Thresholds.max_p95_ms)
    parser.add_argument("--max-ttft-p95-ms", type=float, default=None)
    parser.add_argument("--ready-path", default="/readyz", help="'' skips the readiness wait")
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    parser.add_argument("--stop-timeout", type=int, default=60)
    parser.add_argument("--progress", action="store_true", help="print Locust's stats as it runs")
    args, extra = parser.parse_known_args(argv)
    try:
        duration_s = parse_duration(args.duration)
    except ValueError as exc:
        parser.error(str(exc))
    thresholds = Thresholds(args.max_error_rate, args.max_p95_ms, args.max_ttft_p95_ms)
    host = args.host.rstrip("/")
    args.host = host

    if args.ready_path:
        ready_url = host + args.ready_path
        print(f"waiting for {ready_url} ...", flush=True)
        if not wait_ready(ready_url, args.ready_timeout):
            print(f"{ready_url} did not answer 200 within {args.ready_timeout:.0f}s")
            return 3

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "summary.json"
    summary_path.unlink(missing_ok=True)
    command = locust_command(args, extra)
    print(f"locust: {args.users} users for {duration_s}s against {host}", flush=True)
    try:
        completed = subprocess.run(
            command, cwd=REPO_ROOT, timeout=duration_s + args.stop_timeout + 180, check=False
        )
    except subprocess.TimeoutExpired:
        print("locust did not finish in time")
        return 2
    if completed.returncode != 0 or not summary_path.exists():
        print(f"locust failed (exit status {completed.returncode}); no verdict")
        return 2

    summary: dict[str, Any] = json.loads(summary_path.read_text())
    checks = check_thresholds(summary, thresholds)
    passed = all(c.met for c in checks)
    summary.update(
        machine=_machine(),
        duration_s=duration_s,
        thresholds=[asdict(c) for c in checks],
        passed=passed,
    )
    summary_path.write_text(json.dumps(summary, indent=2))
    print(render_verdict(summary, checks, out))
    return 0 if passed else 1


def render_verdict(summary: dict[str, Any], checks: list[Check], out: Path) -> str:
    lines = ["", f"{'type':<6}{'name':<34}{'reqs':>7}{'fail':>6}{'p50 ms':>9}{'p95 ms':>9}"]
    for entry in summary.get("entries", []):
        p50, p95 = entry.get("p50_ms"), entry.get("p95_ms")
        lines.append(
            f"{entry['type']:<6}{entry['name']:<34}{entry['requests']:>7}{entry['failures']:>6}"
            f"{p50 if p50 is not None else '-':>9}{p95 if p95 is not None else '-':>9}"
        )
    tally: dict[str, int] = {}
    for row in summary.get("x_cache", []):
        key = f"{row['origin']}:{row['x_cache']}"
        tally[key] = tally.get(key, 0) + int(row["count"])
    if tally:
        lines.append("X-Cache: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())))
    lines.append("")
    for check in checks:
        verdict = "met" if check.met else "MISSED"
        lines.append(f"{check.name:<26} {check.limit:<14} measured {check.measured:<22} {verdict}")
    lines.append(f"reports: {out}/report.html, {out}/{CSV_PREFIX}_stats.csv, {out}/summary.json")
    lines.append("PASSED" if all(c.met for c in checks) else "FAILED")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
