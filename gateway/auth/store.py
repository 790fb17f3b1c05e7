"""The gateway's view of the api_keys table: a snapshot in memory, refreshed in the background.

Every replica reloads the whole table every ``refresh_s`` seconds (one indexed-free scan of
a small table), so a revocation reaches every replica within that interval without any
cross-replica messaging. A key created after the last refresh is looked up once by its
public id; an id that is not there is remembered as unknown for ``negative_cache_s`` so a
flood of made-up keys costs one query each per window, not one per request. When MariaDB
is down the last snapshot keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.auth.keys import matches, parse_key_id
from gateway.auth.settings import AuthSettings
from gateway.background import cancel_task

log = logging.getLogger("gateway.auth")

FailureReason = Literal["missing", "malformed", "unknown", "revoked", "wrong_secret"]

_COLUMNS: Final = (
    "key_id, name, key_hash, revoked_at IS NOT NULL AS revoked, requests_per_minute, "
    "tokens_per_minute, max_concurrent, allowed_models, cache_scope, cache_near"
)
_ALL_KEYS: Final = text(f"SELECT {_COLUMNS} FROM api_keys")
_ONE_KEY: Final = text(f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = :key_id")
# At most this many lookups of unknown ids run at once: the rest wait their turn.
_LOOKUP_CONCURRENCY: Final = 4


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One api_keys row, as the gateway needs it (never the key itself)."""

    key_id: str
    name: str
    key_hash: bytes
    revoked: bool
    requests_per_minute: int | None
    tokens_per_minute: int | None
    max_concurrent: int | None
    allowed_models: frozenset[str] | None
    # True: the key's cached answers and coalesced generations are its own.
    private_cache: bool = False
    # True: an exact miss may be answered from a near-duplicate photo (X-Cache: similar).
    near_cache: bool = False

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


class AuthFailure(Exception):
    def __init__(self, reason: FailureReason) -> None:
        super().__init__(reason)
        self.reason = reason


class AuthUnavailable(Exception):
    """The key is not in the snapshot and the database could not be asked."""


def _record(row: Any) -> KeyRecord:
    models = row.allowed_models
    if isinstance(models, str | bytes):
        models = json.loads(models)
    return KeyRecord(
        key_id=str(row.key_id),
        name=str(row.name),
        key_hash=bytes(row.key_hash),
        revoked=bool(row.revoked),
        requests_per_minute=row.requests_per_minute,
        tokens_per_minute=row.tokens_per_minute,
        max_concurrent=row.max_concurrent,
        allowed_models=None if models is None else frozenset(str(m) for m in models),
        private_cache=row.cache_scope == "key",
        near_cache=bool(row.cache_near),
    )


class KeyStore:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: AuthSettings,
        on_refresh: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._on_refresh = on_refresh
        self._clock = clock
        self._keys: dict[str, KeyRecord] = {}
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._lookups = asyncio.Semaphore(_LOOKUP_CONCURRENCY)
        self._task: asyncio.Task[None] | None = None
        self.loaded = False

    async def authenticate(self, token: str | None) -> KeyRecord:
        """The key's record, or AuthFailure saying why not (AuthUnavailable: ask later)."""
        if token is None:
            raise AuthFailure("missing")
        key_id = parse_key_id(token)
        if key_id is None:
            raise AuthFailure("malformed")
        record = self._keys.get(key_id)
        if record is None:
            record = await self._lookup(key_id)
        if not matches(token, record.key_hash):
            raise AuthFailure("wrong_secret")
        if record.revoked:
            raise AuthFailure("revoked")
        return record

    async def find(self, key_id: str) -> KeyRecord:
        """A key's record by its public id, without its secret: a batch owner's, for the
        lines the batch runner sends on its behalf (gateway/batch/lane.py)."""
        record = self._keys.get(key_id) or await self._lookup(key_id)
        if record.revoked:
            raise AuthFailure("revoked")
        return record

    async def _lookup(self, key_id: str) -> KeyRecord:
        if self._known_unknown(key_id):
            raise AuthFailure("unknown")
        async with self._lookups:
            record = self._keys.get(key_id)  # another lookup or a refresh may have found it
            if record is not None:
                return record
            if self._known_unknown(key_id):
                raise AuthFailure("unknown")
            try:
                async with asyncio.timeout(self._settings.lookup_timeout_s):
                    async with self._engine.connect() as conn:
                        row = (await conn.execute(_ONE_KEY, {"key_id": key_id})).first()
            except Exception as exc:
                log.warning("api key lookup failed: %s", type(exc).__name__)
                raise AuthUnavailable from None
        if row is None:
            self._remember_unknown(key_id)
            raise AuthFailure("unknown")
        record = _record(row)
        self._keys[key_id] = record
        return record

    def _known_unknown(self, key_id: str) -> bool:
        until = self._unknown.get(key_id)
        if until is None:
            return False
        if self._clock() < until:
            return True
        del self._unknown[key_id]
        return False

    def _remember_unknown(self, key_id: str) -> None:
        if self._settings.negative_cache_s <= 0:
            return
        self._unknown[key_id] = self._clock() + self._settings.negative_cache_s
        self._unknown.move_to_end(key_id)
        while len(self._unknown) > self._settings.negative_cache_size:
            self._unknown.popitem(last=False)

    async def refresh(self) -> bool:
        """Reload the snapshot; False (and the old snapshot kept) when the database fails."""
        try:
            async with asyncio.timeout(self._settings.lookup_timeout_s):
                async with self._engine.connect() as conn:
                    rows = (await conn.execute(_ALL_KEYS)).all()
        except Exception as exc:
            log.warning("api key refresh failed, serving the last snapshot: %s", type(exc).__name__)
            ok = False
        else:
            self._keys = {record.key_id: record for record in map(_record, rows)}
            # A key created since is found by the next lookup, not refused from the cache.
            self._unknown = OrderedDict(
                (key_id, until) for key_id, until in self._unknown.items()
                if key_id not in self._keys
            )  # fmt: skip
            self.loaded = ok = True
        if self._on_refresh is not None:
            self._on_refresh(ok)
        return ok

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_loop(), name="api-key-refresh")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_task(task)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.refresh_s)
            await self.refresh()
