"""Moderation benchmark: the policy's figures on the labelled corpus, and its cost.

Figures (tests/moderation_corpus/, described in its README), for the shipped policy and
for the one it replaced (the anchor, kept in the corpus folder):

* false positives on benign shopper questions (goal 0) and recall on harmful requests
  (goal >= 0.9), per language, on the corpus's tuning part, its held-out part (by hash),
  round 2 (written after the first tuning, tuned on since) and round 3 (written after the
  policy was frozen, never tuned on: the figure for wording the policy has not seen);
* the alternative the policy was chosen against: a naive Bayes classifier over character
  n-grams, trained on what came before each test set, and its false positives on an
  independent benign set (the load test's questions and system prompt).

Cost: microseconds of CPU per check for the shipped policy and the anchor, in
alternating rounds (the machine is shared: CPU time, and the ratio of the two, are what
to compare), on a shopper's question, the same behind the system prompt, a 1,000- and an
8,000-character text, and a streamed answer through the AnswerGuard (per 4-character
chunk) at the default window overlap and at twice it.

Run: ``python -m loadtest.bench.moderation``. Nothing is asserted (the thresholds are in
tests/test_moderation_corpus.py). Environment: BENCH_MODERATION_ROUNDS (default 5).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable
from functools import partial
from itertools import pairwise
from pathlib import Path

from prometheus_client import CollectorRegistry

from gateway.interactions.draft import InteractionDraft
from gateway.metrics import Metrics
from gateway.moderation import Moderator, Policy, load_policy
from gateway.moderation.corpus import Example, Figures, load_corpus, score
from gateway.moderation.normalize import normalize
from gateway.moderation.settings import ModerationSettings
from gateway.streams import AnswerRecorder
from loadtest.locust.questions import SYSTEM_PROMPT, all_questions

ROUNDS = int(os.environ.get("BENCH_MODERATION_ROUNDS", "5"))
CORPUS = Path(__file__).resolve().parents[2] / "tests" / "moderation_corpus"
ANCHOR = CORPUS / "policy-builtin-2026-11-24.json"
Refuses = Callable[[str], bool]


def _refuses(policy: Policy) -> Refuses:
    return lambda text: policy.check(text) is not None


def _rows(name: str, figures: dict[str, Figures], keys: Iterable[str]) -> None:
    for key in keys:
        row = figures[key]
        recall = f"{row.recall:.3f}" if row.harmful else "-"
        print(f"{name:<34}{key:<14}{row.benign:>7}{len(row.false_positives):>10}"
              f"{row.harmful:>9}{recall:>8}")  # fmt: skip


# --- the classifier the policy was measured against ---------------------------------------


def _features(text: str) -> set[str]:
    """Character 2- to 4-grams (CJK has no spaces) plus words and word pairs."""
    padded = f" {normalize(text)} "
    grams = {padded[i : i + n] for n in (2, 3, 4) for i in range(len(padded) - n + 1)}
    words = "".join(c if c.isalnum() else " " for c in padded).split()
    return grams | {f"w:{w}" for w in words} | {f"b:{a} {b}" for a, b in pairwise(words)}


class NaiveBayes:
    """Bernoulli-style counts with add-one smoothing; ``threshold`` is set to the highest
    score of a benign training text, so it refuses none of them."""

    def __init__(self, examples: list[Example]) -> None:
        self._counts = {True: Counter[str](), False: Counter[str]()}
        labels = Counter(example.harmful for example in examples)
        for example in examples:
            self._counts[example.harmful].update(_features(example.text))
        self._totals = {label: sum(c.values()) for label, c in self._counts.items()}
        self._vocabulary = set(self._counts[True]) | set(self._counts[False])
        self._prior = math.log(labels[True] / labels[False])
        self.threshold = max(self.score(e.text) for e in examples if not e.harmful)

    def score(self, text: str) -> float:
        size = len(self._vocabulary)
        total = self._prior
        for feature in _features(text) & self._vocabulary:
            harmful = (self._counts[True][feature] + 1) / (self._totals[True] + size)
            benign = (self._counts[False][feature] + 1) / (self._totals[False] + size)
            total += math.log(harmful / benign)
        return total

    def refuses(self, text: str) -> bool:
        return self.score(text) > self.threshold


def corpus_figures() -> None:
    corpus = load_corpus(CORPUS)
    round2 = load_corpus(CORPUS / "round2")
    round3 = load_corpus(CORPUS / "round3")
    shipped, anchor = load_policy(), load_policy(ANCHOR)
    print(f"{'policy / classifier':<34}{'texts':<14}{'benign':>7}{'false pos':>10}"
          f"{'harmful':>9}{'recall':>8}")  # fmt: skip
    parts = ("en tuning", "en held-out", "zh tuning", "zh held-out")
    totals = ("en all", "zh all")
    for policy in (anchor, shipped):
        _rows(f"{policy.version}: corpus", score(_refuses(policy), corpus), parts)
        _rows(f"{policy.version}: round 2", score(_refuses(policy), round2), totals)
        _rows(f"{policy.version}: round 3", score(_refuses(policy), round3), totals)
    tuning = [e for e in corpus if e.part == "tuning"]
    held_out = [e for e in corpus if e.part != "tuning"]
    independent = [Example(q.text, q.lang, False, "load test") for q in all_questions()]
    independent.append(Example(SYSTEM_PROMPT, "en", False, "system prompt"))
    for trained, tested, name in (
        (tuning, held_out, "bayes(tuning): held-out"),
        (corpus + round2, round3, "bayes(corpus+round 2): round 3"),
    ):
        bayes = NaiveBayes(trained)
        _rows(name, score(bayes.refuses, tested), totals)
        _rows(f"{name[: name.index(')') + 1]}: load test", score(bayes.refuses, independent),
              totals)  # fmt: skip
    print("round 3 was written after the policy was frozen and never tuned on; the "
          "held-out part was written by the same hand as the tuning part")  # fmt: skip


# --- cost ---------------------------------------------------------------------------------


def _cpu_us(check: Callable[[str], object], texts: list[str], repeat: int) -> float:
    started = time.process_time()
    for _ in range(repeat):
        for text in texts:
            check(text)
    return (time.process_time() - started) / (repeat * len(texts)) * 1e6


def _policy_cpu_us(policy: Policy, texts: list[str], repeat: int) -> float:
    return _cpu_us(policy.check, texts, repeat)


def _stream_cpu_us(
    policy: Policy, settings: ModerationSettings, metrics: Metrics, pieces: list[str]
) -> float:
    """CPU per chunk of checking a streamed answer as it arrives, end check included."""
    guard = Moderator(settings, policy, metrics).stream_guard(InteractionDraft())
    recorder = AnswerRecorder()
    parts = recorder.texts.setdefault(0, [])
    started = time.process_time()
    for piece in pieces:
        parts.append(piece)
        guard(recorder)
    recorder.done = True
    guard(recorder)
    return (time.process_time() - started) / len(pieces) * 1e6


def _alternating(
    measure: Callable[[Policy], float], shipped: Policy, anchor: Policy
) -> tuple[float, float, float]:
    ours, theirs = [], []
    for _ in range(ROUNDS):
        theirs.append(measure(anchor))
        ours.append(measure(shipped))
    ratio = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
    return statistics.median(ours), statistics.median(theirs), ratio


def cost() -> None:
    shipped, anchor = load_policy(), load_policy(ANCHOR)
    questions = [q.text for q in all_questions()]
    filler = "这个包是真皮的吗？Is this bag real leather, and what brand is it? "
    answer = "It is a brown leather handbag with brass buckles, a good gift. " * 200
    rows = [
        ("shopper question (en+zh)", questions, 40),
        ("system prompt + question", [f"{SYSTEM_PROMPT}\n{q}" for q in questions], 10),
        ("1,000-character answer", [answer[:1000]], 100),
        ("8,000-character prompt", [(filler * 200)[:8000]], 5),
    ]
    print(f"\nCPU µs per check, median of {ROUNDS} alternating rounds (memo bypassed)")
    print(f"{'text':<34}{'shipped':>9}{'anchor':>9}{'ratio':>8}")
    for name, texts, repeat in rows:
        measure = partial(_policy_cpu_us, texts=texts, repeat=repeat)
        ours, theirs, ratio = _alternating(measure, shipped, anchor)
        print(f"{name:<34}{ours:>9.1f}{theirs:>9.1f}{ratio:>8.2f}")
    pieces = [answer[i : i + 4] for i in range(0, 8192, 4)]
    metrics = Metrics(CollectorRegistry())
    for overlap in (64, 128):
        settings = ModerationSettings(stream_overlap_chars=overlap)
        stream = partial(_stream_cpu_us, settings=settings, metrics=metrics, pieces=pieces)
        ours, theirs, ratio = _alternating(stream, shipped, anchor)
        print(f"{f'streamed, per chunk, overlap {overlap}':<34}{ours:>9.1f}{theirs:>9.1f}"
              f"{ratio:>8.2f}")  # fmt: skip


def main() -> None:
    corpus_figures()
    cost()


if __name__ == "__main__":
    main()
