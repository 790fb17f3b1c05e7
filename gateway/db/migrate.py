"""Alembic, driven from Python: the configuration is found next to this file, so migrations
run the same from any working directory (the CLI, ``make up``, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL

from gateway.db.engine import create_sync_engine, sync_url

HERE = Path(__file__).resolve().parent
ALEMBIC_INI = HERE / "alembic.ini"
MIGRATIONS = HERE / "migrations"


def alembic_config(url: str | URL) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(MIGRATIONS))
    # The URL travels as an attribute, not through the ini parser (no %-interpolation of
    # passwords) and never into a log line.
    config.attributes["database_url"] = sync_url(url)
    config.attributes["configure_logging"] = False
    return config


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Run the migrations up to ``revision`` (Alembic's ``upgrade head`` by default)."""
    command.upgrade(alembic_config(url), revision)


def current_revision(url: str | URL) -> str | None:
    """The database's Alembic revision, or None before the first migration."""
    engine = create_sync_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    """The newest revision the migrations define (what ``upgrade`` reaches)."""
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()
