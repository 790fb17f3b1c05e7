"""The content policy: categories of terms and regular expressions, compiled once.

A policy file is JSON (the default ships as ``default_policy.json`` beside this module;
GATEWAY_MODERATION_POLICY_FILE replaces it)::

    {"version": "2026-11-24",
     "categories": {"sexual": {"terms": ["色情", "porn"], "patterns": ["p[o0]rn"]}, ...}}

Terms are literal phrases, matched after normalisation (gateway/moderation/normalize.py):
Latin ones only as whole words ("sex video" does not match "essex video"), a term with
spaces also without them ("sexvideo"), CJK ones anywhere. Patterns are Python regular
expressions matched against the same normalised, lower-case text, in which whitespace is
always one space. A pattern that starts with a literal character (or with alternatives
that all do) is searched fastest: the engine skips to the positions where that character
occurs; one that starts with \b or a lookbehind is tried at every position.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Final

from ahocorasick_rs import AhoCorasick
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.moderation.normalize import normalize, variants

DEFAULT_POLICY: Final = "default_policy.json"
# Category names end up in the log's moderation column ("blocked:answer:<name>", 64 chars).
CATEGORY_NAME: Final = r"^[a-z][a-z0-9_]{0,23}$"
# The verdicts of recent texts, per Policy: a cache-hit workload checks the same prompts
# (and replayed answers) again and again, about 12 µs each for a 225-character prompt
# against well under 1 µs from the memo. Bounded: at most MEMO_ENTRIES texts of at most
# MEMO_MAX_CHARS characters (16 MiB in the worst case of 4-byte characters; 4 MiB of
# ASCII). Longer texts are checked in a thread anyway (moderation/stage.py) and rarely
# repeat. A policy never changes once compiled (no reload: a new file means a new Policy
# and so a new memo), so a verdict never goes stale.
MEMO_ENTRIES: Final = 1024
MEMO_MAX_CHARS: Final = 4096


class PolicyError(ValueError):
    """The policy file is missing, not JSON, or holds an invalid term or pattern."""


class CategoryRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    terms: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} does not compile: {exc}") from None
            if "(?P<" in pattern:
                raise ValueError(f"pattern {pattern!r}: named groups are reserved")
        return patterns


class PolicyDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1, max_length=64)
    categories: dict[str, CategoryRules]

    @field_validator("categories")
    @classmethod
    def _names(cls, categories: dict[str, CategoryRules]) -> dict[str, CategoryRules]:
        for name in categories:
            if not re.match(CATEGORY_NAME, name):
                raise ValueError(f"category name {name!r} must match {CATEGORY_NAME}")
        return categories


@dataclass(frozen=True, slots=True)
class Violation:
    category: str


def _is_word(term: str) -> bool:
    """Latin terms that start and end with a letter or digit match whole words only;
    others (CJK ones: words are not separated there) match anywhere."""
    return term.isascii() and term[0].isalnum() and term[-1].isalnum()


def _latin_word_char(char: str) -> bool:
    return char.isascii() and (char.isalnum() or char == "_")


def _whole_word(text: str, start: int, end: int) -> bool:
    # A Latin term beside CJK text ("看porn视频") is still a whole word.
    before = start > 0 and _latin_word_char(text[start - 1])
    after = end < len(text) and _latin_word_char(text[end])
    return not before and not after


class Policy:
    """A compiled policy: ``violation(text)`` names the category a text falls in.

    The literal terms of every category are one Aho-Corasick automaton (one pass over the
    text, whatever the number of terms; measured in loadtest/bench/moderation.py against
    one regular expression); each pattern is its own compiled expression.
    """

    def __init__(self, document: PolicyDocument) -> None:
        self.version = document.version
        self.categories = tuple(document.categories)
        # One entry per searched string: (category, whole words only).
        self._term_info: list[tuple[str, bool]] = []
        searched: dict[str, int] = {}
        for name, rules in document.categories.items():
            for term in map(normalize, rules.terms):
                # "sex video" also matches "sexvideo"; normalised text has single spaces.
                for spelling in dict.fromkeys((term, term.replace(" ", ""))):
                    if spelling and spelling not in searched:
                        searched[spelling] = len(self._term_info)
                        self._term_info.append((name, _is_word(spelling)))
        self._terms = AhoCorasick(list(searched)) if searched else None
        self._patterns = [
            (name, re.compile(pattern))
            for name, rules in document.categories.items()
            for pattern in rules.patterns
        ]
        # functools' LRU is C code and thread-safe (long texts are checked in threads);
        # a single str argument is its own key, compared by value.
        self._memo = lru_cache(maxsize=MEMO_ENTRIES)(self.check)

    def violation(self, text: str) -> Violation | None:
        """The category ``text`` falls in (None: it passes), memoised for short texts."""
        if not text or (self._terms is None and not self._patterns):
            return None
        if len(text) <= MEMO_MAX_CHARS:
            return self._memo(text)
        return self.check(text)

    def check(self, text: str) -> Violation | None:
        """``violation`` without the memo (for one-off texts: streamed windows; benchmarks)."""
        for reading in variants(text):
            if self._terms is not None:
                for index, start, end in self._terms.find_matches_as_indexes(
                    reading, overlapping=True
                ):
                    category, whole_word = self._term_info[index]
                    if not whole_word or _whole_word(reading, start, end):
                        return Violation(category)
            for category, pattern in self._patterns:
                if pattern.search(reading):
                    return Violation(category)
        return None


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
