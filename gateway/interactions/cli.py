"""Ops CLI of the interaction log: ``python -m gateway.interactions COMMAND``.

Commands: migrate, create-db, tail, replay, spool, stats, top, retention, partitions. The
database URL and spool path come from the same ``GATEWAY_LOG_*`` settings the gateway reads
(``--url`` overrides). Everything but ``replay`` uses PyMySQL; ``replay`` runs the gateway's
own async writer so the spool goes through exactly the same insert, poison and idempotence
rules.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from sqlalchemy import Engine

from gateway.db import partitions
from gateway.db.engine import create_database_if_missing, create_log_engine, create_sync_engine
from gateway.db.migrate import current_revision, upgrade
from gateway.interactions.metrics import InteractionLogMetrics
from gateway.interactions.settings import InteractionLogSettings
from gateway.interactions.spool import Spool, SpoolLocked
from gateway.interactions.writer import InteractionWriter

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _short(text: Any, width: int) -> str:
    if text is None:
        return "-"
    value = text.decode("utf-8", "backslashreplace") if isinstance(text, bytes) else str(text)
    value = json.dumps(value, ensure_ascii=False)[1:-1]  # one line: escapes CR, LF, NUL
    return value if len(value) <= width else value[: width - 1] + "…"


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, datetime):
        return value.isoformat()
    return value


# --- commands ----------------------------------------------------------------------------
def cmd_migrate(settings: InteractionLogSettings, args: argparse.Namespace, out: TextIO) -> int:
    if args.create_db:
        created = create_database_if_missing(settings.url, admin_url=args.admin_url)
        print("database created" if created else "database exists", file=out)
    upgrade(settings.url, args.revision)
    print(f"schema at revision {current_revision(settings.url)}", file=out)
    return 0


def cmd_create_db(settings: InteractionLogSettings, args: argparse.Namespace, out: TextIO) -> int:
    created = create_database_if_missing(settings.url, admin_url=args.admin_url)
    print("database created" if created else "database exists", file=out)
    return 0


_TAIL_COLUMNS = (
    "id, request_id, received_at_ms, latency_ms, status_code, cache, endpoint, model, "
    "api_key_id, poisoned, prompt"
)


def cmd_tail(engine: Engine, args: argparse.Namespace, out: TextIO) -> int:
    last_id = 0
    with engine.connect() as conn:
        columns = "*" if args.json else _TAIL_COLUMNS
        result = conn.exec_driver_sql(
            f"SELECT {columns} FROM interactions ORDER BY id DESC LIMIT %s", (args.n,)
        )
        rows = [dict(r) for r in result.mappings()][::-1]
    while True:
        for row in rows:
            last_id = max(last_id, int(row["id"]))
            if args.json:
                print(json.dumps({k: _jsonable(v) for k, v in row.items()}), file=out)
            else:
                latency = row["latency_ms"]
                print(
                    f"{_when(row['received_at_ms'])}  {_short(row['request_id'], 36):36}  "
                    f"{row['status_code']:>3}  {row['cache'] or '-':9}  "
                    f"{'-' if latency is None else f'{latency:.1f}ms':>10}  "
                    f"{_short(row['endpoint'], 24):24}  {_short(row['model'], 20):20}  "
                    f"{_short(row['api_key_id'], 12):12}  {'P' if row['poisoned'] else ' '}  "
                    f"{_short(row['prompt'], 60)}",
                    file=out,
                )
        out.flush()
        if not args.follow:
            return 0
        time.sleep(args.interval)
        with engine.connect() as conn:
            columns = "*" if args.json else _TAIL_COLUMNS
            result = conn.exec_driver_sql(
                f"SELECT {columns} FROM interactions WHERE id > %s ORDER BY id LIMIT 1000",
                (last_id,),
            )
            rows = [dict(r) for r in result.mappings()]


def cmd_stats(engine: Engine, args: argparse.Namespace, out: TextIO) -> int:
    since = (_now_ms() - args.hours * HOUR_MS) // HOUR_MS * HOUR_MS
    with engine.connect() as conn:
        counts = conn.exec_driver_sql(
            "SELECT FLOOR(received_at_ms / 3600000) AS h, COUNT(*) AS n, "
            "SUM(cache = 'hit') AS hits, SUM(cache = 'coalesced') AS coalesced, "
            "SUM(cache IS NOT NULL) AS cache_seen, "
            "SUM(status_code >= 500) AS e5, SUM(status_code BETWEEN 400 AND 499) AS e4 "
            "FROM interactions WHERE received_at_ms >= %s GROUP BY h ORDER BY h",
            (since,),
        ).all()
        # Nearest-rank percentiles with window functions (MariaDB 10.2+, MySQL 8).
        percentiles = conn.exec_driver_sql(
            "SELECT h, MIN(CASE WHEN rn >= CEIL(0.50 * n) THEN latency_ms END), "
            "MIN(CASE WHEN rn >= CEIL(0.99 * n) THEN latency_ms END) FROM ("
            " SELECT FLOOR(received_at_ms / 3600000) AS h, latency_ms,"
            " ROW_NUMBER() OVER (PARTITION BY FLOOR(received_at_ms / 3600000)"
            "  ORDER BY latency_ms) AS rn,"
            " COUNT(*) OVER (PARTITION BY FLOOR(received_at_ms / 3600000)) AS n"
            " FROM interactions WHERE received_at_ms >= %s AND latency_ms IS NOT NULL"
            ") t GROUP BY h",
            (since,),
        ).all()
    p = {int(row[0]): (row[1], row[2]) for row in percentiles}
    print(
        f"{'hour (UTC)':17}  {'requests':>8}  {'hit rate':>8}  {'coalesced':>9}  "
        f"{'p50 ms':>9}  {'p99 ms':>9}  {'5xx rate':>8}  {'4xx rate':>8}",
        file=out,
    )
    for h, n, hits, coalesced, cache_seen, e5, e4 in counts:
        p50, p99 = p.get(int(h), (None, None))
        hit_rate = f"{int(hits) / int(cache_seen):.1%}" if cache_seen else "-"
        print(
            f"{_when(int(h) * HOUR_MS)[:13] + ':00Z':17}  {n:>8}  {hit_rate:>8}  "
            f"{int(coalesced):>9}  {'-' if p50 is None else f'{p50:.1f}':>9}  "
            f"{'-' if p99 is None else f'{p99:.1f}':>9}  {int(e5) / n:>8.1%}  "
            f"{int(e4) / n:>8.1%}",
            file=out,
        )
    return 0


def cmd_top(engine: Engine, args: argparse.Namespace, out: TextIO) -> int:
    since = _now_ms() - args.hours * HOUR_MS
    with engine.connect() as conn:
        if args.what == "images":
            rows = conn.exec_driver_sql(
                "SELECT digest, COUNT(*) AS n, COUNT(DISTINCT i.request_id) AS requests, "
                "MAX(i.received_at_ms) AS last_ms FROM interaction_images i "
                "WHERE i.received_at_ms >= %s GROUP BY digest ORDER BY n DESC, digest LIMIT %s",
                (since, args.limit),
            ).all()
            print(f"{'count':>7}  {'requests':>8}  {'last seen':24}  digest", file=out)
            for digest, n, requests, last_ms in rows:
                print(f"{n:>7}  {requests:>8}  {_when(last_ms):24}  {digest}", file=out)
            return 0
        rows = conn.exec_driver_sql(
            "SELECT t.n, t.last_ms, i.prompt, i.prompt_truncated FROM ("
            " SELECT prompt_sha256, COUNT(*) AS n, MAX(received_at_ms) AS last_ms,"
            " MIN(id) AS sample FROM interactions"
            " WHERE received_at_ms >= %s AND prompt_sha256 IS NOT NULL"
            " GROUP BY prompt_sha256 ORDER BY n DESC, prompt_sha256 LIMIT %s"
            ") t JOIN interactions i ON i.id = t.sample ORDER BY t.n DESC, t.last_ms DESC",
            (since, args.limit),
        ).all()
    print(f"{'count':>7}  {'last seen':24}  question", file=out)
    for n, last_ms, prompt, truncated in rows:
        print(
            f"{n:>7}  {_when(last_ms):24}  {_short(prompt, 100)}{' [cut]' if truncated else ''}",
            file=out,
        )
    return 0


def cmd_retention(engine: Engine, args: argparse.Namespace, out: TextIO) -> int:
    cutoff = _now_ms() - args.days * DAY_MS
    if args.dry_run:
        with engine.connect() as conn:
            (count,) = conn.exec_driver_sql(
                "SELECT COUNT(*) FROM interactions WHERE received_at_ms < %s", (cutoff,)
            ).one()
        print(f"would delete {count} rows received before {_when(cutoff)}", file=out)
        return 0
    with engine.connect() as conn:
        # Whole days first (daily partitions, gateway/db/partitions.py): no row-by-row work.
        dropped, days = (
            partitions.drop_days(conn, cutoff) if partitions.is_partitioned(conn) else (0, [])
        )
        partitions.ensure_ahead(conn, _now_ms())
    deleted = dropped
    for table in partitions.TABLES[::-1]:  # what is left of the cutoff's day, images first
        while True:
            with engine.begin() as conn:
                # Small batches keep locks and undo short.
                result = conn.exec_driver_sql(
                    f"DELETE FROM {table} WHERE received_at_ms < %s "
                    "ORDER BY received_at_ms LIMIT %s",
                    (cutoff, args.batch_size),
                )
            deleted += result.rowcount if table == "interactions" else 0
            if result.rowcount < args.batch_size:
                break
            if args.pause > 0:
                time.sleep(args.pause)
    print(
        f"deleted {deleted} rows received before {_when(cutoff)} "
        f"({len(days)} daily partitions dropped)",
        file=out,
    )
    return 0


def cmd_partitions(engine: Engine, args: argparse.Namespace, out: TextIO) -> int:
    """Daily partitions through today + --ahead days, then each partition's row count."""
    with engine.connect() as conn:
        if not partitions.is_partitioned(conn):
            print("interactions is not partitioned (run: migrate)", file=out)
            return 1
        added = partitions.ensure_ahead(conn, _now_ms(), args.ahead)
        counts = conn.exec_driver_sql(
            "SELECT PARTITION_NAME, TABLE_ROWS FROM information_schema.PARTITIONS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'interactions' "
            "ORDER BY PARTITION_ORDINAL_POSITION"
        ).all()
    for name, rows in counts:
        print(f"{name:12} ~{rows} rows", file=out)
    print(f"added {len(added)} daily partitions", file=out)
    return 0


def cmd_spool(settings: InteractionLogSettings, args: argparse.Namespace, out: TextIO) -> int:
    spool = Spool(Path(settings.spool_path), settings.spool_max_bytes)
    files = [spool.path, *spool.sealed_files(), spool.rejected_path]
    total = 0
    for path in files:
        if path.exists():
            size = path.stat().st_size
            with path.open("rb") as f:
                lines = sum(1 for _ in f)
            total += size if path != spool.rejected_path else 0
            print(f"{size:>12} bytes  {lines:>9} lines  {path}", file=out)
    print(f"{total:>12} bytes waiting for replay (max {settings.spool_max_bytes})", file=out)
    return 0


async def replay_spool(settings: InteractionLogSettings, timeout_s: float, out: TextIO) -> int:
    """Replay the spool into MySQL with the writer's own logic; 0 when it is empty after."""
    engine = create_log_engine(settings.url, connect_timeout_s=settings.connect_timeout_s)
    metrics = InteractionLogMetrics(CollectorRegistry())
    writer = InteractionWriter(engine, settings, metrics)
    try:
        try:
            await writer.start()
        except SpoolLocked as exc:
            print(f"{exc}: that process replays it itself", file=out)
            return 2
        before = writer.spool_bytes
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await writer.drain_spool()
        left = writer.spool_bytes
        rows = writer.replayed_rows
        await writer.close()
    finally:
        await engine.dispose()
    if left:
        reason = "MySQL is unavailable" if not writer.db_up else "time ran out"
        print(f"replayed {rows} rows; {left} of {before} bytes left ({reason})", file=out)
        return 1
    print(f"replayed {rows} rows ({before} bytes); spool empty", file=out)
    return 0


# --- entry point -------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.interactions",
        description="Ops commands of the interaction log (settings: GATEWAY_LOG_* variables).",
    )
    parser.add_argument("--url", help="database URL (default: GATEWAY_LOG_DATABASE_URL)")
    parser.add_argument("--spool", help="spool path (default: GATEWAY_LOG_SPOOL_PATH)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help="run the Alembic migrations (upgrade head)")
    p.add_argument("--revision", default="head")
    p.add_argument("--create-db", action="store_true", help="create the database first")
    p.add_argument("--admin-url", help="credentials that may create the database and user")

    p = sub.add_parser("create-db", help="create the database (and user) when missing")
    p.add_argument("--admin-url", help="credentials that may create the database and user")

    p = sub.add_parser("tail", help="the most recent rows")
    p.add_argument("-n", type=int, default=20)
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--json", action="store_true", help="whole rows as JSON lines")

    p = sub.add_parser("replay", help="replay the spool now (when no gateway holds it)")
    p.add_argument("--timeout", type=float, default=300.0)

    sub.add_parser("spool", help="what the spool holds")

    p = sub.add_parser("stats", help="hourly requests, hit rate, p50/p99 latency, error rates")
    p.add_argument("--hours", type=int, default=24)

    p = sub.add_parser("top", help="most repeated images or questions")
    p.add_argument("what", choices=("images", "questions"))
    p.add_argument("--hours", type=int, default=24)
    p.add_argument("--limit", type=int, default=10)

    p = sub.add_parser(
        "retention", help="drop days older than N days (then the rest of that day, in batches)"
    )
    p.add_argument("--days", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=5000)
    p.add_argument("--pause", type=float, default=0.0, help="seconds between batches")
    p.add_argument("--dry-run", action="store_true")

    p = sub.add_parser("partitions", help="daily partitions through --ahead days; row counts")
    p.add_argument("--ahead", type=int, default=7)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out if out is not None else sys.stdout
    overrides: dict[str, Any] = {}
    if args.url:
        overrides["database_url"] = SecretStr(args.url)
    if args.spool:
        overrides["spool_path"] = Path(args.spool)
    settings = InteractionLogSettings(**overrides)
    if args.command == "migrate":
        return cmd_migrate(settings, args, out)
    if args.command == "create-db":
        return cmd_create_db(settings, args, out)
    if args.command == "spool":
        return cmd_spool(settings, args, out)
    if args.command == "replay":
        return asyncio.run(replay_spool(settings, args.timeout, out))
    engine = create_sync_engine(settings.url)
    try:
        if args.command == "tail":
            return cmd_tail(engine, args, out)
        if args.command == "stats":
            return cmd_stats(engine, args, out)
        if args.command == "top":
            return cmd_top(engine, args, out)
        if args.command == "partitions":
            return cmd_partitions(engine, args, out)
        return cmd_retention(engine, args, out)
    except KeyboardInterrupt:
        return 130
    finally:
        engine.dispose()
