"""The policy file's format, validated (docs/MODERATION.md describes it for operators).

::

    {"version": "2026-12-01",
     "allow": ["bath bomb*", "跳楼价"],
     "lists": {"person": ["her", "him", "this woman", "她"]},
     "categories": {
       "sexual": {"terms": ["porn", "色情", "undress*"],
                  "patterns": ["p[o0]rn"],
                  "near": [{"all": [["naked", "nudity"], "@person"], "within": 30}]}}}

Categories are tried in the file's order: a text that falls in several is named after
the first. A term is a literal phrase; one ending in ``*`` matches any word that starts
with it. A ``near`` rule matches when a term of each of its groups (two to four) occurs
within ``within`` characters of the others; a group is a list of terms or ``@name``, a
list of ``lists`` shared by several rules. ``allow`` phrases (shop talk that contains a
term: "bath bomb", 跳楼价) are blanked out of the text before any category looks at it.
"""

from __future__ import annotations

import re
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.moderation.terms import WILDCARD

# Category names end up in the log's moderation column ("blocked:answer:<name>", 64 chars).
CATEGORY_NAME: Final = r"^[a-z][a-z0-9_]{0,23}$"
LIST_NAME: Final = r"^[a-z][a-z0-9_]{0,63}$"
# A near rule's longest span. Streamed answers are checked in windows that overlap by
# GATEWAY_MODERATION_STREAM_OVERLAP_CHARS (64): a rule wider than that is still applied
# to the whole answer at its end, but not while it streams.
MAX_WITHIN: Final = 256


def _checked_term(term: str) -> str:
    if not term.strip() or not term.rstrip(WILDCARD).strip():
        raise ValueError(f"term {term!r} is empty")
    if term.endswith(WILDCARD * 2):
        raise ValueError(f"term {term!r}: one {WILDCARD} at the end at most")
    return term


Group = list[str] | str


class NearRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    groups: list[Group] = Field(alias="all", min_length=2, max_length=4)
    within: int = Field(default=40, ge=1, le=MAX_WITHIN)

    @field_validator("groups")
    @classmethod
    def _groups(cls, groups: list[Group]) -> list[Group]:
        for group in groups:
            if isinstance(group, str):
                if not group.startswith("@"):
                    raise ValueError(f"group {group!r}: a list of terms, or @name of a list")
            elif not group:
                raise ValueError("a group of terms is empty")
            else:
                for term in group:
                    _checked_term(term)
        return groups


class CategoryRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    terms: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)
    near: list[NearRule] = Field(default_factory=list)

    @field_validator("terms")
    @classmethod
    def _terms(cls, terms: list[str]) -> list[str]:
        return [_checked_term(term) for term in terms]

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
    allow: list[str] = Field(default_factory=list)
    lists: dict[str, list[str]] = Field(default_factory=dict)
    categories: dict[str, CategoryRules]

    @field_validator("categories")
    @classmethod
    def _names(cls, categories: dict[str, CategoryRules]) -> dict[str, CategoryRules]:
        for name in categories:
            if not re.match(CATEGORY_NAME, name):
                raise ValueError(f"category name {name!r} must match {CATEGORY_NAME}")
        return categories

    @field_validator("allow")
    @classmethod
    def _allow(cls, allow: list[str]) -> list[str]:
        return [_checked_term(term) for term in allow]

    @field_validator("lists")
    @classmethod
    def _lists(cls, lists: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, terms in lists.items():
            if not re.match(LIST_NAME, name):
                raise ValueError(f"list name {name!r} must match {LIST_NAME}")
            if not terms:
                raise ValueError(f"list {name!r} is empty")
            for term in terms:
                _checked_term(term)
        return lists

    @model_validator(mode="after")
    def _references(self) -> PolicyDocument:
        for name, rules in self.categories.items():
            for rule in rules.near:
                for group in rule.groups:
                    if isinstance(group, str) and group[1:] not in self.lists:
                        raise ValueError(f"category {name!r}: no list named {group[1:]!r}")
        return self

    def terms_of(self, group: Group) -> list[str]:
        """A near rule's group as terms (a ``@name`` looked up in ``lists``)."""
        return self.lists[group[1:]] if isinstance(group, str) else group
