"""Cache key derivation, policy and replay shapes (no Redis needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.answers import CachedAnswer
from gateway.cache.keys import derive_key, is_deterministic
from gateway.cache.replay import completion_json, completion_sse
from gateway.cache.store import CacheDirectives
from gateway.validation.encode import canonical_request
from tests.support.requests import image_chat_body


def _payload(text: str = "Is this real leather?", **params: Any) -> dict[str, Any]:
    fields = {"max_tokens": 32, "temperature": 0, **params}
    return image_chat_body(text, "data:image/png;base64,AAAA", model="m", **fields)


def _key(payload: dict[str, Any], digests: tuple[str, ...] = ("d1",), **kw: str) -> str:
    fields = {"namespace": "ns", "model": "m", "revision": "r1", **kw}
    return derive_key(
        fields["namespace"], fields["model"], fields["revision"],
        canonical_request(payload, digests), digests,
    )  # fmt: skip


def test_image_data_does_not_enter_the_key_only_its_digest() -> None:
    a = _payload()
    b = _payload()
    b["messages"][0]["content"][0]["image_url"]["url"] = "data:image/jpeg;base64,BBBB"
    assert _key(a) == _key(b)
    assert _key(a, ("d1",)) != _key(a, ("d2",))


def test_stream_flags_do_not_change_the_key() -> None:
    plain = _payload()
    streamed = _payload(stream=True, stream_options={"include_usage": True})
    assert _key(plain) == _key(streamed)


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.5},
        {"top_p": 0.9},
        {"seed": 7},
        {"max_tokens": 33},
        {"stop": ["\n"]},
        {"presence_penalty": 0.1},
    ],
)
def test_every_sampling_parameter_changes_the_key(change: dict[str, Any]) -> None:
    assert _key(_payload()) != _key({**_payload(), **change})


def test_text_roles_structure_model_revision_and_namespace_change_the_key() -> None:
    base = _key(_payload())
    assert base != _key(_payload(text="Is this real suede?"))
    system = _payload()
    system["messages"].insert(0, {"role": "system", "content": "Be brief."})
    assert base != _key(system)
    assert base != _key(_payload(), model="other")
    assert base != _key(_payload(), revision="r2")
    assert base != _key(_payload(), namespace="other")


def test_length_prefixing_keeps_field_boundaries_apart() -> None:
    assert derive_key("ab", "c", "r", b"{}", ()) != derive_key("a", "bc", "r", b"{}", ())


def test_the_key_of_a_request_is_the_same_in_every_release_of_this_format() -> None:
    # Replicas of two releases serve side by side during a rollout: they must derive the
    # same key, or they stop sharing answers and in-flight generations. A change of the
    # derivation bumps CACHE_FORMAT_VERSION (the "v1" in the key), and these values.
    assert derive_key("ns", "m", "r1", b'{"a":1}', ["d1", "d2"]) == (
        "ns:v1:answer:{b57c4199dc6f07fd3dc0594f16fe8d994561f89c05289448c911e5eef5a73c5e}"
    )
    assert derive_key("ns", "m", "r1", b"{}", []) == (
        "ns:v1:answer:{f81207d4286d41beaf39c2c368fd47232f02d4fb91fc7895aa0de87e71308d82}"
    )


def test_key_is_namespaced_and_stable() -> None:
    key = _key(_payload())
    assert key.startswith("ns:v1:answer:")
    assert key == _key(json.loads(json.dumps(_payload())))


@pytest.mark.parametrize(
    ("params", "seeded_allowed", "expected"),
    [
        ({"temperature": 0}, True, True),
        ({"temperature": 0.0}, False, True),
        ({"temperature": 0.7, "seed": 3}, True, True),
        ({"temperature": 0.7, "seed": 3}, False, False),
        ({"temperature": 0.7}, True, False),
        ({}, True, False),  # the worker's default temperature samples
    ],
)
def test_only_deterministic_requests_are_cacheable(
    params: dict[str, Any], seeded_allowed: bool, expected: bool
) -> None:
    assert is_deterministic(params, seeded_allowed) is expected


@pytest.mark.parametrize(
    ("header", "read", "write"),
    [
        (None, True, True),
        ("no-cache", False, True),
        ("no-store", True, False),
        ("No-Cache, no-store", False, False),
        ("max-age=0", True, True),
    ],
)
def test_cache_control_directives(header: str | None, read: bool, write: bool) -> None:
    directives = CacheDirectives.from_header(header)
    assert (directives.read, directives.write) == (read, write)


def test_cached_answer_round_trips_and_rejects_foreign_values() -> None:
    answer = CachedAnswer('真皮 "leather"\n', "length", 300, 32)
    assert CachedAnswer.decode(answer.encode()) == answer
    assert CachedAnswer.decode(b"not json") is None
    assert CachedAnswer.decode(b'{"a": 1}') is None


def test_json_replay_has_fresh_ids_and_usage() -> None:
    answer = CachedAnswer("Genuine leather.", "stop", 310, 4)
    first, second = (
        json.loads(completion_json(answer, "m")),
        json.loads(completion_json(answer, "m")),
    )
    assert first["id"] != second["id"]
    assert first["choices"][0]["message"]["content"] == "Genuine leather."
    assert first["usage"] == {"prompt_tokens": 310, "completion_tokens": 4, "total_tokens": 314}


def test_sse_replay_is_valid_openai_stream() -> None:
    answer = CachedAnswer("Genuine leather.", "stop", 310, 4)
    events = completion_sse(answer, "m", include_usage=True)
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in events)
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == (
        "Genuine leather."
    )
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["total_tokens"] == 314
    without_usage = completion_sse(answer, "m", include_usage=False)
    assert not any(b'"usage"' in e for e in without_usage)
