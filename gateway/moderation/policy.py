"""The content policy, compiled once: ``violation(text)`` names the category a text falls in.

The file's format is in gateway/moderation/document.py (docs/MODERATION.md for
operators); the default ships as ``default_policy.json`` beside this module, and
GATEWAY_MODERATION_POLICY_FILE replaces it. Terms are matched after normalisation
(normalize.py) with the word rules of terms.py. Patterns are Python regular expressions
matched against the same normalised, lower-case text, in which whitespace is always one
space. A pattern that starts with a literal character (or with alternatives that all do)
is searched fastest: the engine skips to the positions where that character occurs; one
that starts with ``\\b`` or a lookbehind is tried at every position.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Final

from pydantic import ValidationError

from gateway.moderation.document import PolicyDocument
from gateway.moderation.normalize import variants
from gateway.moderation.terms import TermSearch

DEFAULT_POLICY: Final = "default_policy.json"
# The verdicts of recent texts, per Policy: a cache-hit workload checks the same prompts
# (and replayed answers) again and again, about 75 µs of CPU each for the load test's
# system prompt and question (loadtest/bench/moderation.py) against well under 1 µs from
# the memo. Bounded: at most MEMO_ENTRIES texts of at most
# MEMO_MAX_CHARS characters (16 MiB in the worst case of 4-byte characters; 4 MiB of
# ASCII). Longer texts are checked in a thread anyway (moderation/stage.py) and rarely
# repeat. A policy never changes once compiled (no reload: a new file means a new Policy
# and so a new memo), so a verdict never goes stale.
MEMO_ENTRIES: Final = 1024
MEMO_MAX_CHARS: Final = 4096
_TERM: Final = -1  # the rule of a plain term (near rules are numbered from 0)


class PolicyError(ValueError):
    """The policy file is missing, not JSON, or holds an invalid term or pattern."""


@dataclass(frozen=True, slots=True)
class Violation:
    category: str


@dataclass(frozen=True, slots=True)
class _Use:
    """What a term found means: a plain term of a category (``rule`` is _TERM) or a
    group's term in a near rule. ``rank``: the category's place in the file."""

    rank: int
    rule: int
    group: int


@dataclass(frozen=True, slots=True)
class _Near:
    rank: int
    groups: int
    within: int

    def matches(self, hits: list[tuple[int, int, int]]) -> bool:
        """Whether one term of every group lies within ``within`` characters, given each
        hit as (group, start, end). Hits are few (the rule's terms in one text): the
        window is tried from each hit's start."""
        if len({group for group, _, _ in hits}) < self.groups:
            return False
        for _, first, _ in hits:
            last = first + self.within
            covered = {group for group, start, end in hits if first <= start and end <= last}
            if len(covered) == self.groups:
                return True
        return False


class Policy:
    """A compiled policy. The literal terms of every category and near rule are one
    Aho-Corasick automaton (one pass over the text, whatever the number of terms), the
    allowed phrases another; each pattern is its own compiled expression (one alternation
    per category measured slower); a near rule is decided from the term hits.
    """

    def __init__(self, document: PolicyDocument) -> None:
        self.version = document.version
        self.categories = tuple(document.categories)
        self._near: list[_Near] = []
        terms: list[tuple[str, _Use]] = []
        for rank, rules in enumerate(document.categories.values()):
            terms += [(term, _Use(rank, _TERM, 0)) for term in rules.terms]
            for rule in rules.near:
                for group, members in enumerate(map(document.terms_of, rule.groups)):
                    terms += [(term, _Use(rank, len(self._near), group)) for term in members]
                self._near.append(_Near(rank, len(rule.groups), rule.within))
        self._terms = TermSearch(terms)
        self._allowed = TermSearch([(phrase, None) for phrase in document.allow])
        self._patterns = [
            (rank, re.compile(pattern))
            for rank, rules in enumerate(document.categories.values())
            for pattern in rules.patterns
        ]
        # functools' LRU is C code and thread-safe (long texts are checked in threads);
        # a single str argument is its own key, compared by value.
        self._memo = lru_cache(maxsize=MEMO_ENTRIES)(self.check)

    def violation(self, text: str) -> Violation | None:
        """The category ``text`` falls in (None: it passes), memoised for short texts."""
        if not text or (not self._terms and not self._patterns):
            return None
        if len(text) <= MEMO_MAX_CHARS:
            return self._memo(text)
        return self.check(text)

    def check(self, text: str) -> Violation | None:
        """``violation`` without the memo (for one-off texts: streamed windows; benchmarks).
        A text in several categories is named after the first in the file."""
        best = len(self.categories)
        for reading in variants(text):
            best = self._best_rank(self._allowed.blank(reading), best)
            if best == 0:
                break
        return Violation(self.categories[best]) if best < len(self.categories) else None

    def _best_rank(self, reading: str, best: int) -> int:
        """The rank of the first category ``reading`` falls in, if lower than ``best``."""
        near_hits: dict[int, list[tuple[int, int, int]]] = {}
        for use, start, end in self._terms.find(reading):
            if use.rank >= best:
                continue
            if use.rule == _TERM:
                best = use.rank
            else:
                near_hits.setdefault(use.rule, []).append((use.group, start, end))
        for rank, pattern in self._patterns:  # in rank order
            if rank >= best:
                break
            if pattern.search(reading):
                best = rank
        for rule, hits in near_hits.items():
            near = self._near[rule]
            if near.rank < best and near.matches(hits):
                best = near.rank
        return best


def parse_policy(raw: str | bytes, source: str) -> Policy:
    try:
        return Policy(PolicyDocument.model_validate(json.loads(raw)))
    except (ValueError, ValidationError) as exc:
        raise PolicyError(f"moderation policy {source}: {exc}") from None


def load_policy(path: Path | None = None) -> Policy:
    """The policy in ``path``, or the one shipped with the gateway. Blocking: call it at
    start-up (or in a thread)."""
    if path is None:
        raw = resources.files(__package__).joinpath(DEFAULT_POLICY).read_bytes()
        return parse_policy(raw, DEFAULT_POLICY)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"moderation policy {path}: {exc.strerror or exc}") from None
    return parse_policy(raw, str(path))
