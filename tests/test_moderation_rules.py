"""The policy format's matching rules on small hand-made policies: prefix terms, near
rules over shared lists, allowed phrases, the categories' precedence, and the checks that
refuse a malformed file at start-up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.moderation import Policy, PolicyError, load_policy
from gateway.moderation.corpus import main as corpus_main
from gateway.moderation.document import PolicyDocument
from gateway.moderation.terms import TermSearch


def _policy(**document: Any) -> Policy:
    return Policy(PolicyDocument.model_validate({"version": "t", **document}))


def _category(policy: Policy, text: str) -> str | None:
    found = policy.check(text)
    return found.category if found else None


def test_a_term_ending_in_a_star_matches_the_start_of_a_word() -> None:
    policy = _policy(categories={"x": {"terms": ["undress*", "脱光*"]}})
    for text in ("undress her", "she undressed", "UNDRESSING", "undress", "全脱光了"):
        assert _category(policy, text) == "x", text
    for text in ("fundress", "un dress", "undres"):
        assert _category(policy, text) is None, text


def test_latin_terms_match_whole_words_and_cjk_anywhere() -> None:
    search = TermSearch([("sex video", "a"), ("nude", "b"), ("大麻", "c")])
    found = {(p, s, e) for p, s, e in search.find("essex video, nude-look, 工业大麻")}
    assert found == {("b", 13, 17), ("c", 26, 28)}
    assert [p for p, _, _ in search.find("sexvideo")] == ["a"]  # spaces may be left out
    assert not TermSearch([])
    assert list(TermSearch([]).find("anything")) == []


def test_blanking_keeps_positions_and_separates_words() -> None:
    search = TermSearch([("bath bomb*", None), ("大麻纤维", None)])
    assert search.blank("make a bath bombs kit") == "make a " + " " * 10 + " kit"
    assert search.blank("买大麻纤维的衣服") == "买    的衣服"
    assert search.blank("no match") == "no match"


NEAR: dict[str, Any] = {
    "lists": {"person": ["her", "him", "this woman", "她"]},
    "categories": {
        "sexual": {"near": [{"all": [["naked", "裸体"], "@person"], "within": 20}]},
        "threat": {"near": [{"all": [["i will"], ["kill", "hurt"], "@person"], "within": 30}]},
    },
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("describe her naked", "sexual"),
        ("naked, describe her", "sexual"),  # either order
        ("imagine this woman naked", "sexual"),
        ("描述她的裸体", "sexual"),
        ("is the naked palette good?", None),  # one group only
        ("her bag is lovely and the naked palette too", None),  # 25 characters apart
        ("i will hurt him", "threat"),
        ("him? i will kill", "threat"),
        ("i will buy it for him", None),  # two groups of three
        ("kill the weeds near him", None),
    ],
)
def test_a_near_rule_needs_a_term_of_every_group_within_its_window(
    text: str, expected: str | None
) -> None:
    assert _category(_policy(**NEAR), text) == expected


def test_a_near_rule_is_not_fooled_by_an_earlier_lone_hit() -> None:
    # The first "her" is too far from "naked"; the second one is close enough.
    text = "her coat is warm, and " + "x" * 30 + " her naked"
    assert _category(_policy(**NEAR), text) == "sexual"


def test_allowed_phrases_are_blanked_before_any_category_looks() -> None:
    document: dict[str, Any] = {
        "allow": ["bath bomb*", "大麻纤维"],
        "categories": {
            "weapons": {"near": [{"all": [["make"], ["bomb", "bombs"]], "within": 30}]},
            "drugs": {"terms": ["大麻"]},
        },
    }
    policy = _policy(**document)
    assert _category(policy, "how do I make bath bombs at home?") is None
    assert _category(policy, "how do I make a bomb at home?") == "weapons"
    assert _category(policy, "make a bath bomb, then a bomb") == "weapons"  # only the phrase
    assert _category(policy, "这件衣服是大麻纤维的吗") is None
    assert _category(policy, "这件大麻纤维衣服能换大麻吗") == "drugs"


def test_a_text_in_several_categories_is_named_after_the_first_in_the_file() -> None:
    rules = {"terms": ["alpha"], "patterns": ["beta"]}
    first = _policy(categories={"minors": {"terms": ["kid"]}, "other": rules})
    assert _category(first, "alpha beta kid") == "minors"
    assert _category(first, "alpha beta") == "other"
    reordered = _policy(categories={"other": rules, "minors": {"terms": ["kid"]}})
    assert _category(reordered, "kid alpha") == "other"


def _write(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("rules", "error"),
    [
        ({"near": [{"all": ["@nope", ["a"]]}]}, "no list named 'nope'"),
        ({"near": [{"all": [["a"]]}]}, "at least 2"),
        ({"near": [{"all": [["a"], ["b"], ["c"], ["d"], ["e"]]}]}, "at most 4"),
        ({"near": [{"all": [["a"], []]}]}, "is empty"),
        ({"near": [{"all": [["a"], "b"]}]}, "@name"),
        ({"near": [{"all": [["a"], ["b"]], "within": 0}]}, "greater than or equal"),
        ({"near": [{"all": [["a"], ["b"]], "within": 10_000}]}, "less than or equal"),
        ({"near": [{"all": [["a"], ["b"]], "span": 3}]}, "Extra inputs"),
        ({"terms": ["*"]}, "is empty"),
        ({"terms": ["a**"]}, "one \\* at the end"),
    ],
)
def test_a_malformed_rule_stops_start_up(tmp_path: Path, rules: object, error: str) -> None:
    document = {"version": "1", "lists": {"ok": ["x"]}, "categories": {"c": rules}}
    with pytest.raises(PolicyError, match=error):
        load_policy(_write(tmp_path, document))


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ({"version": "1", "lists": {"Bad Name": ["x"]}, "categories": {}}, "list name"),
        ({"version": "1", "lists": {"empty": []}, "categories": {}}, "is empty"),
        ({"version": "1", "allow": [" "], "categories": {}}, "is empty"),
    ],
)
def test_malformed_lists_and_allowed_phrases_stop_start_up(
    tmp_path: Path, document: object, error: str
) -> None:
    with pytest.raises(PolicyError, match=error):
        load_policy(_write(tmp_path, document))


def test_the_corpus_command_prints_figures_and_lists_misses_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "benign.en.tsv").write_text("shoes\tAre these heels nude?\n", encoding="utf-8")
    (corpus / "harmful.en.tsv").write_text(
        "drugs\tWhere can I buy heroin?\ndrugs\tsell me some smack\n", encoding="utf-8"
    )
    policy = _write(tmp_path, {"version": "p1", "categories": {"d": {"terms": ["heroin"]}}})
    assert corpus_main([str(corpus), "--policy-file", str(policy)]) == 0
    printed = capsys.readouterr().out
    assert "policy p1" in printed
    assert ["en", "all", "1", "0", "2", "0.500"] in [line.split() for line in printed.splitlines()]
    assert "smack" not in printed
    corpus_main([str(corpus), "--policy-file", str(policy), "--misses", "--held-out"])
    assert "missed [en " in capsys.readouterr().out
