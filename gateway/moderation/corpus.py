"""A policy's figures on a labelled corpus: false positives on benign texts, recall on
harmful ones, per language, on the tuning part and on the held-out part.

The corpus is a folder of ``benign.<lang>.tsv`` and ``harmful.<lang>.tsv`` files, one
``topic<TAB>text`` line per text (the shipped one is tests/moderation_corpus/, described
in its README). About 30% of the texts are held out, chosen by their hash: tune on the
rest, and read the held-out figures as the ones on wording the policy was not tuned on.

Check a policy file against it before you deploy it::

    python -m gateway.moderation.corpus --policy-file my_policy.json [CORPUS_DIR]

It prints the figures; ``--misses`` lists the tuning part's false positives and misses,
``--misses --held-out`` the held-out part's too (once you have looked at those, they are
no longer held out: listing is never the default).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from gateway.moderation.policy import load_policy

DEFAULT_CORPUS: Final = Path("tests/moderation_corpus")
LABELS: Final = ("benign", "harmful")
PARTS: Final = ("tuning", "held-out")


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    lang: str
    harmful: bool
    topic: str

    @property
    def part(self) -> str:
        return PARTS[1] if is_held_out(self.text) else PARTS[0]


def is_held_out(text: str) -> bool:
    """Fixed by the text alone (mod 10 below 3 of the digest's first byte, about 30%),
    so adding texts never moves old ones between the parts."""
    return hashlib.sha256(text.encode()).digest()[0] % 10 < 3


def load_corpus(directory: Path = DEFAULT_CORPUS) -> list[Example]:
    examples = []
    files = sorted(directory.glob("*.tsv"))
    if not files:
        raise FileNotFoundError(f"no <label>.<lang>.tsv files in {directory}")
    for path in files:
        label, _, lang = path.stem.partition(".")
        if label not in LABELS or not lang:
            raise ValueError(f"{path.name}: expected benign.<lang>.tsv or harmful.<lang>.tsv")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            topic, tab, text = line.partition("\t")
            if not tab or not text.strip():
                raise ValueError(f"{path.name}:{number}: expected topic<TAB>text")
            examples.append(Example(text, lang, label == "harmful", topic))
    return examples


@dataclass(slots=True)
class Figures:
    """One language's texts in one part of the corpus."""

    benign: int = 0
    harmful: int = 0
    false_positives: list[Example] = field(default_factory=list)
    misses: list[Example] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return (self.harmful - len(self.misses)) / self.harmful if self.harmful else 1.0


def score(refuses: Callable[[str], bool], examples: Iterable[Example]) -> dict[str, Figures]:
    """Figures keyed ``<lang> <part>`` and ``<lang> all``; ``refuses(text)`` is the verdict."""
    figures: dict[str, Figures] = {}
    for example in examples:
        refused = refuses(example.text)
        for key in (f"{example.lang} {example.part}", f"{example.lang} all"):
            row = figures.setdefault(key, Figures())
            if example.harmful:
                row.harmful += 1
                if not refused:
                    row.misses.append(example)
            else:
                row.benign += 1
                if refused:
                    row.false_positives.append(example)
    return dict(sorted(figures.items()))


def table(figures: dict[str, Figures]) -> list[str]:
    lines = [f"{'texts':<14}{'benign':>8}{'false pos':>11}{'harmful':>9}{'recall':>8}"]
    for key, row in figures.items():
        lines.append(
            f"{key:<14}{row.benign:>8}{len(row.false_positives):>11}"
            f"{row.harmful:>9}{row.recall:>8.3f}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", nargs="?", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--policy-file", type=Path, help="default: the shipped policy")
    parser.add_argument("--misses", action="store_true", help="list the tuning part's misses")
    parser.add_argument("--held-out", action="store_true", help="with --misses: held-out too")
    args = parser.parse_args(argv)
    policy = load_policy(args.policy_file)
    figures = score(lambda text: policy.check(text) is not None, load_corpus(args.corpus))
    print(f"policy {policy.version} on {args.corpus}")
    print("\n".join(table(figures)))
    for key, row in figures.items() if args.misses else ():
        if key.endswith(" all") or (key.endswith(PARTS[1]) and not args.held_out):
            continue
        for example in row.false_positives:
            print(f"false positive [{key}] {example.topic}: {example.text}")
        for example in row.misses:
            print(f"missed [{key}] {example.topic}: {example.text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
