"""The interaction log: one MySQL row per request, written in batches, never lost.

The pipeline builds an ``InteractionRecord`` per request and calls ``writer.submit(record)``;
everything else (batching, poison rows, the spool, replay) happens in the writer's task.
See ``writer.py`` for the failure handling and ``spool.py`` for the spool's guarantees.
Ops CLI: ``python -m gateway.interactions --help``.
"""

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
]
