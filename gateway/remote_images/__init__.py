"""Remote image URLs: the gateway fetches allow-listed images itself, safely, and hands the
worker the checked bytes as a data URI (so a worker never fetches anything)."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from gateway.metrics import Metrics
from gateway.remote_images.fetcher import (
    RemoteImageFetcher,
    create_fetch_session,
    fetch_remote_references,
)
from gateway.remote_images.resolver import HostLookup
from gateway.remote_images.settings import RemoteImageSettings

__all__ = ["RemoteImageFetcher", "RemoteImageSettings", "fetch_remote_references", "open_fetcher"]

logger = logging.getLogger(__name__)


def open_fetcher(
    settings: RemoteImageSettings,
    max_body_bytes: int,
    metrics: Metrics,
    stack: AsyncExitStack,
    lookup: HostLookup | None = None,
) -> RemoteImageFetcher | None:
    """The fetcher with its own HTTP session (closed by ``stack``), or None when disabled."""
    if not settings.enabled:
        return None
    if not settings.allowed_hosts:
        logger.warning(
            "remote images are enabled but GATEWAY_REMOTE_IMAGES_ALLOWED_HOSTS is empty: "
            "every image URL will be refused"
        )
    else:
        logger.info(
            "remote images enabled for hosts %s on ports %s",
            ",".join(settings.allowed_hosts),
            ",".join(map(str, settings.allowed_ports)) or "any",
        )
    session = create_fetch_session(settings, lookup)
    stack.push_async_callback(session.close)
    max_bytes = settings.effective_max_bytes(max_body_bytes)
    return RemoteImageFetcher(session, settings, max_bytes, metrics)
