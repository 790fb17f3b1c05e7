"""docs/ERRORS.md is generated from the error table (issue 27): every code has its words,
and the document in the repository is the one the table makes today."""

from __future__ import annotations

from gateway.errors import ERROR_TABLE, ErrorCode
from gateway.errors_doc import CATALOGUE, DOC_PATH, main, render

STALE = "docs/ERRORS.md is out of date: run `python -m gateway.errors_doc`"


def test_every_code_is_described() -> None:
    assert set(CATALOGUE) == set(ErrorCode) == set(ERROR_TABLE)


def test_the_catalogue_is_current() -> None:
    assert DOC_PATH.read_text() == render(), STALE
    assert main(["--check"]) == 0


def test_each_row_states_status_and_retry_from_the_table() -> None:
    rows = {
        line.split(" | ")[0].strip("| `"): line.split(" | ")
        for line in DOC_PATH.read_text().splitlines()
        if line.startswith("| `")
    }
    assert set(rows) == {code.value for code in ErrorCode}
    assert rows["request_exceeds_token_limit"][1] == "429"
    assert "x-should-retry: false" in rows["request_exceeds_token_limit"][5]
    assert rows["rate_limit_exceeded"][5].startswith("Yes, after `Retry-After`")
    assert rows["context_length_exceeded"][1:3] == ["400", "`invalid_request_error`"]
    assert rows["invalid_request"][5].startswith("No")
