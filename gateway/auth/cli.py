"""Ops CLI of the API keys: ``python -m gateway.auth {create,list,revoke,migrate}``.

The database URL comes from the gateway's own settings (GATEWAY_AUTH_DATABASE_URL, else
GATEWAY_LOG_DATABASE_URL; ``--url`` overrides). A created key is printed once, on
stdout, and never again: only its SHA-256 is stored. Listings show the public id only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO

from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from gateway.auth.keys import generate_key
from gateway.auth.settings import AuthSettings
from gateway.db.engine import create_sync_engine
from gateway.db.migrate import alembic_config, current_revision, upgrade
from gateway.interactions.settings import InteractionLogSettings

EXIT_USAGE = 2


def database_url(explicit: str | None) -> str:
    if explicit:
        return explicit
    configured = AuthSettings().database_url or InteractionLogSettings().database_url
    return configured.get_secret_value()


def schema_is_current(url: str) -> bool:
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    return current_revision(url) == head


def _cache_options(value: str) -> frozenset[str]:
    """``shared`` or ``key``, with or without ``near``: comma-separated."""
    options = frozenset(part.strip() for part in value.split(",") if part.strip())
    if not options or not options <= {"shared", "key", "near"} or {"shared", "key"} <= options:
        raise argparse.ArgumentTypeError("use shared or key, optionally with near: key,near")
    return options


def _limit(value: int | None) -> str:
    return "default" if value is None else str(value)


def cmd_create(engine: Engine, args: argparse.Namespace, out: TextIO) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    new = generate_key()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO api_keys (key_id, name, key_hash, created_at, requests_per_minute,"
                " tokens_per_minute, max_concurrent, allowed_models, cache_scope, cache_near)"
                " VALUES"
                " (:key_id, :name, :key_hash, :created_at, :rpm, :tpm, :concurrent, :models,"
                " :cache_scope, :cache_near)"
            ),
            {
                "key_id": new.key_id,
                "name": args.name,
                "key_hash": new.key_hash,
                "created_at": datetime.now(UTC).replace(tzinfo=None),
                "rpm": args.rpm,
                "tpm": args.tpm,
                "concurrent": args.concurrent,
                "models": None if models is None else json.dumps(models),
                "cache_scope": "key" if "key" in args.cache else "shared",
                "cache_near": int("near" in args.cache),
            },
        )
    print(f"created key {new.key_id} ({args.name}); it is shown only this once:", file=sys.stderr)
    print(new.key, file=out)
    return 0


def cmd_list(engine: Engine, args: argparse.Namespace, out: TextIO) -> int:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT key_id, name, created_at, revoked_at, requests_per_minute,"
                " tokens_per_minute, max_concurrent, allowed_models FROM api_keys ORDER BY id"
            )
        ).all()
    if args.json:
        for row in rows:
            record = dict(row._mapping)
            record["created_at"] = record["created_at"].isoformat()
            record["revoked_at"] = record["revoked_at"] and record["revoked_at"].isoformat()
            models = record["allowed_models"]
            record["allowed_models"] = json.loads(models) if isinstance(models, str) else models
            print(json.dumps(record), file=out)
        return 0
    print(
        f"{'key id':16}  {'name':24}  {'created (UTC)':19}  {'revoked (UTC)':19}  "
        f"{'rpm':>8}  {'tpm':>9}  {'conc':>7}  models",
        file=out,
    )
    for row in rows:
        revoked = row.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if row.revoked_at else "-"
        models = row.allowed_models
        models = json.loads(models) if isinstance(models, str) else models
        print(
            f"{row.key_id:16}  {row.name[:24]:24}  {row.created_at:%Y-%m-%d %H:%M:%S}  "
            f"{revoked:19}  {_limit(row.requests_per_minute):>8}  "
            f"{_limit(row.tokens_per_minute):>9}  {_limit(row.max_concurrent):>7}  "
            f"{'all' if models is None else ','.join(models)}",
            file=out,
        )
    return 0


def cmd_revoke(engine: Engine, args: argparse.Namespace, out: TextIO) -> int:
    with engine.begin() as conn:
        found = conn.execute(
            text("SELECT revoked_at FROM api_keys WHERE key_id = :key_id"), {"key_id": args.key_id}
        ).first()
        if found is None:
            print(f"no key {args.key_id}", file=out)
            return 1
        if found.revoked_at is not None:
            print(f"key {args.key_id} was already revoked at {found.revoked_at}", file=out)
            return 0
        conn.execute(
            text("UPDATE api_keys SET revoked_at = :now WHERE key_id = :key_id"),
            {"now": datetime.now(UTC).replace(tzinfo=None), "key_id": args.key_id},
        )
    print(f"revoked key {args.key_id}; every gateway refuses it within its refresh", file=out)
    return 0


_UNSIGNED_INT_MAX = 2**32 - 1  # the limit columns are INTEGER UNSIGNED


def _positive(value: str) -> int:
    number = int(value)
    if not 0 < number <= _UNSIGNED_INT_MAX:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {_UNSIGNED_INT_MAX}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.auth",
        description="API keys (settings: GATEWAY_AUTH_DATABASE_URL, else GATEWAY_LOG_*).",
    )
    parser.add_argument("--url", help="database URL (default: the gateway's)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("create", help="create a key and print it (once)")
    p.add_argument("--name", required=True, help="who or what the key is for")
    p.add_argument("--rpm", type=_positive, help="requests per minute (default: gateway's)")
    p.add_argument("--tpm", type=_positive, help="tokens per minute (default: gateway's)")
    p.add_argument("--concurrent", type=_positive, help="concurrent requests")
    p.add_argument("--models", help="comma-separated model ids it may use (default: all)")
    p.add_argument(
        "--cache",
        type=_cache_options,
        default=frozenset({"shared"}),
        help="answer cache and coalescing shared with other keys (shared, the default) or the"
        " key's own (key); add near (e.g. --cache near, --cache key,near) to answer an exact"
        " miss from the same photo in another encoding (docs/NEAR_DUPLICATES.md)",
    )
    p = sub.add_parser("list", help="every key: public id, name, dates, limits (never a key)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = sub.add_parser("revoke", help="revoke a key by its public id")
    p.add_argument("key_id")
    sub.add_parser("migrate", help="bring the schema to the newest revision")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out if out is not None else sys.stdout
    url = database_url(args.url)
    if args.command == "migrate":
        upgrade(url)
        print(f"schema at revision {current_revision(url)}", file=out)
        return 0
    if not schema_is_current(url):
        print(
            "the database schema is not at the newest revision: run "
            "`python -m gateway.auth migrate` (or `python -m gateway.interactions migrate`)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    engine = create_sync_engine(url)
    try:
        if args.command == "create":
            return cmd_create(engine, args, out)
        if args.command == "list":
            return cmd_list(engine, args, out)
        return cmd_revoke(engine, args, out)
    finally:
        engine.dispose()
