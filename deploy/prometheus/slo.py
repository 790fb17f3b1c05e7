"""The SLOs as data, and the rules they become: rules/vlm-slo.yml is this module's output.

python -m deploy.prometheus.slo           # rewrite rules/vlm-slo.yml, vlm-slo-budget.yml
python -m deploy.prometheus.slo --check   # exit 1 when a committed file differs

Each SLO is a list of sources, each a (bad, total) pair of per-second rates; the error
ratio is their summed bad over their summed total, per namespace and release (and per
route where the objective is per path). Written as bad/total, not 1 - good/total, so the
ratio reads 1 when nothing succeeds (there is no good series to divide then), and a
source that has no series yet (Nginx has answered no 5xx) adds nothing instead of
emptying the sum. Burn-rate alerts follow the Google SRE workbook (ch. 5): 14.4x over
1 h and 5 m pages, 6x over 6 h and 30 m opens a ticket.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

RULES_DIR = Path(__file__).resolve().parent / "rules"
RUNBOOKS = "https://github.com/vlm-serve/vlm-serve/blob/main/docs/runbooks.md"
BY = "namespace, release"
INFERENCE = 'route=~"/v1/chat/completions|/v1/vqa"'
WINDOWS = ("5m", "30m", "1h", "6h")
BUDGET_WINDOW = "30d"
# The dashboard link opens on the alert's own namespace and release.
LINK_SCOPE = "&var-namespace={{ $labels.namespace }}&var-release={{ $labels.release }}"
# (severity, factor, long window, short window, for)
BURNS = (
    ("critical", 14.4, "1h", "5m", "2m", "Fast"),
    ("warning", 6.0, "6h", "30m", "15m", "Slow"),
)


@dataclass(frozen=True)
class Source:
    """One input of an SLI: bad and total per second, as PromQL templates with {w} for the
    window and {by} for the SLO's labels."""

    name: str
    bad: str
    total: str


@dataclass(frozen=True)
class Slo:
    name: str
    alert: str  # burn alerts: <alert>Fast, <alert>Slow
    objective: float
    what: str  # for the summaries: "<what> burn the budget ..."
    sources: tuple[Source, ...]
    by: str = BY
    panel: int = 5  # the overview panel that shows it ("SLIs (5 m)")

    @property
    def budget(self) -> float:
        return round(1 - self.objective, 6)


def _rate(selector: str) -> str:
    return f"sum by ({{by}}) (rate({selector}[{{w}}]))"


def _slow(histogram: str, selector: str, le: str) -> Source:
    """A latency source: answers slower than ``le`` seconds out of all answers."""
    count = _rate(f"{histogram}_count{{{selector}}}")
    fast = _rate(f'{histogram}_bucket{{{selector},le="{le}"}}')
    return Source(histogram, bad=f"{count} - {fast}", total=count)


AVAILABILITY = Slo(
    name="availability",
    alert="VlmAvailabilityBudgetBurn",
    objective=0.995,
    what="Failed, abandoned or Nginx-answered 5xx requests",
    sources=(
        # How each request ended at the gateway: a stream that ends in an error event is
        # failed, a client that gave up (499) abandoned; 4xx are the client's.
        Source(
            "gateway",
            bad=_rate(
                f'gateway_inference_outcomes_total{{{INFERENCE},outcome=~"failed|abandoned"}}'
            ),
            total=_rate(f"gateway_inference_outcomes_total{{{INFERENCE}}}"),
        ),
        # Answers Nginx gave itself (no gateway answered): invisible to the gateways.
        Source(
            "front_door",
            bad=_rate(
                f'vlm_frontdoor_requests_total{{{INFERENCE},answered_by="nginx",status=~"5.."}}'
            ),
            total=_rate(
                f'vlm_frontdoor_requests_total{{{INFERENCE},answered_by="nginx",status!="499"}}'
            ),
        ),
    ),
)
# Cache hits replay in milliseconds: measured apart, so a worker regression shows at full
# strength whatever the hit ratio.
WORKER_PATH = 'cache=~"miss|coalesced|bypass"'
TTFT = Slo(
    name="ttft",
    alert="VlmTtftBudgetBurn",
    objective=0.99,
    what="Streamed answers from a worker slower than 2 s to the first token",
    sources=(_slow("gateway_time_to_first_token_seconds", WORKER_PATH, "2.0"),),
    by=f"{BY}, route",
)
ANSWER_LATENCY = Slo(
    name="answer_latency",
    alert="VlmAnswerLatencyBudgetBurn",
    objective=0.99,
    what="Non-streamed answers from a worker slower than 10 s",
    sources=(_slow("gateway_answer_seconds", WORKER_PATH, "10.0"),),
    by=f"{BY}, route",
)
HIT_LATENCY = Slo(
    name="hit_latency",
    alert="VlmCacheHitLatencyBudgetBurn",
    objective=0.99,
    what="Cache hits slower than 250 ms (to the first token, or whole)",
    sources=(
        _slow("gateway_time_to_first_token_seconds", 'cache="hit"', "0.25"),
        _slow("gateway_answer_seconds", 'cache="hit"', "0.25"),
    ),
)
SLOS = (AVAILABILITY, TTFT, ANSWER_LATENCY, HIT_LATENCY)


def _sum(slo: Slo, part: str, window: str) -> str:
    """One part (bad or total) summed over the sources. Each source is labelled first, so
    `or` keeps both sides instead of dropping the second as a duplicate."""
    exprs = [
        str(getattr(s, part)).replace("{w}", window).replace("{by}", slo.by) for s in slo.sources
    ]
    if len(exprs) == 1:
        return exprs[0]
    terms = [
        f'label_replace({expr}, "source", "{s.name}", "", "")'
        for s, expr in zip(slo.sources, exprs, strict=True)
    ]
    return f"sum by ({slo.by}) (\n  " + "\n  or ".join(terms) + "\n)"


def _record(slo: Slo, kind: str, window: str) -> str:
    return f"vlm:slo_{slo.name}:{kind}_rate{window}"


def recording_rules(slo: Slo, windows: tuple[str, ...]) -> list[dict[str, str]]:
    rules = []
    for w in windows:
        bad, total = _record(slo, "bad", w), _record(slo, "total", w)
        rules += [
            {"record": bad, "expr": _sum(slo, "bad", w)},
            {"record": total, "expr": _sum(slo, "total", w)},
            # `or 0 * total`: no bad series at all is a ratio of 0, not an empty one.
            {
                "record": _record(slo, "error_ratio", w),
                "expr": f"(clamp_min({bad}, 0) or 0 * {total}) / {total}",
            },
        ]
    return rules


def budget_rules(slo: Slo) -> list[dict[str, str]]:
    ratio = _record(slo, "error_ratio", BUDGET_WINDOW)
    return [
        *recording_rules(slo, (BUDGET_WINDOW,)),
        {
            "record": f"vlm:slo_{slo.name}:budget_left{BUDGET_WINDOW}",
            "expr": f"1 - {ratio} / {slo.budget}",
        },
    ]


def burn_alerts(slo: Slo) -> list[dict[str, Any]]:
    alerts = []
    for severity, factor, long, short, hold, speed in BURNS:
        name = f"{slo.alert}{speed}"
        threshold = f"({factor} * {slo.budget})"
        per = ", per route" if "route" in slo.by else ""
        alerts.append(
            {
                "alert": name,
                "expr": (
                    f"{_record(slo, 'error_ratio', long)} > {threshold}\n"
                    f"and {_record(slo, 'error_ratio', short)} > {threshold}"
                ),
                "for": hold,
                "labels": {"severity": severity, "slo": slo.name},
                "annotations": {
                    "summary": (
                        f"{slo.what}: {{{{ $value | humanizePercentage }}}} over {long}{per}, "
                        f"burning the 30-day budget ({slo.budget:.1%}) {factor:g}x too fast."
                    ),
                    "runbook_url": f"{RUNBOOKS}#{name.lower()}",
                    "dashboard": f"d/vlm-overview?viewPanel={slo.panel}{LINK_SCOPE}",
                },
            }
        )
    return alerts


def documents() -> dict[str, dict[str, Any]]:
    """File name -> rule file. The budget has a file of its own: burn-alert tests need
    none of its 30-day rules (each costs promtool time at every step)."""
    groups: list[dict[str, Any]] = []
    for slo in SLOS:
        groups.append({"name": f"vlm-slo-{slo.name}", "rules": recording_rules(slo, WINDOWS)})
    groups.append({"name": "vlm-slo-burn", "rules": [a for slo in SLOS for a in burn_alerts(slo)]})
    # 30 days of samples are heavy to read: every 5 minutes is often enough for a budget.
    budget = {
        "name": "vlm-slo-budget",
        "interval": "5m",
        "rules": [rule for slo in SLOS for rule in budget_rules(slo)],
    }
    return {"vlm-slo.yml": {"groups": groups}, "vlm-slo-budget.yml": {"groups": [budget]}}


HEADER = """\
# GENERATED by `python -m deploy.prometheus.slo` from deploy/prometheus/slo.py: edit that
# file, not this one (tests/test_alerts_slo.py fails when they differ).
#
# SLOs, per namespace and release (latency ones per route too):
#   availability    99.5%: inference requests that end well for the client (a stream that
#                   ends in an error event, a client that gave up, and a 5xx Nginx gave
#                   itself count as bad; 4xx are the client's)
#   ttft            99%: streamed answers from a worker (cache misses) whose first token
#                   comes within 2 s
#   answer_latency  99%: non-streamed answers from a worker within 10 s
#   hit_latency     99%: cache hits within 250 ms
"""


def render() -> dict[Path, str]:
    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return {
        RULES_DIR / name: HEADER + yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=100)
        for name, doc in documents().items()
    }


def stale() -> list[Path]:
    return [
        path for path, text in render().items() if not path.exists() or path.read_text() != text
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if args.check:
        for path in stale():
            print(f"{path} differs from the generator: run python -m deploy.prometheus.slo")
        return 1 if stale() else 0
    for path, text in render().items():
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
