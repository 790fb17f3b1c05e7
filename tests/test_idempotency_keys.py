"""Idempotency-Key: the header's check, what counts as the same body, and the Redis keys
(no Redis needed; tests/test_idempotency_redis.py runs them against Redis and a cluster)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from redis.crc import key_slot

from gateway.cache.coalesce import done_channel, lock_key
from gateway.cache.idempotency import (
    ANONYMOUS,
    HEADER_PATTERN,
    MAX_KEY_CHARS,
    IdempotencyKey,
    answer_key,
    body_digest,
    claim_key,
    read_idempotency_key,
    scoped,
)
from gateway.errors import ErrorCode, GatewayError
from gateway.validation.encode import canonical_request
from tests.support.requests import image_chat_body


def _digest(
    text: str = "Is this real leather?", images: tuple[str, ...] = ("d1",), **kw: Any
) -> str:
    fields = {"max_tokens": 32, "temperature": 1.0, **kw}
    payload = image_chat_body(text, "data:image/png;base64,AAAA", model="m", **fields)
    return body_digest("m", canonical_request(payload, images), images)


@pytest.mark.parametrize(
    "header",
    [
        "8e03978e-40d5-43e8-bc93-6894a57f9324",  # a UUID, the usual choice
        "01HV6Z8Y3M4X9T0B2C5D7E8F9G",  # a ULID
        "order:42/retry_ok.v1~a+b=",
        "x" * MAX_KEY_CHARS,
    ],
)
def test_accepted_keys_are_read_as_sent(header: str) -> None:
    assert read_idempotency_key(header) == header


def test_a_structured_field_string_names_the_same_key() -> None:
    # draft-ietf-httpapi-idempotency-key-header quotes it; Stripe's SDKs do not.
    assert read_idempotency_key('"abc-123"') == read_idempotency_key("abc-123") == "abc-123"


def test_no_header_is_no_key() -> None:
    assert read_idempotency_key(None) is None


@pytest.mark.parametrize(
    "header",
    ["", '""', "   ", "x" * (MAX_KEY_CHARS + 1), "has space", "semi;colon", 'quo"te', "é", "a\tb"],
)
def test_malformed_keys_are_a_clear_400(header: str) -> None:
    with pytest.raises(GatewayError) as caught:
        read_idempotency_key(header)
    error = caught.value
    assert (error.status, error.code) == (400, ErrorCode.INVALID_IDEMPOTENCY_KEY)
    assert error.param == "Idempotency-Key"
    assert str(MAX_KEY_CHARS) in error.message  # says what is allowed


def test_the_same_body_is_the_same_digest_whatever_its_shape_fields() -> None:
    assert _digest() == _digest()
    # stream and stream_options only change the answer's shape, as for the cache key
    assert _digest() == _digest(stream=True, stream_options={"include_usage": True})


@pytest.mark.parametrize(
    "change",
    [
        {"text": "Is this real suede?"},
        {"images": ("d2",)},
        {"temperature": 0.7},
        {"max_tokens": 33},
        {"seed": 7},
    ],
)
def test_any_change_to_what_the_model_sees_is_another_body(change: dict[str, Any]) -> None:
    assert _digest(**change) != _digest()


def test_the_model_is_part_of_the_body() -> None:
    payload = image_chat_body("q", "data:image/png;base64,AAAA", model="m")
    canonical = canonical_request(payload, ("d1",))
    assert body_digest("m", canonical, ("d1",)) != body_digest("n", canonical, ("d1",))


def test_keys_are_scoped_by_api_key() -> None:
    mine, theirs = IdempotencyKey("key-a", "k1"), IdempotencyKey("key-b", "k1")
    digest = _digest()
    assert answer_key("ns", mine, digest) != answer_key("ns", theirs, digest)
    assert claim_key("ns", mine) != claim_key("ns", theirs)
    assert scoped("k1", None) == IdempotencyKey(ANONYMOUS, "k1")
    assert scoped(None, "key-a") is None


def test_another_body_under_the_same_key_never_shares_its_generation() -> None:
    key = IdempotencyKey("key-a", "k1")
    assert answer_key("ns", key, _digest()) != answer_key("ns", key, _digest("other"))
    # ...but both are checked against the one claim of the key
    assert claim_key("ns", key) == claim_key("ns", IdempotencyKey("key-a", "k1"))


def test_fields_cannot_run_into_each_other() -> None:
    # length-prefixed: ("ab", "c") and ("a", "bc") are different scopes
    assert claim_key("ns", IdempotencyKey("ab", "c")) != claim_key("ns", IdempotencyKey("a", "bc"))


def test_answer_lease_and_channel_share_a_cluster_slot_and_the_namespace() -> None:
    key = answer_key("vlm", IdempotencyKey("key-a", "k1"), _digest())
    assert key.startswith("vlm:")
    assert key.endswith(":done") is False
    slots = {key_slot(name.encode()) for name in (key, lock_key(key), done_channel(key))}
    assert len(slots) == 1
    # the coalescer's pattern subscription hears the channel
    assert done_channel(key).startswith("vlm:")
    assert done_channel(key).endswith(":done")
    claim = claim_key("vlm", IdempotencyKey("key-a", "k1"))
    assert "{" in claim
    assert claim.endswith("}")


@pytest.mark.parametrize(
    "header",
    ["abc-123", '"abc-123"', "x" * MAX_KEY_CHARS, "", '""', "x" * 256, "a b", '"a', "é"],
)
def test_the_openapi_pattern_accepts_exactly_what_the_gateway_accepts(header: str) -> None:
    try:
        read_idempotency_key(header)
        accepted = True
    except GatewayError:
        accepted = False
    assert bool(re.fullmatch(HEADER_PATTERN, header)) == accepted
