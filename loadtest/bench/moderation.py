"""Moderation benchmark: microseconds per text check, printed; nothing is asserted.

Measures the shipped policy (gateway/moderation/default_policy.json) on:

* every shopper question of loadtest/locust/questions.py (English and Chinese, clean);
* the same questions with the system prompt in front (what a chat request carries);
* a long prompt (8,000 characters of mixed text), and one that trips at its end;
* a streamed answer of 2,048 four-character chunks through the AnswerGuard (the cost per
  chunk of checking a stream as it arrives, and per answer).

and, for comparison, the same check with the literal terms compiled as one regular
expression (an alternation of every term) instead of the policy's Aho-Corasick automaton.
Run: ``python -m loadtest.bench.moderation``.
Environment: BENCH_MODERATION_ROUNDS (default 5; the median round is printed).
"""

from __future__ import annotations

import os
import re
import statistics
import time
from collections.abc import Callable
from importlib import resources

from gateway.interactions.draft import InteractionDraft
from gateway.metrics import Metrics
from gateway.moderation import Moderator, load_policy
from gateway.moderation.document import PolicyDocument
from gateway.moderation.normalize import variants
from gateway.moderation.policy import Policy
from gateway.moderation.settings import ModerationSettings
from gateway.streams import AnswerRecorder
from loadtest.locust.questions import SYSTEM_PROMPT, all_questions

ROUNDS = int(os.environ.get("BENCH_MODERATION_ROUNDS", "5"))


def _per_call_us(check: Callable[[str], object], texts: list[str], repeat: int) -> float:
    """Median over rounds of the mean microseconds per call."""
    rounds = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(repeat):
            for text in texts:
                check(text)
        rounds.append((time.perf_counter() - started) / (repeat * len(texts)) * 1e6)
    return statistics.median(rounds)


def _regex_check(document: PolicyDocument) -> Callable[[str], object]:
    """Terms and patterns as one regular expression (each term tried at every position)."""
    groups = []
    for name, rules in document.categories.items():
        terms = [re.escape(t.casefold()).replace(r"\ ", " ?") for t in rules.terms]
        groups.append(f"(?P<{name}>{'|'.join([*terms, *rules.patterns])})")
    regex = re.compile("|".join(groups))

    def check(text: str) -> object:
        return next((m for v in variants(text) if (m := regex.search(v))), None)

    return check


def _stream_us(moderator: Moderator, answer: str, chunk: int) -> tuple[float, int]:
    pieces = [answer[i : i + chunk] for i in range(0, len(answer), chunk)]
    rounds = []
    for _ in range(ROUNDS):
        guard = moderator.stream_guard(InteractionDraft())
        recorder = AnswerRecorder()
        started = time.perf_counter()
        for piece in pieces:
            recorder.parts.append(piece)
            guard(recorder)
        recorder.done = True
        guard(recorder)
        rounds.append((time.perf_counter() - started) * 1e6)
    return statistics.median(rounds), len(pieces)


def main() -> None:
    policy: Policy = load_policy()
    policy_file = resources.files("gateway.moderation") / "default_policy.json"
    document = PolicyDocument.model_validate_json(policy_file.read_bytes())
    questions = [q.text for q in all_questions()]
    with_system = [f"{SYSTEM_PROMPT}\n{q}" for q in questions]
    filler = "这个包是真皮的吗？Is this bag real leather, and what brand is it? "
    long_prompt = (filler * (8000 // len(filler) + 1))[:8000]
    long_tripping = long_prompt[:-20] + " cheap viagra here"
    one_regex = _regex_check(document)
    terms = sum(len(c.terms) for c in document.categories.values())
    patterns = sum(len(c.patterns) for c in document.categories.values())
    print(f"policy {policy.version}: {terms} terms, {patterns} patterns, "
          f"{len(policy.categories)} categories; median of {ROUNDS} rounds")  # fmt: skip
    print(f"{'text':<40}{'chars':>7}{'policy µs':>11}{'one regex µs':>14}")
    rows = [
        ("shopper question (clean, en+zh)", questions, 200),
        ("system prompt + question (clean)", with_system, 100),
        ("long prompt (clean)", [long_prompt], 50),
        ("long prompt, term at the end", [long_tripping], 50),
    ]
    for name, texts, repeat in rows:
        chars = statistics.mean(len(t) for t in texts)
        policy_us = _per_call_us(policy.violation, texts, repeat)
        regex_us = _per_call_us(one_regex, texts, repeat)
        print(f"{name:<40}{chars:>7.0f}{policy_us:>11.1f}{regex_us:>14.1f}")
    moderator = Moderator(ModerationSettings(), policy, Metrics())
    answer = ("It is a brown leather handbag with brass buckles, a good gift. " * 200)[:8192]
    total_us, chunks = _stream_us(moderator, answer, 4)
    print(f"streamed answer: {len(answer)} chars in {chunks} chunks: {total_us / 1000:.1f} ms "
          f"in all, {total_us / chunks:.1f} µs per chunk")  # fmt: skip


if __name__ == "__main__":
    main()
