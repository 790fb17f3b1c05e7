"""Content moderation: a policy of terms and patterns (Chinese and English) applied to
prompts and answers, and an optional check of images by the served model itself."""

from __future__ import annotations

import asyncio
import logging

from gateway.metrics import Metrics
from gateway.moderation.images import AskWorker, ImageVerdicts
from gateway.moderation.policy import Policy, PolicyError, Violation, load_policy
from gateway.moderation.settings import ModerationSettings
from gateway.moderation.stage import AnswerGuard, Moderator, completion_text
from gateway.redis_link import RedisLink

__all__ = [
    "AnswerGuard",
    "ModerationSettings",
    "Moderator",
    "Policy",
    "PolicyError",
    "Violation",
    "completion_text",
    "load_policy",
    "open_moderator",
]

logger = logging.getLogger(__name__)


async def open_moderator(
    settings: ModerationSettings,
    metrics: Metrics,
    ask: AskWorker,
    redis: RedisLink | None,
    namespace: str,
) -> Moderator | None:
    """The moderation stage, or None when moderation is off. ``redis`` (the answer
    cache's link) holds image verdicts; without it every new request's
    images are asked about again."""
    if not settings.enabled:
        return None
    policy = await asyncio.to_thread(load_policy, settings.policy_file)
    logger.info(
        "moderation on: policy %s (%s), image check %s",
        policy.version,
        ",".join(policy.categories),
        "on" if settings.image_check else "off",
    )
    images = None
    if settings.image_check:
        if redis is None:
            logger.warning("moderation image check without Redis: verdicts are not cached")
        client, breaker = redis or (None, None)
        images = ImageVerdicts(settings, ask, metrics, client, breaker, namespace)
    return Moderator(settings, policy, metrics, images)
