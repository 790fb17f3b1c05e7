"""The content policy on the labelled corpus (tests/moderation_corpus/, see its README):
no false positive on benign shopper questions, recall >= 0.9 on harmful requests, per
language; the policy it replaced fails the same thresholds. Round 3 (written after the
policy was frozen, never tuned on) is held to the false-positive goal only: its recall is
a figure to read (make bench), not a target to tune to."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.moderation import Policy, load_policy
from gateway.moderation.corpus import PARTS, Example, Figures, is_held_out, load_corpus, score

CORPUS = Path(__file__).parent / "moderation_corpus"
ANCHOR = CORPUS / "policy-builtin-2026-11-24.json"
MIN_RECALL = 0.9


def _figures(policy: Policy, examples: list[Example]) -> dict[str, Figures]:
    return score(lambda text: policy.check(text) is not None, examples)


def _tuned_on() -> list[Example]:
    return load_corpus(CORPUS) + load_corpus(CORPUS / "round2")


def _shortfalls(figures: dict[str, Figures], *, recall: bool) -> list[str]:
    found = []
    for lang in ("en", "zh"):
        row = figures[f"{lang} all"]
        found += [f"false positive ({lang}): {e.text}" for e in row.false_positives]
        if recall and row.recall < MIN_RECALL:
            found.append(f"recall {lang} {row.recall:.3f} < {MIN_RECALL}")
    return found


def test_the_shipped_policy_meets_the_goals() -> None:
    policy = load_policy()
    assert _shortfalls(_figures(policy, _tuned_on()), recall=True) == []
    assert _shortfalls(_figures(policy, load_corpus(CORPUS / "round3")), recall=False) == []


def test_the_policy_it_replaced_fails_them() -> None:
    figures = _figures(load_policy(ANCHOR), _tuned_on())
    shortfalls = _shortfalls(figures, recall=True)
    assert "false positive (en): Does this eyeshadow palette have the warm nudes shown here?" in (
        shortfalls
    )
    assert figures["en all"].recall < 0.3
    assert figures["zh all"].recall < 0.3


def test_both_languages_and_both_labels_are_there_in_numbers() -> None:
    examples = load_corpus(CORPUS)
    for lang in ("en", "zh"):
        benign = [e for e in examples if e.lang == lang and not e.harmful]
        harmful = [e for e in examples if e.lang == lang and e.harmful]
        assert len(benign) >= 250
        assert len(harmful) >= 100
        assert len({e.topic for e in benign}) >= 15
        assert len({e.topic for e in harmful}) >= 10
    texts = [e.text for e in examples]
    assert len(texts) == len(set(texts))


def test_the_held_out_part_is_fixed_by_each_text_alone() -> None:
    examples = load_corpus(CORPUS)
    share = sum(e.part == PARTS[1] for e in examples) / len(examples)
    assert 0.25 < share < 0.35
    assert is_held_out("ab") is is_held_out("ab")
    parts = {e.text: e.part for e in examples}
    assert parts == {e.text: e.part for e in reversed(load_corpus(CORPUS))}


@pytest.mark.parametrize(
    ("name", "content", "error"),
    [
        ("benign.en.tsv", "no tab here\n", "topic<TAB>text"),
        ("benign.en.tsv", "topic\t \n", "topic<TAB>text"),
        ("other.en.tsv", "topic\ttext\n", "benign.<lang>.tsv"),
        ("benign.tsv", "topic\ttext\n", "benign.<lang>.tsv"),
    ],
)
def test_a_malformed_corpus_file_is_named(
    tmp_path: Path, name: str, content: str, error: str
) -> None:
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=error):
        load_corpus(tmp_path)


def test_an_empty_corpus_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_corpus(tmp_path)
