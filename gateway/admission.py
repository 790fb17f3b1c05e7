"""Who may ask, and how often: API keys and per-key rate limits on every /v1/* request.

A pure ASGI middleware, inside the request id and the interaction log (so refusals are
logged with their id) and outside everything else. Before the route runs it
authenticates the key (401), takes a concurrency slot and charges one request against
requests-per-minute (429); it releases the slot when the route returns, which for a stream
is when its last byte is sent or the client has gone, or, when the request started a
generation that outlives it (a coalescing leader whose client left generates on for its
waiters), when that generation ends: a key's concurrency limit bounds its generations.
Tokens per minute need the validated request (image sizes), so the pipeline charges them
through the request's :class:`Admission`, and checks the key's allowed models (403) there
too.

Every answer on /v1/* carries OpenAI's x-ratelimit-* headers for the limits it was
checked against. When the limiter's Redis fails, each replica applies the limits in its
own memory (fail-open, the default; GATEWAY_RATELIMIT_LOCAL_FALLBACK=false skips them) or
the request is refused with 503 (GATEWAY_RATELIMIT_FAIL_OPEN=false).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth import AuthFailure, AuthUnavailable, KeyRecord, KeyStore, bearer_token
from gateway.batch.lane import BatchLine, batch_line_of
from gateway.config import Settings
from gateway.db.engine import create_log_engine
from gateway.errors import ErrorCode, GatewayError, error_headers
from gateway.interactions.draft import draft_of
from gateway.loop_lag import LoopLag
from gateway.metrics import Metrics
from gateway.middleware import request_header
from gateway.ratelimit import (
    ConcurrencyLimiter,
    LimiterUnavailable,
    LimitKind,
    RateLimitSettings,
    Window,
    WindowLimiter,
    retry_after_s,
)
from gateway.redis_link import check_cluster_setting, redis_breaker, redis_client, socket_timeout

log = logging.getLogger("gateway.admission")

STATE_KEY: Final = "admission"
GUARDED_PREFIX: Final = "/v1/"


def _duration(seconds: float) -> str:
    """OpenAI's reset format: 850ms, 12s, 1m5s."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


@dataclass(slots=True)
class Admission:
    """What admission knows about one request; the pipeline reads and adds to it."""

    control: AdmissionControl
    key: KeyRecord | None = None  # None: authentication is off
    windows: dict[LimitKind, Window] = field(default_factory=dict)
    lease: str | None = None
    holds: int = 0  # generations of this request that keep its slot (hold())
    returned: bool = False  # the route has returned

    def hold(self) -> Callable[[], Awaitable[None]]:
        """Keep the concurrency slot past the route's return until the returned callable
        is awaited (by a generation that outlives its request, at its end)."""
        self.holds += 1
        done = False

        async def let_go() -> None:
            nonlocal done
            if done:
                return
            done = True
            self.holds -= 1
            if self.holds == 0 and self.returned:
                await self.control.release(self)

        return let_go

    def check_model(self, model: str | None) -> None:
        """403 when the key may not use this model."""
        if self.key is not None and model is not None and not self.key.may_use(model):
            raise GatewayError(
                ErrorCode.MODEL_NOT_PERMITTED,
                "This API key may not use the requested model.",
                param="model",
            )

    async def charge_tokens(self, cost: int) -> None:
        """Charge the request's estimated tokens against tokens-per-minute (429 if over)."""
        await self.control.charge_tokens(self, cost)

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        for kind in ("requests", "tokens"):
            window = self.windows.get(kind)
            if window is None:
                continue
            for name, value in (
                ("limit", str(window.limit)),
                ("remaining", str(window.remaining)),
                ("reset", _duration(window.reset_s)),
            ):
                headers.append((f"x-ratelimit-{name}-{kind}".encode(), value.encode()))
        return headers


def admission_of(state: object) -> Admission | None:
    value = state.get(STATE_KEY) if isinstance(state, dict) else getattr(state, STATE_KEY, None)
    return value if isinstance(value, Admission) else None


class AdmissionControl:
    """The lifespan's services for admission: key store and limiters (None when off)."""

    def __init__(
        self,
        metrics: Metrics,
        settings: RateLimitSettings,
        store: KeyStore | None,
        windows: WindowLimiter | None,
        concurrency: ConcurrencyLimiter | None,
    ) -> None:
        self._metrics = metrics
        self._settings = settings
        self._store = store
        self._windows = windows
        self._concurrency = concurrency

    async def admit(
        self, admission: Admission, authorization: str | None, line: BatchLine | None = None
    ) -> None:
        if self._store is None:
            return
        try:
            if line is None:
                admission.key = await self._store.authenticate(bearer_token(authorization))
            elif line.key_id is not None:
                # A batch line (gateway/batch/lane.py): the batch owner's key, for its model
                # permissions; not its online limits (the runner paces its batches).
                admission.key = await self._store.find(line.key_id)
        except AuthFailure as failure:
            self._metrics.auth_failures.labels(failure.reason).inc()
            if failure.reason == "missing" and _other_scheme(authorization):
                raise GatewayError(
                    ErrorCode.INVALID_AUTHORIZATION_SCHEME,
                    "The Authorization header must use the Bearer scheme: send the key as "
                    "'Authorization: Bearer <key>'.",
                ) from None
            if failure.reason == "missing":
                raise GatewayError(
                    ErrorCode.MISSING_API_KEY,
                    "An API key is required: send it as 'Authorization: Bearer <key>'.",
                ) from None
            raise GatewayError(
                ErrorCode.INVALID_API_KEY, "The API key is invalid or has been revoked."
            ) from None
        except AuthUnavailable:
            self._metrics.auth_failures.labels("unavailable").inc()
            raise GatewayError(
                ErrorCode.AUTH_UNAVAILABLE, "The API key could not be checked; try again."
            ) from None
        # The slot first: a request refused for concurrency uses no request unit (a refused
        # request unit's slot is given back by the middleware, which always releases).
        # Both in one Redis round trip; while Redis cannot be asked, each on its own, in
        # this replica's memory or not at all, as configured.
        key = admission.key
        if key is None or line is not None or self._windows is None or self._concurrency is None:
            return
        slots = self._limit(key, "concurrent")
        try:
            lease, window = await self._concurrency.admit(
                key.key_id, slots, self._limit(key, "requests")
            )
        except LimiterUnavailable:
            await self._take_slot(admission)
            await self._charge_requests(admission)
            return
        if window is None:
            self._refuse("concurrent", 1, slots, 1, key.key_id)
        else:
            admission.windows["requests"] = window
            if lease is None:
                self._refuse("requests", retry_after_s(window, 1), window.limit, 1, key.key_id)
            admission.lease = lease

    def _limit(self, key: KeyRecord, kind: LimitKind) -> int:
        defaults = self._settings
        if kind == "requests":
            return key.requests_per_minute or defaults.requests_per_minute
        if kind == "tokens":
            return key.tokens_per_minute or defaults.tokens_per_minute
        return key.max_concurrent or defaults.max_concurrent

    async def _charge(self, admission: Admission, kind: LimitKind, cost: int) -> None:
        key = admission.key
        if key is None or self._windows is None:
            return
        limit = self._limit(key, kind)
        try:
            window = await self._windows.hit(kind, key.key_id, limit, cost)
        except LimiterUnavailable:
            self._unavailable(kind)
            if not self._settings.local_fallback:
                return
            window = await self._windows.hit_locally(kind, key.key_id, limit, cost)
        admission.windows[kind] = window
        if not window.allowed:
            self._refuse(kind, retry_after_s(window, cost), window.limit, cost, key.key_id)

    async def _charge_requests(self, admission: Admission) -> None:
        await self._charge(admission, "requests", 1)

    async def charge_tokens(self, admission: Admission, cost: int) -> None:
        await self._charge(admission, "tokens", cost)

    async def _take_slot(self, admission: Admission) -> None:
        key = admission.key
        if key is None or self._concurrency is None:
            return
        limit = self._limit(key, "concurrent")
        try:
            lease, _ = await self._concurrency.acquire(key.key_id, limit)
        except LimiterUnavailable:
            self._unavailable("concurrent")
            if not self._settings.local_fallback:
                return
            lease, _ = self._concurrency.acquire_locally(key.key_id, limit)
        if lease is None:
            self._refuse("concurrent", 1, limit, 1, key.key_id)
        admission.lease = lease

    async def release(self, admission: Admission) -> None:
        admission.returned = True
        if admission.holds:
            return  # a generation it started still runs: its end gives the slot back
        if admission.lease is not None and self._concurrency is not None:
            lease, admission.lease = admission.lease, None
            await self._concurrency.release(lease)

    def _unavailable(self, kind: LimitKind) -> None:
        self._metrics.rate_limiter_errors.labels(kind).inc()
        if not self._settings.fail_open:
            raise GatewayError(
                ErrorCode.RATE_LIMITER_UNAVAILABLE,
                "Rate limits cannot be checked right now; try again shortly.",
                retry_after_s=max(1, round(self._settings.breaker_open_s)),
            )

    def _refuse(
        self, kind: LimitKind, retry_after: int, limit: int, cost: int, key_id: str
    ) -> None:
        self._metrics.rate_limited.labels(kind).inc()
        self._metrics.key_rate_limited.labels(self._metrics.key_label(key_id), kind).inc()
        if kind == "concurrent":
            message = f"Too many concurrent requests for this API key (limit {limit})."
        elif cost > limit:
            raise GatewayError(
                ErrorCode.REQUEST_EXCEEDS_TOKEN_LIMIT,
                f"This request's estimated {cost} tokens exceed this API key's limit of "
                f"{limit} tokens per minute, so it can never be served: lower max_tokens, "
                "send fewer or smaller images (detail: low) or a shorter prompt, or ask "
                "for a higher limit.",
            )
        else:
            message = f"Rate limit reached: {limit} {kind} per minute for this API key."
        raise GatewayError(ErrorCode.RATE_LIMIT_EXCEEDED, message, retry_after_s=retry_after)


def _other_scheme(authorization: str | None) -> bool:
    """An Authorization header that is there but is not 'Bearer <key>' ('Token <key>')."""
    scheme = (authorization or "").strip().partition(" ")[0]
    return bool(scheme) and scheme.lower() != "bearer"


class AdmissionSlot:
    """Where the middleware finds the control once the lifespan has built it."""

    def __init__(self) -> None:
        self.control: AdmissionControl | None = None


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, slot: AdmissionSlot, metrics: Metrics) -> None:
        self.app = app
        self.slot = slot
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        control = self.slot.control
        if (
            scope["type"] != "http"
            or control is None
            or not str(scope["path"]).startswith(GUARDED_PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        admission = Admission(control)
        state = scope.setdefault("state", {})
        state[STATE_KEY] = admission
        try:
            try:
                await control.admit(
                    admission, request_header(scope, b"authorization"), batch_line_of(state)
                )
            except GatewayError as error:
                self._note_key(state, admission)
                await self._refuse(send, error, admission)
                return
            finally:
                if admission.key is not None:  # authenticated, refused for a limit or not
                    key = self.metrics.key_label(admission.key.key_id)
                    self.metrics.key_requests.labels(key).inc()
            self._note_key(state, admission)

            async def send_with_headers(message: Message) -> None:
                if message["type"] == "http.response.start":
                    headers = [*message.get("headers", ()), *admission.headers()]
                    message = {**message, "headers": headers}
                await send(message)

            await self.app(scope, receive, send_with_headers)
        finally:
            await control.release(admission)

    @staticmethod
    def _note_key(state: dict[str, object], admission: Admission) -> None:
        draft = draft_of(state)
        if draft is not None and admission.key is not None:
            draft.api_key_id = admission.key.key_id  # the public id, never the key

    async def _refuse(self, send: Send, error: GatewayError, admission: Admission) -> None:
        self.metrics.errors.labels(error.code.value).inc()
        body = error.body()
        headers = [
            *error_headers(error),
            *admission.headers(),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def open_admission(
    settings: Settings, metrics: Metrics, stack: AsyncExitStack, lag: LoopLag | None = None
) -> AdmissionControl:
    """Key store and limiters for the lifespan; everything closed by ``stack``. ``lag``:
    the event loop's lag, which the limiter's Redis deadline does not count."""
    auth, limits = settings.auth, settings.ratelimit
    if not auth.enabled:
        log.warning(
            "API-key authentication is OFF (GATEWAY_AUTH_ENABLED=false): anyone who can "
            "reach this gateway may use it, with no rate limits. For development only."
        )
        return AdmissionControl(metrics, limits, None, None, None)
    url = (auth.database_url or settings.log.database_url).get_secret_value()
    engine = create_log_engine(url, connect_timeout_s=auth.connect_timeout_s)
    stack.push_async_callback(engine.dispose)
    store = KeyStore(
        engine,
        auth,
        on_refresh=lambda ok: metrics.auth_key_refreshes.labels("ok" if ok else "failed").inc(),
    )
    await store.start()
    stack.push_async_callback(store.stop)
    if not limits.enabled:
        return AdmissionControl(metrics, limits, store, None, None)
    redis_url = limits.redis_url or settings.redis_url
    cluster = settings.redis_cluster if limits.redis_cluster is None else limits.redis_cluster
    own = limits.redis_url is not None or limits.redis_cluster is not None
    setting = "GATEWAY_RATELIMIT_REDIS_CLUSTER" if own else "GATEWAY_REDIS_CLUSTER"
    timeout = limits.socket_timeout_s
    await check_cluster_setting(redis_url, cluster, setting, timeout)
    backstop = socket_timeout(timeout)
    redis = redis_client(
        redis_url, cluster, socket_timeout=backstop, socket_connect_timeout=backstop
    )
    stack.push_async_callback(redis.aclose)
    breaker = redis_breaker(
        timeout,
        limits.breaker_open_s,
        settings.redis_breaker_failures,
        lag,
        on_state_change=lambda state: metrics.rate_limiter_breaker_state.set(int(state)),
    )
    namespace = settings.cache_namespace
    windows = WindowLimiter(redis, namespace, breaker)
    concurrency = ConcurrencyLimiter(redis, namespace, breaker, limits.lease_ttl_s)
    await concurrency.start()
    stack.push_async_callback(concurrency.stop)
    return AdmissionControl(metrics, limits, store, windows, concurrency)
