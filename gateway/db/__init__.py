"""The gateway's database layer: models, engine factory and Alembic migrations.

Only the interaction log uses MySQL. Migrations live beside the models
(``gateway/db/migrations``, configured by ``gateway/db/alembic.ini``) so they run from any
working directory: ``python -m gateway.interactions migrate`` or
``alembic -c gateway/db/alembic.ini upgrade head``; from Python, ``gateway.db.migrate.upgrade``
(kept out of this module so the gateway does not import Alembic at start-up).
"""

from gateway.db.engine import (
    async_url,
    create_database_if_missing,
    create_log_engine,
    create_sync_engine,
    sync_url,
)
from gateway.db.models import Base, Interaction, InteractionImage

__all__ = [
    "Base",
    "Interaction",
    "InteractionImage",
    "async_url",
    "create_database_if_missing",
    "create_log_engine",
    "create_sync_engine",
    "sync_url",
]
