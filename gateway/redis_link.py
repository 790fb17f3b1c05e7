"""A Redis client with its circuit breaker, and the exceptions that mean "Redis could not
be used for this call".

One tuple of failures for every Redis user (cache, coalescing, rate limits, image
verdicts): each fails open on exactly these, through its breaker, and lets anything else
surface.

Redis or Redis Cluster (GATEWAY_REDIS_CLUSTER): every user takes a ``RedisClient`` from
``redis_client``. On a cluster each script runs in one hash slot, so every multi-key
script names keys that share a hash tag: an answer, its lease and its channel share the
answer's digest; every limit of an API key shares the key's id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple, TypeAlias

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from gateway.breaker import BreakerState, CircuitBreaker
from gateway.loop_lag import LagAwareDeadline, LoopLag, LoopStalled

# RedisClusterException is not a RedisError: a cluster none of whose nodes answers, or
# whose slots are not all served, raises it, and is an outage like any other.
REDIS_FAILURES: Final = (RedisError, RedisClusterException, OSError, TimeoutError)
# A call gives up after this many deadlines of wall time even when the event loop's own
# stalls explain the wait (uncounted by the breaker: gateway/loop_lag.py).
CAP_DEADLINES: Final = 8

RedisClient: TypeAlias = Redis | RedisCluster

# A failed cluster command is tried once more after the client rereads the slot map (so
# it follows a failover). redis-py's default, ten tries with a pause of 0.25 s after each
# CLUSTERDOWN, would hold a request for seconds before the breaker could open.
_CLUSTER_RETRY: Final = Retry(NoBackoff(), retries=1)


class RedisLink(NamedTuple):
    """A client and the breaker every call through it goes through."""

    client: RedisClient
    breaker: CircuitBreaker


def redis_client(url: str, cluster: bool, **options: Any) -> RedisClient:
    """A client for ``url``; with ``cluster``, a Redis Cluster client that reads the other
    nodes and the slot map from the one ``url`` names (any node will do)."""
    if cluster:
        return RedisCluster.from_url(url, retry=_CLUSTER_RETRY, **options)
    return Redis.from_url(url, **options)


async def subscriber(client: RedisClient) -> PubSub:
    """A connection for (pattern) subscriptions to regular pub/sub channels.

    On a cluster, a PUBLISH on any node reaches every node over the cluster bus, so one
    connection to one node hears every channel. The slot map is read again first: after a
    reconnect the node picked is one the cluster still has."""
    if isinstance(client, RedisCluster):
        await client.aclose()  # forgets the slot map; initialize() reads it again
        await client.initialize()
        return client.pubsub(node=client.get_random_node())
    return client.pubsub()


class Script:
    """A Lua script run by its SHA1 (EVALSHA), so its text is not sent with every call.

    A node that does not know it yet (new, restarted, just promoted) gets it from EVAL,
    which runs it and keeps it: redis-py's own Script sends SCRIPT LOAD to every primary
    of a cluster instead, which fails, and every call with it, while any one is down."""

    def __init__(self, client: RedisClient, text: str) -> None:
        self._client = client
        self._text = text
        self._sha = hashlib.sha1(text.encode()).hexdigest()

    async def __call__(self, keys: Sequence[str], args: Sequence[str | int | bytes]) -> Any:
        try:
            return await self._client.evalsha(self._sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._client.eval(self._text, len(keys), *keys, *args)


class RedisModeMismatch(RuntimeError):
    """GATEWAY_REDIS_CLUSTER (or its rate-limit twin) says the opposite of the server."""


async def check_cluster_setting(url: str, cluster: bool, setting: str, timeout_s: float) -> None:
    """Refuse to start when the server at ``url`` is a cluster node and ``cluster`` is off,
    or the reverse: either mistake fails every call (MOVED, or "cluster support disabled"),
    and the gateway would fail open without a word, with no cache and per-replica limits.
    A server that does not answer has nothing to say: the gateway starts anyway."""
    probe = Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
    )
    try:
        info = await probe.info("cluster")
    except REDIS_FAILURES:
        return
    finally:
        await probe.aclose()
    enabled = bool(info.get("cluster_enabled"))
    if enabled != cluster:
        what = "a Redis Cluster node" if enabled else "not a Redis Cluster node"
        raise RedisModeMismatch(
            f"{setting}={str(cluster).lower()}, but its Redis server is {what}: "
            f"set {setting}={str(enabled).lower()}"
        )


def redis_breaker(
    deadline_s: float,
    open_s: float,
    failures: int,
    lag: LoopLag | None,
    on_state_change: Callable[[BreakerState], None],
) -> CircuitBreaker:
    """The breaker of a Redis client on the request path: each call within ``deadline_s``
    of responsive time; ``failures`` consecutive errors or real timeouts open it."""
    deadline = LagAwareDeadline(deadline_s, lag, CAP_DEADLINES * deadline_s)
    return CircuitBreaker(
        open_s,
        failure_threshold=failures,
        on_state_change=on_state_change,
        deadline=deadline.run,
        excused=(LoopStalled,),
    )


def socket_timeout(deadline_s: float) -> float:
    """The client's own read timeout: a backstop past the breaker's wall-clock cap, for
    calls made outside the breaker (lease renewals)."""
    return CAP_DEADLINES * deadline_s * 1.5
