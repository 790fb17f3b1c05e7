"""Daily range partitions of the interaction log (MariaDB and MySQL 8).

``interactions`` and ``interaction_images`` are both partitioned by ``received_at_ms``
with the same bounds: ``p_before`` (anything older than the first day kept), one
partition per UTC day (``p20261128`` holds that day), ``p_future`` (MAXVALUE, so no
insert ever fails for want of a partition). Retention drops whole days in both tables:
no row-by-row DELETE, no undo log, no long locks. ``ensure_ahead`` splits ``p_future``
into the next days; run it daily (``retention`` does, ``partitions`` does).

Partitioned InnoDB tables allow no foreign keys and every unique key must hold the
partition column: request ids are unique per ``received_at_ms``, which keeps the writer's
replay idempotent (a replayed record carries its original ``received_at_ms``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection

DAY_MS = 86_400_000
TABLES = ("interactions", "interaction_images")
BEFORE = "p_before"
FUTURE = "p_future"


@dataclass(frozen=True)
class Partition:
    name: str
    less_than: int | None  # None: MAXVALUE


def day_start(ms: int) -> int:
    return ms // DAY_MS * DAY_MS


def day_name(start_ms: int) -> str:
    """p20261128: the partition of rows received that UTC day."""
    return "p" + datetime.fromtimestamp(start_ms / 1000, UTC).strftime("%Y%m%d")


def _daily(starts: Sequence[int]) -> list[str]:
    return [f"PARTITION {day_name(s)} VALUES LESS THAN ({s + DAY_MS})" for s in starts]


def partition_clause(first_day_ms: int, last_day_ms: int) -> str:
    """PARTITION BY RANGE for days first..last (inclusive), with p_before and p_future."""
    starts = range(day_start(first_day_ms), day_start(last_day_ms) + 1, DAY_MS)
    parts = [
        f"PARTITION {BEFORE} VALUES LESS THAN ({day_start(first_day_ms)})",
        *_daily(starts),
        f"PARTITION {FUTURE} VALUES LESS THAN MAXVALUE",
    ]
    return "PARTITION BY RANGE (received_at_ms) (" + ", ".join(parts) + ")"


def partitions(conn: Connection, table: str = "interactions") -> list[Partition]:
    """The table's partitions in order (empty when it is not partitioned)."""
    rows = conn.exec_driver_sql(
        "SELECT PARTITION_NAME, PARTITION_DESCRIPTION FROM information_schema.PARTITIONS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND PARTITION_NAME IS NOT NULL "
        "ORDER BY PARTITION_ORDINAL_POSITION",
        (table,),
    ).all()
    return [
        Partition(str(name), None if str(bound).upper() == "MAXVALUE" else int(bound))
        for name, bound in rows
    ]


def is_partitioned(conn: Connection) -> bool:
    return bool(partitions(conn))


def ensure_ahead(conn: Connection, now_ms: int, days: int = 7) -> list[str]:
    """Daily partitions through today + ``days``, split off p_future; the names added."""
    added: list[str] = []
    for table in TABLES:
        existing = partitions(conn, table)
        bounds = [p.less_than for p in existing if p.less_than is not None]
        if not bounds:
            continue  # not partitioned (not migrated yet)
        starts = list(range(max(bounds), day_start(now_ms) + (days + 1) * DAY_MS, DAY_MS))
        if not starts:
            continue
        new = [*_daily(starts), f"PARTITION {FUTURE} VALUES LESS THAN MAXVALUE"]
        conn.exec_driver_sql(
            f"ALTER TABLE `{table}` REORGANIZE PARTITION {FUTURE} INTO ({', '.join(new)})"
        )
        if table == TABLES[0]:
            added = [day_name(s) for s in starts]
    return added


def droppable(conn: Connection, cutoff_ms: int) -> list[Partition]:
    """Daily partitions whose every row is older than ``cutoff_ms``."""
    return [
        p
        for p in partitions(conn)
        if p.name not in (BEFORE, FUTURE) and p.less_than is not None and p.less_than <= cutoff_ms
    ]


def count_rows(conn: Connection, names: Sequence[str]) -> int:
    if not names:
        return 0
    (count,) = conn.exec_driver_sql(
        f"SELECT COUNT(*) FROM interactions PARTITION ({', '.join(names)})"
    ).one()
    return int(count)


def drop_days(conn: Connection, cutoff_ms: int) -> tuple[int, list[str]]:
    """Drop every day older than ``cutoff_ms`` from both tables; (rows dropped, names).

    p_before (rows older than the first day kept) is emptied, not dropped, once the
    cutoff passes its bound: it stays to catch replays of very old records."""
    days = [p.name for p in droppable(conn, cutoff_ms)]
    before = next((p for p in partitions(conn) if p.name == BEFORE), None)
    empty_before = bool(
        before is not None and before.less_than is not None and before.less_than <= cutoff_ms
    )
    rows = count_rows(conn, days + ([BEFORE] if empty_before else []))
    for table in TABLES:
        if days:
            conn.exec_driver_sql(f"ALTER TABLE `{table}` DROP PARTITION {', '.join(days)}")
        if empty_before:
            conn.exec_driver_sql(f"ALTER TABLE `{table}` TRUNCATE PARTITION {BEFORE}")
    return rows, days
