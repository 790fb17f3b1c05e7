"""The interaction log's daily partitions on the real MariaDB (a database of this test's
own on the shared server): the migration keeps existing rows, replays stay idempotent,
retention drops whole days from both tables, the days ahead are created, and the
stats/top window only reads the partitions it needs."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import Engine

from gateway.db import partitions
from gateway.db.engine import create_sync_engine
from gateway.db.migrate import alembic_config, current_revision, upgrade
from gateway.interactions.cli import main as cli
from tests.support.mariadb import shared_database

DAY = partitions.DAY_MS
BEFORE_PARTITIONS = "0005"  # the revision before daily partitions
AGES_DAYS = (0, 0, 1, 2, 5, 40, 200)  # rows received this many days ago


def _now() -> int:
    return time.time_ns() // 1_000_000


def _insert(engine: Engine, request_id: str, received_at_ms: int) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO interactions (request_id, received_at_ms, endpoint, shape, "
            "status_code, prompt_sha256, prompt, cache, latency_ms) "
            "VALUES (%s, %s, '/v1/vqa', 'vqa', 200, 'q', 'is it leather?', 'miss', 12.5) "
            "ON DUPLICATE KEY UPDATE request_id = request_id",
            (request_id.encode(), received_at_ms),
        )
        conn.exec_driver_sql(
            "INSERT INTO interaction_images (request_id, position, digest, received_at_ms) "
            "VALUES (%s, 0, 'sha256:bag', %s) ON DUPLICATE KEY UPDATE digest = digest",
            (request_id.encode(), received_at_ms),
        )


def _ids(engine: Engine, table: str) -> list[str]:
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(f"SELECT request_id FROM {table} ORDER BY request_id").all()
    return [bytes(row[0]).decode() for row in rows]


def _run(url: str, *args: str) -> str:
    out = io.StringIO()
    assert cli(["--url", url, *args], out=out) == 0, out.getvalue()
    return out.getvalue()


@pytest.fixture
def migrated() -> Iterator[tuple[str, Engine, int]]:
    """Rows written under the unpartitioned schema, then the migration to head."""
    with shared_database("vlm_parts") as url:
        upgrade(url, BEFORE_PARTITIONS)
        engine = create_sync_engine(url)
        now = _now()
        for i, age in enumerate(AGES_DAYS):
            _insert(engine, f"r{i}", now - age * DAY)
        upgrade(url)
        try:
            yield url, engine, now
        finally:
            engine.dispose()


def test_migration_partitions_both_tables_and_keeps_rows(migrated: tuple[str, Engine, int]) -> None:
    _, engine, now = migrated
    expected = [f"r{i}" for i in range(len(AGES_DAYS))]
    assert _ids(engine, "interactions") == expected
    assert _ids(engine, "interaction_images") == expected
    with engine.connect() as conn:
        for table in partitions.TABLES:
            names = [p.name for p in partitions.partitions(conn, table)]
            assert names[0] == partitions.BEFORE
            assert names[-1] == partitions.FUTURE
            # From the oldest row's day (capped at 100 days back) through a week ahead.
            assert partitions.day_name(partitions.day_start(now - 40 * DAY)) in names
            assert partitions.day_name(partitions.day_start(now + 7 * DAY)) in names
            assert partitions.day_name(partitions.day_start(now - 200 * DAY)) not in names
        create = conn.exec_driver_sql("SHOW CREATE TABLE interaction_images").one()[1]
        assert "FOREIGN KEY" not in create
        # The 200-day-old row is kept, in p_before.
        (old,) = conn.exec_driver_sql(
            f"SELECT COUNT(*) FROM interactions PARTITION ({partitions.BEFORE})"
        ).one()
        assert old == 1


def test_replays_stay_idempotent(migrated: tuple[str, Engine, int]) -> None:
    _, engine, now = migrated
    _insert(engine, "again", now)
    _insert(engine, "again", now)  # the writer's replay: same id, same received_at_ms
    assert _ids(engine, "interactions").count("again") == 1
    assert _ids(engine, "interaction_images").count("again") == 1


def test_retention_drops_whole_days_from_both_tables(migrated: tuple[str, Engine, int]) -> None:
    url, engine, now = migrated
    with engine.connect() as conn:
        days_before = len(partitions.partitions(conn))
    assert "would delete 3 rows" in _run(url, "retention", "--days", "3", "--dry-run")
    out = _run(url, "retention", "--days", "3")
    # Rows 5 and 40 days old went with their days, the 200-day-old one with p_before's
    # contents (its bound is older than the cutoff) or the batched rest.
    assert "deleted 3 rows" in out
    kept = [f"r{i}" for i, age in enumerate(AGES_DAYS) if age < 3]
    assert _ids(engine, "interactions") == kept
    assert _ids(engine, "interaction_images") == kept
    with engine.connect() as conn:
        names = [p.name for p in partitions.partitions(conn)]
        image_names = [p.name for p in partitions.partitions(conn, "interaction_images")]
    assert names == image_names  # the two tables keep the same days
    assert partitions.day_name(partitions.day_start(now - 5 * DAY)) not in names
    assert partitions.day_name(partitions.day_start(now - 2 * DAY)) in names
    assert len(names) < days_before
    assert "(0 daily partitions dropped)" in _run(url, "retention", "--days", "3")


def test_days_ahead_and_pruned_reads(migrated: tuple[str, Engine, int]) -> None:
    url, engine, now = migrated
    out = _run(url, "partitions", "--ahead", "12")
    assert "added 5 daily partitions" in out
    assert partitions.day_name(partitions.day_start(now + 12 * DAY)) in out
    assert "added 0 daily partitions" in _run(url, "partitions", "--ahead", "12")
    since = partitions.day_start(now) - DAY  # what `stats --hours 24` reads, at most
    with engine.connect() as conn:
        plan = (
            conn.exec_driver_sql(
                "EXPLAIN PARTITIONS SELECT FLOOR(received_at_ms / 3600000) AS h, COUNT(*) "
                "FROM interactions WHERE received_at_ms >= %s GROUP BY h",
                (since,),
            )
            .mappings()
            .one()
        )
    read = plan["partitions"].split(",")
    assert partitions.day_name(partitions.day_start(now - 5 * DAY)) not in read
    assert partitions.BEFORE not in read
    assert partitions.day_name(partitions.day_start(now)) in read
    stats = _run(url, "stats", "--hours", "72").splitlines()
    assert sum(int(line.split()[2]) for line in stats[1:]) == 4  # rows 0, 0, 1 and 2 days old
    assert "sha256:bag" in _run(url, "top", "images", "--hours", "72")


def test_downgrade_restores_the_unpartitioned_schema(migrated: tuple[str, Engine, int]) -> None:
    url, engine, _ = migrated
    command.downgrade(alembic_config(url), BEFORE_PARTITIONS)
    assert current_revision(url) == BEFORE_PARTITIONS
    with engine.connect() as conn:
        assert not partitions.is_partitioned(conn)
        create = conn.exec_driver_sql("SHOW CREATE TABLE interaction_images").one()[1]
    assert "FOREIGN KEY" in create
    assert len(_ids(engine, "interactions")) == len(AGES_DAYS)
    upgrade(url)
    with engine.connect() as conn:
        assert partitions.is_partitioned(conn)
