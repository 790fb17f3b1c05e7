"""Unit tests of the interaction log: rows, sanitizing, settings, error classes, the spool."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy.exc import DataError, OperationalError

from gateway.interactions.records import (
    COLUMN_SPECS,
    COLUMNS,
    InteractionRecord,
    LoggedImage,
    RowPolicy,
    anonymise_ip,
    estimated_size,
    image_rows,
    json_text,
    minimal_row,
    row_params,
    sanitize_row,
    text_sha256,
    to_row,
)
from gateway.interactions.settings import InteractionLogSettings
from gateway.interactions.spool import Spool, SpoolFull, SpoolLocked
from gateway.interactions.statements import insert_sql, is_outage
from tests.support.interactions import make

IMAGE = LoggedImage("ab" * 32, 123_456, 640, 480, "jpeg")


def record(**overrides: object) -> InteractionRecord:
    values: dict[str, object] = {
        "request_id": "req-1",
        "received_at_ms": 1_700_000_000_000,
        "finished_at_ms": 1_700_000_000_250,
        "endpoint": "/v1/chat/completions",
        "shape": "chat",
        "status_code": 200,
    }
    values.update(overrides)
    return InteractionRecord(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("address", "mode", "expected"),
    [
        ("203.0.113.77", "truncated", "203.0.113.0"),
        ("203.0.113.77", "full", "203.0.113.77"),
        ("203.0.113.77", "none", None),
        ("2001:db8:abcd:12:1:2:3:4", "truncated", "2001:db8:abcd::"),
        ("::ffff:198.51.100.9", "truncated", "198.51.100.0"),
        ("not-an-ip", "truncated", None),
        (" 203.0.113.77 ", "truncated", "203.0.113.0"),
        ("203.0.113.77" + " " * 100, "truncated", "203.0.113.0"),  # too long for the memo
        ("1" * 100, "truncated", None),
        (None, "full", None),
    ],
)
def test_client_ip_anonymisation(address: str | None, mode: str, expected: str | None) -> None:
    assert anonymise_ip(address, mode) == expected  # type: ignore[arg-type]
    assert anonymise_ip(address, mode) == expected  # type: ignore[arg-type]  # memoised


def test_row_caps_texts_and_keeps_the_full_prompt_hash() -> None:
    prompt = "is this bag real leather? " * 100
    row = to_row(
        record(prompt=prompt, answer="yes", images=(IMAGE,), user_agent="u" * 900),
        RowPolicy(prompt_max_chars=50, answer_max_chars=10, client_ip="truncated"),
    )
    assert row["prompt"] == prompt[:50]
    assert row["prompt_truncated"] == 1
    assert row["prompt_chars"] == len(prompt)
    assert row["prompt_sha256"] == text_sha256(prompt)
    assert (row["answer"], row["answer_truncated"], row["answer_chars"]) == ("yes", 0, 3)
    assert len(row["user_agent"]) == 512
    assert row["latency_ms"] == 250.0
    assert row["image_count"] == 1
    assert row["images"] == [
        {"digest": "ab" * 32, "bytes": 123_456, "width": 640, "height": 480, "format": "jpeg"}
    ]
    assert image_rows(row) == [("req-1", 0, "ab" * 32, 1_700_000_000_000)]
    assert set(row) == set(COLUMNS)
    json.dumps(row)  # the spool stores rows as JSON


def test_row_params_follow_the_column_order_and_bind_json_as_text() -> None:
    row = to_row(record(images=(IMAGE,)), RowPolicy())
    params = row_params(row)
    assert len(params) == len(COLUMNS)
    assert params[COLUMNS.index("request_id")] == "req-1"
    assert json.loads(params[COLUMNS.index("images")])[0]["width"] == 640
    sql = insert_sql(3)
    assert sql.count("%s") == 3 * len(COLUMNS)
    assert sql.endswith("ON DUPLICATE KEY UPDATE `request_id` = `request_id`")


@pytest.mark.parametrize(
    "value",
    [
        [{"digest": "ab" * 32, "bytes": 1, "width": 2, "height": 3, "format": "png"}],
        {"temperature": 0.7, "n": 2, "logprobs": True, "stop": None, "top_p": 0.25},
        {"名前": '値 "quoted" \\ \n\u0001', "emoji": "😀", "big": 2**70, "neg": -3.5},
        [],
        {},
    ],
)
def test_json_columns_are_bound_as_compact_json_text(value: object) -> None:
    text = json_text(value)
    assert json.loads(text) == value
    # Compact, non-ASCII kept as is: no longer than json.dumps writes it.
    assert len(text) <= len(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def test_json_text_leaves_a_lone_surrogate_for_mysql_to_refuse() -> None:
    # As before: the driver cannot encode it, the row is isolated and stored sanitized.
    text = json_text({"digest": "\udfff"})
    assert text == '{"digest":"\udfff"}'
    with pytest.raises(UnicodeEncodeError):
        text.encode("utf-8")


def test_row_params_fill_not_null_columns_of_a_sparse_row() -> None:
    # Spool rows written by older versions may lack columns.
    params = dict(
        zip(COLUMNS, row_params({"request_id": "r", "tool_calls": [{"id": "c"}]}), strict=True)
    )
    for name, spec in COLUMN_SPECS.items():
        if name == "tool_calls":
            assert params[name] == '[{"id":"c"}]'
        elif name != "request_id":
            assert params[name] == (None if spec.nullable else spec.default), name
    assert params["received_at_ms"] == 0
    assert params["endpoint"] == ""


def test_estimated_size_grows_with_the_json_columns() -> None:
    row = to_row(record(), RowPolicy())
    options = {"stop": ["x" * 1000]}
    bigger = to_row(record(request_options=options), RowPolicy())
    assert estimated_size(bigger) - estimated_size(row) >= 4 * len(json.dumps(options)) - 16


def test_sanitize_makes_any_row_fit_and_flags_it() -> None:
    bad = to_row(
        record(
            prompt="lone \ud800 surrogate",
            model="m" * 300,
            status_code=99_999,
            latency_ms=math.nan,
            prompt_tokens=-5,
            images=(LoggedImage("\udfff", 1, 1, 1, "png"),),
        ),
        RowPolicy(),
    )
    clean = sanitize_row(bad, "DataError: (1264, 'Out of range')")
    assert clean["poisoned"] == 1
    assert clean["poison_error"].startswith("DataError")
    assert clean["prompt"] == "lone \\ud800 surrogate"
    assert clean["model"] == "m" * COLUMN_SPECS["model"].limit
    assert clean["status_code"] == 65_535  # NOT NULL: clamped
    assert clean["prompt_tokens"] is None  # nullable: dropped
    assert clean["latency_ms"] is None
    assert clean["images"][0]["digest"] == "\\udfff"
    for value in row_params(clean):
        if isinstance(value, str):
            value.encode("utf-8")  # no surrogate left


def test_minimal_row_keeps_identity_and_gets_a_stable_id_when_missing() -> None:
    row = to_row(record(prompt="x"), RowPolicy())
    small = minimal_row(row, "boom")
    assert small["request_id"] == "req-1"
    assert small["prompt"] is None
    assert small["poisoned"] == 1
    no_id = dict(row, request_id=None)
    assert minimal_row(no_id, "e")["request_id"] == minimal_row(no_id, "e")["request_id"]
    assert minimal_row(no_id, "e")["request_id"].startswith("poisoned-")


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GATEWAY_LOG_DATABASE_URL", "mysql://u:p@db:3306/log")
    monkeypatch.setenv("GATEWAY_LOG_BATCH_SIZE", "50")
    monkeypatch.setenv("GATEWAY_LOG_FLUSH_INTERVAL_S", "0.25")
    monkeypatch.setenv("GATEWAY_LOG_SPOOL_PATH", str(tmp_path / "s.jsonl"))
    monkeypatch.setenv("GATEWAY_LOG_SPOOL_MAX_BYTES", "1000000")
    monkeypatch.setenv("GATEWAY_LOG_CLIENT_IP", "none")
    monkeypatch.setenv("GATEWAY_LOG_PROMPT_MAX_CHARS", "100")
    settings = InteractionLogSettings()
    assert settings.url == "mysql://u:p@db:3306/log"
    assert "u:p" not in repr(settings)
    assert (settings.batch_size, settings.flush_interval_s) == (50, 0.25)
    assert settings.spool_path == tmp_path / "s.jsonl"
    assert (settings.spool_max_bytes, settings.client_ip, settings.prompt_max_chars) == (
        1_000_000,
        "none",
        100,
    )
    monkeypatch.setenv("GATEWAY_LOG_DATABASE_URL", "postgresql://u:hunter2@db/log")
    with pytest.raises(ValidationError) as refused:
        InteractionLogSettings()
    assert "hunter2" not in str(refused.value)  # a refused URL is not echoed into the log
    monkeypatch.setenv("GATEWAY_LOG_DATABASE_URL", "mysql://db:3306")
    with pytest.raises(ValidationError):
        InteractionLogSettings()


def test_outage_errors_are_told_from_bad_data() -> None:
    gone = OperationalError("INSERT", (), Exception(2013, "Lost connection"))
    refused = OperationalError("INSERT", (), Exception(2003, "Can't connect"))
    no_table = OperationalError("INSERT", (), Exception(1146, "Table doesn't exist"))
    bad_value = DataError("INSERT", (), Exception(1264, "Out of range value"))
    assert is_outage(gone)
    assert is_outage(refused)
    assert is_outage(no_table)
    assert is_outage(ConnectionRefusedError())
    assert is_outage(TimeoutError())
    assert not is_outage(bad_value)
    assert not is_outage(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates"))


# --- the spool -------------------------------------------------------------------------------
def rows(n: int, start: int = 0) -> list[dict[str, object]]:
    return [
        to_row(record(request_id=f"r{i}", prompt="p\n\x00😀"), RowPolicy())
        for i in range(start, start + n)
    ]


def test_spool_appends_rotates_and_reads_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl", 10_000_000)
    spool.open()
    try:
        spool.append(rows(3), sync=True)
        spool.append(rows(2, 3), sync=False)
        assert spool.dirty
        spool.sync()
        assert not spool.dirty
        size = spool.bytes
        sealed = spool.rotate()
        assert sealed is not None
        assert spool.sealed_files() == [sealed]
        assert spool.bytes == size
        assert spool.active_bytes == 0
        first = spool.read_chunk(sealed, 0, 4)
        assert [r["request_id"] for r in first.rows] == ["r0", "r1", "r2", "r3"]
        assert not first.eof
        rest = spool.read_chunk(sealed, first.next_offset, 4)
        assert [r["request_id"] for r in rest.rows] == ["r4"]
        assert rest.eof
        assert rest.rows[0]["prompt"] == "p\n\x00😀"
        spool.remove(sealed)
        assert spool.bytes == 0
        assert spool.rotate() is None
    finally:
        spool.close()


def test_spool_survives_a_torn_line_and_skips_it(tmp_path: Path) -> None:
    path = tmp_path / "spool.jsonl"
    spool = Spool(path, 10_000_000)
    spool.open()
    spool.append(rows(2), sync=True)
    spool.close()
    with path.open("ab") as f:
        f.write(b'{"request_id":"torn","prom')  # a crash in the middle of a write
    spool = Spool(path, 10_000_000)
    spool.open()
    try:
        spool.append(rows(1, 2), sync=True)
        sealed = spool.rotate()
        assert sealed is not None
        chunk = spool.read_chunk(sealed, 0, 100)
        assert [r["request_id"] for r in chunk.rows] == ["r0", "r1", "r2"]
        assert chunk.corrupt == 1
        assert chunk.eof
    finally:
        spool.close()


def test_spool_is_bounded_and_refuses_whole_appends(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl", 3000)
    spool.open()
    try:
        spool.append(rows(1), sync=True)
        before = spool.bytes
        with pytest.raises(SpoolFull):
            spool.append(rows(50), sync=True)
        assert spool.bytes == before == os.path.getsize(tmp_path / "spool.jsonl")
    finally:
        spool.close()


def test_one_process_per_spool(tmp_path: Path) -> None:
    first = Spool(tmp_path / "spool.jsonl", 1000)
    first.open()
    second = Spool(tmp_path / "spool.jsonl", 1000)
    with pytest.raises(SpoolLocked):
        second.open()
    first.close()
    second.open()
    second.close()


def test_the_spools_oldest_age_follows_the_replay(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl", 1 << 20)
    spool.open()
    assert spool.oldest_age_s() == 0.0  # empty
    now_ms = int(time.time() * 1000)
    older = to_row(make("older", received_at_ms=now_ms - 60_000), RowPolicy())
    newer = to_row(make("newer", received_at_ms=now_ms - 20_000), RowPolicy())
    spool.append([older], sync=True)
    sealed = spool.rotate()
    assert sealed is not None
    spool.append([newer], sync=True)
    assert spool.oldest_age_s() == pytest.approx(60, abs=5)  # the sealed file's first row
    # The replay is past the whole sealed file: the oldest waiting row is the active one.
    assert spool.oldest_age_s((sealed, sealed.stat().st_size)) == pytest.approx(20, abs=5)
    spool.close()


def test_rows_mysql_refuses_in_every_form_are_kept_for_a_person(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl", 1 << 20)
    row = to_row(make("refused"), RowPolicy())
    spool.reject(row, "Incorrect string value")
    spool.reject(row, "again")
    lines = spool.rejected_path.read_text().splitlines()
    assert [json.loads(line)["reason"] for line in lines] == ["Incorrect string value", "again"]
    assert json.loads(lines[0])["row"]["request_id"] == "refused"
    assert spool.rejected_path.stat().st_mode & 0o777 == 0o600  # prompts: owner only
