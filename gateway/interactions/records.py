"""The interaction record (what the pipeline builds) and its row (what MySQL and the spool hold).

The pipeline builds one ``InteractionRecord`` per request, rejected ones included, with raw
values; the writer turns it into a row off the request path (``to_row``): texts capped, client
IP anonymised, images reduced to digests and sizes, the prompt hashed. A row is a plain
JSON-able dict keyed by column name; the spool stores rows, so a replay needs no settings.

A row MySQL refuses is "poisoned": ``sanitize_row`` makes a version that fits every column
(lone surrogates escaped, strings cut to the column, out-of-range numbers nulled or clamped,
NaN dropped) flagged ``poisoned=1`` with the error; ``minimal_row`` keeps only the identity
and the status, for the rare row that still does not go in.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Literal, Protocol, cast

from pydantic_core import PydanticSerializationError, to_json
from sqlalchemy import JSON, Boolean, Column, Double, Float, Integer, String, Table
from sqlalchemy.dialects.mysql import MEDIUMTEXT, VARBINARY
from sqlalchemy.types import BigInteger, SmallInteger

from gateway.db.models import Interaction
from gateway.interactions.settings import IpMode

Shape = Literal["chat", "vqa", "match"]
CacheOutcome = Literal["hit", "similar", "miss", "coalesced", "bypass", "idempotent"]
Row = dict[str, Any]

USER_AGENT_MAX_CHARS: Final = 512


class ImageFacts(Protocol):
    """What the log keeps of an image; ``gateway.images.ImageInfo`` fits as it is."""

    @property
    def sha256(self) -> str: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def format(self) -> str: ...


@dataclass(frozen=True, slots=True)
class LoggedImage:
    """A plain ImageFacts, for callers (and tests) without a ``gateway.images.ImageInfo``."""

    sha256: str
    size_bytes: int
    width: int
    height: int
    format: str


@dataclass(frozen=True, slots=True, kw_only=True)
class InteractionRecord:
    """One request as the log sees it. Raw values: the writer caps and anonymises.

    Times are epoch milliseconds (``time.time_ns() // 1_000_000``); durations milliseconds.
    ``latency_ms`` defaults to ``finished_at_ms - received_at_ms``. ``api_key_id`` is the
    key's public id, never the key. ``prompt`` is the user's text (for chat, the text parts
    of the messages joined by newlines); ``answer`` the generated text (None when there is
    none). ``cache``: hit, similar (a near-duplicate photo's answer, ``cache_source`` and
    ``cache_distance``), miss, coalesced (shared another request's upstream call), bypass
    (cache unavailable or not cacheable), idempotent (its Idempotency-Key's answer), None
    when the request never reached the cache."""

    request_id: str
    received_at_ms: int
    endpoint: str
    shape: Shape
    status_code: int
    finished_at_ms: int | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    api_key_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    stream: bool = False
    model: str | None = None
    profile: str | None = None
    prompt: str | None = None
    images: tuple[ImageFacts, ...] = ()
    answer: str | None = None
    cache: CacheOutcome | None = None
    cache_source: str | None = None
    cache_distance: int | None = None
    error_type: str | None = None
    error_code: str | None = None
    worker_id: str | None = None
    pool: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    moderation: str | None = None
    upstream_attempts: int | None = None
    # response_format type, the JSON schema's name and SHA-256 (of its compact text, key
    # order kept); the end user's id as HMAC-SHA256; metadata as sent; the non-default
    # feature and bookkeeping options (n, logprobs, tools, store, ...); the tool calls.
    response_format: str | None = None
    schema_name: str | None = None
    schema_sha256: str | None = None
    end_user_sha256: str | None = None
    request_metadata: Mapping[str, str] | None = None
    request_options: Mapping[str, Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    batch_id: str | None = None  # a batch line's batch (gateway/batch/)


@dataclass(frozen=True, slots=True)
class RowPolicy:
    """The settings ``to_row`` needs (from InteractionLogSettings)."""

    prompt_max_chars: int = 8000
    answer_max_chars: int = 8000
    client_ip: IpMode = "truncated"


# Client addresses repeat (one per client, one per proxy): parsing one with ipaddress
# costs about 5 µs, two thirds of a row. The memo keeps the last few thousand, each at most
# _MEMO_ADDRESS_CHARS long (an address is at most 45 characters; longer input is checked
# each time and refused).
_MEMO_ADDRESSES: Final = 4096
_MEMO_ADDRESS_CHARS: Final = 64


def anonymise_ip(address: str | None, mode: IpMode) -> str | None:
    """full: as given; truncated: IPv4 /24, IPv6 /48 (unparsable: None); none: None."""
    if address is None or mode == "none":
        return None
    if mode == "full":
        return address[:45]
    if len(address) <= _MEMO_ADDRESS_CHARS:
        return _truncated_memo(address)
    return _truncated(address)


def _truncated(address: str) -> str | None:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


_truncated_memo: Final = lru_cache(maxsize=_MEMO_ADDRESSES)(_truncated)


def text_sha256(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _finite(value: float | None) -> float | None:
    # NaN and infinities have no SQL literal: the driver would send an unknown identifier.
    return None if value is None or not math.isfinite(value) else float(value)


def _cap(value: str | None, limit: int) -> tuple[str | None, int | None, bool]:
    if value is None:
        return None, None, False
    return value[:limit], len(value), len(value) > limit


def to_row(record: InteractionRecord, policy: RowPolicy) -> Row:
    """The row for one record (cheap: no I/O; safe on any record the types allow)."""
    prompt, prompt_chars, prompt_truncated = _cap(record.prompt, policy.prompt_max_chars)
    answer, answer_chars, answer_truncated = _cap(record.answer, policy.answer_max_chars)
    latency = record.latency_ms
    if latency is None and record.finished_at_ms is not None:
        latency = float(record.finished_at_ms - record.received_at_ms)
    images = [
        {"digest": image.sha256, "bytes": image.size_bytes, "width": image.width,
         "height": image.height, "format": image.format}
        for image in record.images
    ]  # fmt: skip
    return {
        "request_id": record.request_id,
        "api_key_id": record.api_key_id,
        "client_ip": anonymise_ip(record.client_ip, policy.client_ip),
        "user_agent": None
        if record.user_agent is None
        else record.user_agent[:USER_AGENT_MAX_CHARS],
        "received_at_ms": record.received_at_ms,
        "finished_at_ms": record.finished_at_ms,
        "latency_ms": _finite(latency),
        "ttft_ms": _finite(record.ttft_ms),
        "endpoint": record.endpoint,
        "shape": record.shape,
        "stream": int(record.stream),
        "model": record.model,
        "profile": record.profile,
        "prompt": prompt,
        "prompt_chars": prompt_chars,
        "prompt_truncated": int(prompt_truncated),
        "prompt_sha256": None if record.prompt is None else text_sha256(record.prompt),
        "images": images or None,
        "image_count": len(images),
        "answer": answer,
        "answer_chars": answer_chars,
        "answer_truncated": int(answer_truncated),
        "cache": record.cache,
        "cache_source": record.cache_source,
        "cache_distance": record.cache_distance,
        "status_code": record.status_code,
        "error_type": record.error_type,
        "error_code": record.error_code,
        "worker_id": record.worker_id,
        "pool": record.pool,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "moderation": record.moderation,
        "upstream_attempts": record.upstream_attempts,
        "response_format": record.response_format,
        "schema_name": record.schema_name,
        "schema_sha256": record.schema_sha256,
        "end_user_sha256": record.end_user_sha256,
        "request_metadata": dict(record.request_metadata) if record.request_metadata else None,
        "request_options": dict(record.request_options) if record.request_options else None,
        "tool_calls": record.tool_calls,
        "batch_id": record.batch_id,
        "poisoned": 0,
        "poison_error": None,
    }


# --- the columns, as the model defines them ----------------------------------------------

_Kind = Literal["bytes", "chars", "int", "float", "bool", "json"]


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    name: str
    kind: _Kind
    nullable: bool
    limit: int = 0  # bytes or characters
    low: int = 0
    high: int = 0
    default: Any = None  # for NOT NULL columns that a row may lack


def _int_range(column_type: Integer) -> tuple[int, int]:
    big = 64 if isinstance(column_type, BigInteger) else 32
    bits = 16 if isinstance(column_type, SmallInteger) else big
    if getattr(column_type, "unsigned", False):
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _spec(column: Column[Any]) -> ColumnSpec:
    t = column.type
    nullable = bool(column.nullable)
    default: Any = None
    if not nullable and column.server_default is not None:
        default = 0
    if isinstance(t, VARBINARY):
        return ColumnSpec(column.name, "bytes", nullable, limit=t.length or 0)
    if isinstance(t, MEDIUMTEXT):
        return ColumnSpec(column.name, "bytes", nullable, limit=2**24 - 1)
    if isinstance(t, String):
        return ColumnSpec(column.name, "chars", nullable, limit=t.length or 0, default="")
    if isinstance(t, Boolean):
        return ColumnSpec(column.name, "bool", nullable, default=0)
    if isinstance(t, Double | Float):
        return ColumnSpec(column.name, "float", nullable)
    if isinstance(t, Integer):
        low, high = _int_range(t)
        return ColumnSpec(column.name, "int", nullable, low=low, high=high, default=default or 0)
    if isinstance(t, JSON):
        return ColumnSpec(column.name, "json", nullable)
    raise TypeError(f"no row spec for column {column.name} of type {t!r}")


_SKIPPED: Final = frozenset({"id", "logged_at"})
COLUMN_SPECS: Final[dict[str, ColumnSpec]] = {
    column.name: _spec(column)
    for column in cast(Table, Interaction.__table__).columns
    if column.name not in _SKIPPED
}
COLUMNS: Final[tuple[str, ...]] = tuple(COLUMN_SPECS)
JSON_COLUMNS: Final = frozenset(n for n, spec in COLUMN_SPECS.items() if spec.kind == "json")
_MINIMAL: Final = ("request_id", "received_at_ms", "endpoint", "shape", "status_code")


def _clean_text(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    # Lone surrogates cannot be encoded as UTF-8: keep them visible as \udxxx escapes.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _cut_bytes(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def _clean_json(value: Any) -> Any:
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, Mapping):
        return {_clean_text(k): _clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float):
        return value
    return _clean_text(value)


def _sanitize_value(spec: ColumnSpec, value: Any) -> Any:
    if value is None:
        return None
    try:
        if spec.kind == "bytes":
            return _cut_bytes(_clean_text(value), spec.limit)
        if spec.kind == "chars":
            return _clean_text(value)[: spec.limit]
        if spec.kind == "bool":
            return int(bool(value))
        if spec.kind == "float":
            number = float(value)
            return number if math.isfinite(number) else None
        if spec.kind == "int":
            number = int(value)
            if spec.low <= number <= spec.high:
                return number
            return None if spec.nullable else min(max(number, spec.low), spec.high)
        return _clean_json(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _fill_required(row: Row, original: Mapping[str, Any]) -> Row:
    for name, spec in COLUMN_SPECS.items():
        if row.get(name) is None and not spec.nullable:
            row[name] = spec.default
    if not row.get("request_id"):
        # Deterministic, so a replay of the same broken record lands on the same row.
        digest = hashlib.sha256(
            json.dumps(original, sort_keys=True, default=str).encode("utf-8", "backslashreplace")
        ).hexdigest()
        row["request_id"] = f"poisoned-{digest[:48]}"
    return row


def _reason(error: str) -> str:
    return _clean_text(error)[:255]


def sanitize_row(row: Mapping[str, Any], error: str) -> Row:
    """A version of ``row`` that fits every column, flagged poisoned with the error."""
    clean: Row = {name: _sanitize_value(spec, row.get(name)) for name, spec in COLUMN_SPECS.items()}
    images = clean.get("images")
    if images is not None and not isinstance(images, list):
        clean["images"] = None
    clean["image_count"] = len(clean["images"] or [])
    clean["poisoned"] = 1
    clean["poison_error"] = _reason(error)
    return _fill_required(clean, row)


def minimal_row(row: Mapping[str, Any], error: str) -> Row:
    """Only identity, time, endpoint and status (sanitized), flagged poisoned."""
    clean: Row = {name: None for name in COLUMN_SPECS}
    for name in _MINIMAL:
        clean[name] = _sanitize_value(COLUMN_SPECS[name], row.get(name))
    clean["image_count"] = 0
    clean["poisoned"] = 1
    clean["poison_error"] = _reason(error)
    return _fill_required(clean, row)


def image_rows(row: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """(request_id, position, digest, received_at_ms) for the digest lookup table."""
    images = row.get("images")
    if not isinstance(images, list):
        return []
    out: list[tuple[Any, ...]] = []
    for position, image in enumerate(images):
        digest = image.get("digest") if isinstance(image, Mapping) else None
        if isinstance(digest, str) and digest:
            out.append((row["request_id"], position, digest, row["received_at_ms"]))
    return out


# Positions in COLUMNS of the NOT NULL columns (with the default a missing value gets) and
# of the JSON columns: row_params runs once per row written, and per column lookups in
# COLUMN_SPECS cost more than the rest of it.
_DEFAULTS: Final = tuple(
    (index, COLUMN_SPECS[name].default)
    for index, name in enumerate(COLUMNS)
    if not COLUMN_SPECS[name].nullable
)
_JSON_INDEXES: Final = tuple(index for index, name in enumerate(COLUMNS) if name in JSON_COLUMNS)


def json_text(value: Any) -> str:
    """Compact JSON, as json.dumps(ensure_ascii=False) writes it; pydantic-core's encoder
    takes 0.3 µs where json.dumps takes 2. What it refuses (a lone surrogate, a type JSON
    lacks) goes through json.dumps as before, so MySQL's refusal isolates the row."""
    try:
        return to_json(value).decode()
    except (PydanticSerializationError, UnicodeDecodeError):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def row_params(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """The row's values in COLUMNS order, as the driver binds them (JSON as text)."""
    values = list(map(row.get, COLUMNS))
    for index in _JSON_INDEXES:
        if values[index] is not None:
            values[index] = json_text(values[index])
    for index, default in _DEFAULTS:
        if values[index] is None:
            values[index] = default
    return tuple(values)


def estimated_size(row: Mapping[str, Any]) -> int:
    """A cheap upper-ish bound of the row's bytes in an INSERT (to keep statements small)."""
    size = 256
    for name in ("prompt", "answer", "user_agent"):
        value = row.get(name)
        if isinstance(value, str):
            size += 4 * len(value)
    images = row.get("images")
    if isinstance(images, list):
        size += 160 * len(images)
    for name in ("request_metadata", "request_options", "tool_calls"):
        if row.get(name) is not None:
            # str() is C code and about as long as the JSON text (escapes of control
            # characters a third shorter: the factor 4 covers them).
            size += 4 * len(str(row[name]))
    return size
