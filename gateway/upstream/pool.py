"""The worker pool: health, load, passive ejection, and the choice of worker for a request.

Built from a static list (``GATEWAY_WORKER_URLS``) plus the workers DNS names lead to
(``GATEWAY_WORKER_DNS``, discovery.py), looked up again every
``discovery_interval_s``: workers that appear are health-checked before they get traffic,
workers that disappear get none (their open streams finish). With named pools
(``GATEWAY_WORKER_POOLS``, a canary beside the stable build) each pool has its own URLs
and names, and a request first gets a pool by weight (weights.py), then a worker in it.
A background task polls every worker:
``/health`` (active health check), ``/v1/models`` (now and then), and ``/metrics`` for the
load vLLM reports (``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
``vllm:kv_cache_usage_perc``); a Triton pool's on Triton's endpoints (kserve/engine.py).

A health check's timeout counts only time this replica's event loop was responsive
(gateway/loop_lag.py): an answer that waited in the socket while the loop was held leaves
the worker as it was, instead of marking every worker down and cutting their streams.

A worker is *available* when its last health check passed and its circuit breaker (passive
ejection after consecutive failed exchanges, half-open probes with real requests) is not
open. Among available workers the choice is:

* without an affinity key: the least-loaded, ties broken round-robin;
* with one (the first image's digest): the worker ranked first by rendezvous hashing over
  the available workers, so repeats of a photo meet the worker whose multimodal cache holds
  it, unless its load exceeds the least-loaded one's by more than
  ``affinity_max_extra_load``; then the least-loaded.

Load is what the worker last reported (all gateways' traffic) or this gateway's own
requests in flight to it, whichever is larger: the report lags by a poll interval, the
local count does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import time
from collections.abc import Collection
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from gateway.background import cancel_task
from gateway.breaker import BreakerState, CircuitBreaker
from gateway.config import Settings
from gateway.errors import ErrorCode, GatewayError
from gateway.loop_lag import LagAwareDeadline, LoopLag, LoopStalled
from gateway.metrics import DEFAULT_POOL, Metrics
from gateway.upstream.bodies import read_limited
from gateway.upstream.discovery import DnsDiscovery, Resolve, resolve_addresses
from gateway.upstream.kserve.engine import TritonEngine
from gateway.upstream.load import Load, parse_load
from gateway.upstream.weights import WeightedRoundRobin

log = logging.getLogger("gateway.upstream.pool")

# How often a healthy worker's model list is refreshed (it changes only on restart).
_MODELS_REFRESH_S = 30.0
# The worker's /metrics body we read at most (vLLM's is some tens of KB).
_METRICS_BODY_LIMIT = 4 * 1024 * 1024


# Every reason choose() counts a choice under: a worker that leaves takes its series along.
CHOICE_REASONS = ("least_loaded", "affinity", "affinity_overflow")


def auth_headers(settings: Settings) -> dict[str, str]:
    if settings.worker_api_key is None:
        return {}
    return {"Authorization": f"Bearer {settings.worker_api_key.get_secret_value()}"}


@dataclass(eq=False)
class Worker:
    url: str
    breaker: CircuitBreaker
    pool: str = DEFAULT_POOL  # the named pool it serves in (canary rollouts)
    healthy: bool = False
    models: tuple[dict[str, Any], ...] = ()
    # Model id -> vLLM's `root` (checkpoint path or hub id): what answers under that name.
    roots: dict[str, str] = field(default_factory=dict)
    models_fetched_at: float = 0.0
    # Load as the worker last reported it (None: never read).
    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0
    load_read_at: float | None = None
    # This gateway's exchanges with the worker now open (streams until they end).
    in_flight: int = 0
    # Attempts waiting for their answer (or first chunk): told when a health check fails,
    # so that a hung worker's requests move elsewhere instead of waiting for a timeout.
    down_waiters: set[asyncio.Future[None]] = field(default_factory=set)
    engine: TritonEngine | None = None  # a Triton pool's (None: vLLM's OpenAI server)
    # Alive but not ready (a Triton worker loading or draining): it finishes what it has
    # (its attempts are not abandoned) and gets nothing new.
    draining: bool = False

    @property
    def available(self) -> bool:
        return self.healthy and not self.draining and self.breaker.state is not BreakerState.OPEN

    @property
    def load(self) -> float:
        return max(self.running + self.waiting, float(self.in_flight))

    @property
    def queued(self) -> float:
        """Requests waiting at the worker: what it last reported, or this replica's own
        requests to it beyond those it runs, whichever is larger (a report lags by a poll,
        and a burst must not pile up behind a stale one)."""
        return max(self.waiting, self.in_flight - self.running)


def _rendezvous_score(key: str, url: str) -> bytes:
    return hashlib.blake2b(f"{key}|{url}".encode(), digest_size=8).digest()


@dataclass(eq=False)
class WorkerPool:
    """The configured workers, their health and load, and the choice of worker."""

    session: aiohttp.ClientSession
    settings: Settings
    metrics: Metrics
    resolve: Resolve = resolve_addresses
    lag: LoopLag | None = None  # the replica's event-loop lag, which health timeouts excuse
    workers: list[Worker] = field(init=False, default_factory=list)
    _turn: itertools.count[int] = field(init=False, default_factory=itertools.count)
    _task: asyncio.Task[None] | None = field(init=False, default=None)
    # (pool name, its DNS names' discovery), for every pool that has names.
    _discoveries: list[tuple[str, DnsDiscovery]] = field(init=False, default_factory=list)
    _discovered_at: float = field(init=False, default=float("-inf"))
    _picker: WeightedRoundRobin = field(init=False)
    _static: list[tuple[str, str]] = field(init=False, default_factory=list)
    _engines: dict[str, TritonEngine] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        specs = self.settings.pools()
        self._engines = {s.name: TritonEngine(s.triton) for s in specs if s.triton is not None}
        self._picker = WeightedRoundRobin({spec.name: spec.weight for spec in specs})
        self._static = [(url, spec.name) for spec in specs for url in spec.urls]
        self._set_workers(self._static)
        self._discoveries = [
            (spec.name, DnsDiscovery(spec.dns, self.resolve)) for spec in specs if spec.dns
        ]

    def _set_workers(self, members: Collection[str | tuple[str, str]]) -> None:
        """The pool becomes exactly ``members`` (URLs, or (URL, pool name) pairs), keeping the
        state of workers it already had."""
        wanted: dict[str, str] = {}
        for member in members:
            url, pool = (member, DEFAULT_POOL) if isinstance(member, str) else member
            wanted.setdefault(url, pool)
        current = {w.url: w for w in self.workers}
        for url in {u for u, w in current.items() if wanted.get(u) != w.pool}:
            log.info("worker %s left the pool", url)
            for gauge in (self.metrics.worker_healthy, self.metrics.worker_breaker_state):
                gauge.remove(url)
            self.metrics.worker_left(url, current[url].pool)
            for kind in ("running", "waiting", "kv_cache_usage"):
                with contextlib.suppress(KeyError):
                    self.metrics.worker_load.remove(url, kind)
            for reason in CHOICE_REASONS:
                with contextlib.suppress(KeyError):
                    self.metrics.worker_choices.remove(url, reason)
        workers = []
        for url, pool in wanted.items():
            worker = current.get(url)
            if worker is None or worker.pool != pool:
                worker = self._new_worker(url, pool)
                self.metrics.worker_healthy.labels(url).set(0)
                self.metrics.worker_breaker_state.labels(url).set(0)
                self.metrics.worker_joined(url, worker.pool)
                log.info("worker %s joined the pool", url)
            workers.append(worker)
        self.workers = workers

    async def discover(self) -> None:
        """Look the DNS names up again and follow their answers."""
        if not self._discoveries:
            return
        self._discovered_at = time.monotonic()
        found = await asyncio.gather(*(discovery.urls() for _, discovery in self._discoveries))
        pools = [pool for pool, _ in self._discoveries]
        members = [(url, pool) for pool, urls in zip(pools, found, strict=True) for url in urls]
        self._set_workers([*self._static, *members])

    def _new_worker(self, url: str, pool: str = DEFAULT_POOL) -> Worker:
        def on_state(state: BreakerState) -> None:
            self.metrics.worker_breaker_state.labels(url).set(int(state))
            if state is BreakerState.OPEN:
                log.warning("worker %s ejected after repeated failures", url)
            elif state is BreakerState.CLOSED:
                log.info("worker %s readmitted", url)

        breaker = CircuitBreaker(
            self.settings.worker_breaker_open_s,
            failure_threshold=self.settings.worker_breaker_failures,
            on_state_change=on_state,
        )
        return Worker(url, breaker, pool, engine=self._engines.get(pool))

    # -- choice ------------------------------------------------------------------------------

    def choose(
        self,
        affinity_key: str | None = None,
        exclude: Collection[Worker] = (),
        *,
        admit: bool = False,
        pool: str | None = None,
    ) -> Worker:
        """The worker for the next attempt of a request, in ``pool`` when that pool has one
        to offer (the pool its cache key was planned for), else in the pool that
        ``pick_pool`` gives.

        Raises GatewayError: NO_HEALTHY_WORKER when no worker is available (fast, with
        Retry-After), OVERLOADED when ``admit`` and every available worker's queue
        (``Worker.queued``) is over ``admission_max_waiting``.
        """
        candidates = [w for w in self.workers if w.available and w not in exclude]
        if not candidates and not any(w.available for w in self.workers):
            # Every health check failed: try the workers not ejected by their breakers. A
            # busy worker may answer /health late yet serve; a dead one refuses at once,
            # and its breaker then opens, after which this answer is immediate.
            candidates = [
                w
                for w in self.workers
                if w.breaker.state is not BreakerState.OPEN and w not in exclude
            ]
        if not candidates:
            raise GatewayError(
                ErrorCode.NO_HEALTHY_WORKER,
                "No worker is available; retry shortly.",
                retry_after_s=self.settings.retry_after_s,
            )
        candidates = self._in_one_pool(candidates, pool)
        limit = self.settings.admission_max_waiting
        if admit and limit is not None and all(w.queued > limit for w in candidates):
            raise GatewayError(
                ErrorCode.OVERLOADED,
                "Every worker's queue is full; retry shortly.",
                retry_after_s=self.settings.retry_after_s,
            )
        turn = next(self._turn)
        n = len(candidates)
        # Least-loaded; among equals, the one after the last choice (round-robin).
        least = min(
            range(n),
            key=lambda i: (candidates[i].load, candidates[i].kv_usage, (i - turn) % n),
        )
        best = candidates[least]
        choice = "least_loaded"
        if affinity_key is not None and self.settings.affinity_enabled:
            affine = max(candidates, key=lambda w: _rendezvous_score(affinity_key, w.url))
            if affine.load - best.load <= self.settings.affinity_max_extra_load:
                best, choice = affine, "affinity"
            else:
                choice = "affinity_overflow"
        self.metrics.worker_choices.labels(best.url, choice).inc()
        return best

    def pick_pool(self) -> str | None:
        """The pool for the next request, by weight among pools with an available worker;
        None with a single pool (or none available: choose() then decides)."""
        if len(self._picker.names) < 2:
            return None
        return self._picker.pick({w.pool for w in self.workers if w.available})

    def _in_one_pool(self, candidates: list[Worker], pool: str | None) -> list[Worker]:
        if len(self._picker.names) < 2:
            return candidates
        pools = {w.pool for w in candidates}
        if pool not in pools:
            # The planned pool has nothing left to offer (or none was planned): another
            # pool, by weight, rather than a failed request.
            pool = self._picker.pick(pools)
        return [w for w in candidates if w.pool == pool]

    def pool_of(self, url: str) -> str | None:
        return next((w.pool for w in self.workers if w.url == url), None)

    def mark_failed(self, worker: Worker) -> None:
        """A connection to the worker failed: skip it until its health check passes again."""
        self._set_health(worker, False)

    # -- state for /readyz and /v1/models ---------------------------------------------------

    @property
    def healthy_count(self) -> int:
        return sum(1 for w in self.workers if w.available)

    def model_cards(self) -> list[dict[str, Any]]:
        """Models listed by the workers (healthy ones first), one card per model id."""
        cards: dict[str, dict[str, Any]] = {}
        for worker in sorted(self.workers, key=lambda w: not w.healthy):
            for card in worker.models:
                cards.setdefault(str(card.get("id")), card)
        return list(cards.values())

    def model_root(self, model: str, pool: str | None = None) -> str:
        """What the workers (of ``pool``, when given) serve under a model name (vLLM's
        `root`: checkpoint path or hub id), healthy workers first; empty when none has
        said. Part of every cache key: BF16, FP8 and AWQ builds under one name never share
        answers."""
        for worker in sorted(self.workers, key=lambda w: not w.healthy):
            if pool is None or worker.pool == pool:
                root = worker.roots.get(model)
                if root:
                    return root
        return ""

    def root_of(self, url: str, model: str) -> str | None:
        """The checkpoint the worker at ``url`` serves under a model name (as model_root
        gives it: empty when it has not said); None for a worker no longer in the pool."""
        worker = next((w for w in self.workers if w.url == url), None)
        return None if worker is None else worker.roots.get(model) or ""

    def model_ids(self) -> frozenset[str]:
        return frozenset(str(card.get("id")) for w in self.workers for card in w.models)

    # -- polling -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._poll_forever(), name="worker-health")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_task(task)

    async def poll_once(self) -> None:
        if time.monotonic() - self._discovered_at >= self.settings.discovery_interval_s:
            await self.discover()
        await asyncio.gather(*(self._poll(w) for w in self.workers))

    async def _poll_forever(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.settings.health_interval_s)

    async def _poll(self, worker: Worker) -> None:
        timeout = self.settings.health_timeout_s
        # Given up after five timeouts of wall time, whatever the loop's lag.
        deadline = LagAwareDeadline(timeout, self.lag, 5 * timeout)
        try:
            healthy = await deadline.run(lambda: self._check(worker))
        except LoopStalled:
            log.info("health check of %s skipped: this replica's event loop stalled", worker.url)
            return
        except (aiohttp.ClientError, TimeoutError, ValueError, TypeError) as exc:
            log.debug("health check of %s failed: %r", worker.url, exc)
            healthy = False
        if worker.healthy and not healthy:
            for waiter in worker.down_waiters:
                if not waiter.done():
                    waiter.set_result(None)
        self._set_health(worker, healthy)

    async def _check(self, worker: Worker) -> bool:
        if worker.engine is None:
            return await self._poll_vllm(worker)
        # A Triton worker (kserve/engine.py).
        note = self._note_load if self.settings.load_poll_enabled else None
        return await worker.engine.poll(self.session, worker, note)

    async def _poll_vllm(self, worker: Worker) -> bool:
        async with self.session.get(f"{worker.url}/health") as response:
            healthy = response.status == 200
        stale = time.monotonic() - worker.models_fetched_at > _MODELS_REFRESH_S
        if healthy and (not worker.healthy or not worker.models or stale):
            worker.models, worker.roots = await self._fetch_models(worker)
            worker.models_fetched_at = time.monotonic()
        if healthy and self.settings.load_poll_enabled:
            await self._fetch_load(worker)
        return healthy

    async def _fetch_load(self, worker: Worker) -> None:
        async with self.session.get(
            f"{worker.url}/metrics", headers=auth_headers(self.settings)
        ) as response:
            if response.status != 200:
                return
            raw = await read_limited(response, _METRICS_BODY_LIMIT)
        load = parse_load(raw.decode("utf-8", "replace"))
        if load is not None:
            self._note_load(worker, load)

    def _note_load(self, worker: Worker, load: Load) -> None:
        worker.running, worker.waiting, worker.kv_usage = load
        worker.load_read_at = time.monotonic()
        gauge = self.metrics.worker_load
        gauge.labels(worker.url, "running").set(worker.running)
        gauge.labels(worker.url, "waiting").set(worker.waiting)
        gauge.labels(worker.url, "kv_cache_usage").set(worker.kv_usage)

    async def _fetch_models(
        self, worker: Worker
    ) -> tuple[tuple[dict[str, Any], ...], dict[str, str]]:
        """The worker's public model cards, and each model's checkpoint (vLLM's `root`)."""
        async with self.session.get(
            f"{worker.url}/v1/models", headers=auth_headers(self.settings)
        ) as response:
            if response.status != 200:
                return worker.models, worker.roots
            payload = await response.json()
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            return worker.models, worker.roots
        cards = [card for card in data if isinstance(card, dict) and "id" in card]
        roots = {str(card["id"]): str(card.get("root") or "") for card in cards}
        # Keep the public fields only: vLLM's cards also carry local paths ("root").
        return tuple(
            {
                "id": str(card["id"]),
                "object": "model",
                "created": int(card.get("created", 0)),
                "owned_by": str(card.get("owned_by", "")),
                "max_model_len": card.get("max_model_len"),
            }
            for card in cards
        ), roots

    def _set_health(self, worker: Worker, healthy: bool) -> None:
        if worker.healthy != healthy:
            log.info("worker %s is %s", worker.url, "healthy" if healthy else "unhealthy")
        worker.healthy = healthy
        if worker in self.workers:  # not for one discovery has dropped meanwhile
            self.metrics.worker_healthy.labels(worker.url).set(1 if healthy else 0)


async def open_pool(
    session: aiohttp.ClientSession,
    settings: Settings,
    metrics: Metrics,
    stack: AsyncExitStack,
    lag: LoopLag | None = None,
) -> WorkerPool:
    """The worker pool, polled once before the replica serves (so a fresh replica knows its
    workers and models; bounded by the health timeout when they are down), then kept
    current in the background until ``stack`` closes. Health timeouts excuse ``lag``."""
    pool = WorkerPool(session, settings, metrics, lag=lag)
    await pool.poll_once()
    await pool.start()
    stack.push_async_callback(pool.stop)
    return pool
