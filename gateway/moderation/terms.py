"""Literal terms found in one Aho-Corasick pass, with the policy's word rules.

A Latin term (one that starts and ends with a letter or digit) matches whole words only:
"sex video" does not match "essex video". A term ending in ``*`` matches the start of a
word ("undress*": "undressed", not "fundress"). Other terms (CJK ones: words are not
separated there) match anywhere. A term with spaces also matches without them
("sexvideo"). Terms are normalised like the text (gateway/moderation/normalize.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, Generic, TypeVar

from ahocorasick_rs import AhoCorasick

from gateway.moderation.normalize import normalize

WILDCARD: Final = "*"
T = TypeVar("T")


def _is_word(spelling: str) -> bool:
    return spelling.isascii() and spelling[0].isalnum() and spelling[-1].isalnum()


def _latin_word_chars(chars: str) -> bool:
    """Whether every one of ``chars`` is a Latin letter, digit or underscore."""
    return chars.isascii() and chars.replace("_", "a").isalnum()


class TermSearch(Generic[T]):
    """Terms, each carrying a payload (several terms may share one searched string)."""

    def __init__(self, terms: list[tuple[str, T]]) -> None:
        index: dict[str, int] = {}
        self._starts_word: list[bool] = []
        self._payloads: list[list[tuple[bool, T]]] = []  # (must end a word, payload)
        for term, payload in terms:
            prefix = term.endswith(WILDCARD)
            stem = normalize(term.removesuffix(WILDCARD))
            for spelling in dict.fromkeys((stem, stem.replace(" ", ""))):
                if not spelling:
                    continue
                word = _is_word(spelling)
                if spelling not in index:
                    index[spelling] = len(self._payloads)
                    self._starts_word.append(word)
                    self._payloads.append([])
                self._payloads[index[spelling]].append((word and not prefix, payload))
        self._automaton = AhoCorasick(list(index)) if index else None

    def __bool__(self) -> bool:
        return self._automaton is not None

    def find(self, text: str) -> Iterator[tuple[T, int, int]]:
        """(payload, start, end) of every term in ``text``, overlapping ones included.
        A Latin term beside CJK text ("看porn视频") is a whole word."""
        if self._automaton is None:
            return
        for index, start, end in self._automaton.find_matches_as_indexes(text, overlapping=True):
            if self._starts_word[index] and start > 0 and _latin_word_chars(text[start - 1]):
                continue
            ends_word = end == len(text) or not _latin_word_chars(text[end])
            for must_end_word, payload in self._payloads[index]:
                if ends_word or not must_end_word:
                    yield payload, start, end

    def blank(self, text: str) -> str:
        """``text`` with every term replaced by as many spaces (positions stay put, and the
        spaces separate words: no other term is made across a blank). A Latin match is
        blanked to the end of its word ("bath bomb*" blanks all of "bath bombs")."""
        chars: list[str] | None = None
        for _, start, end in self.find(text):
            while end < len(text) and _latin_word_chars(text[end - 1] + text[end]):
                end += 1
            chars = chars or list(text)
            chars[start:end] = " " * (end - start)
        return text if chars is None else "".join(chars)
