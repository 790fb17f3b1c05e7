"""The interaction log: one MySQL row per request, written in batches, never lost.

The pipeline builds an ``InteractionRecord`` per request and calls ``writer.submit(record)``;
everything else (batching, poison rows, the spool, replay) happens in the writer's task.
See ``writer.py`` and ``database.py`` for the failure handling and ``spool.py`` for the
spool's guarantees.
Ops CLI: ``python -m gateway.interactions --help``.
"""

from contextlib import AsyncExitStack

from prometheus_client import CollectorRegistry

from gateway.db.engine import create_log_engine
from gateway.interactions.metrics import InteractionLogMetrics
from gateway.interactions.records import (
    CacheOutcome,
    ImageFacts,
    InteractionRecord,
    LoggedImage,
    Shape,
)
from gateway.interactions.settings import InteractionLogSettings
from gateway.interactions.writer import InteractionWriter

__all__ = [
    "CacheOutcome",
    "ImageFacts",
    "InteractionLogMetrics",
    "InteractionLogSettings",
    "InteractionRecord",
    "InteractionWriter",
    "LoggedImage",
    "Shape",
    "open_interaction_writer",
]


async def open_interaction_writer(
    settings: InteractionLogSettings, registry: CollectorRegistry, stack: AsyncExitStack
) -> InteractionWriter:
    """The started writer (and its engine when the log is on), closed by ``stack``: the
    queue is written or spooled before the engine is disposed."""
    engine = None
    if settings.enabled:
        engine = create_log_engine(
            settings.database_url.get_secret_value(),
            connect_timeout_s=settings.connect_timeout_s,
            prepared_statements=True,
        )
        stack.push_async_callback(engine.dispose)
    writer = InteractionWriter(engine, settings, InteractionLogMetrics(registry))
    await writer.start()
    stack.push_async_callback(writer.close)
    return writer
