"""The load test's traffic: request bodies the gateway accepts, cache-friendly repeats, and
the timing of streamed answers. No server, no Locust (it would monkey-patch pytest)."""

from __future__ import annotations

import base64
import io
import json
import random
from typing import Any

import pytest
from PIL import Image

from gateway.protocol import ChatCompletionRequest, VQARequest
from loadtest.locust.questions import BY_KIND, COMPARE, GENERIC, all_questions, pick_question
from loadtest.locust.workload import (
    SHAPES,
    SSEReader,
    Workload,
    WorkloadConfig,
    parse_weights,
)


def _plans(config: WorkloadConfig, count: int, rng_seed: int = 1) -> list[Any]:
    workload = Workload(config)
    rng = random.Random(rng_seed)
    return [workload.next(rng) for _ in range(count)]


def _images(body: dict[str, Any]) -> list[bytes]:
    if "messages" not in body:
        raw = body["image"].split(",", 1)[-1]
        return [base64.b64decode(raw, validate=True)]
    parts = body["messages"][-1]["content"]
    return [
        base64.b64decode(p["image_url"]["url"].split(",", 1)[1], validate=True)
        for p in parts
        if p["type"] == "image_url"
    ]


def test_every_shape_builds_a_body_the_gateway_protocol_accepts() -> None:
    config = WorkloadConfig(model="qwen3-vl-tiny", seed=7, repeat_share=0.5, two_image_share=0.5)
    plans = _plans(config, 40)
    assert {p.shape for p in plans} == set(SHAPES)
    for plan in plans:
        body = json.loads(json.dumps(plan.body))  # what goes over the wire
        if plan.shape in ("chat", "chat_stream"):
            request = ChatCompletionRequest.model_validate(body)
            assert request.stream is (plan.shape == "chat_stream")
            assert request.temperature == 0.0  # cacheable
            assert request.model == "qwen3-vl-tiny"
            assert plan.path == "/v1/chat/completions"
        else:
            VQARequest.model_validate(body)
            assert plan.path == ("/v1/vqa" if plan.shape == "vqa" else "/v1/chat/completions")
        images = _images(body)
        assert 1 <= len(images) <= 2
        for data, spec in zip(images, plan.photos, strict=True):
            assert Image.open(io.BytesIO(data)).size == (spec.width, spec.height)


def test_repeated_requests_are_identical_and_fresh_ones_never_repeat() -> None:
    repeats = _plans(WorkloadConfig(seed=3, repeat_share=1.0, popular_products=2,
                                    shape_weights={"chat": 1}), 12)  # fmt: skip
    assert all(p.repeated for p in repeats)
    assert len({json.dumps(p.body, sort_keys=True) for p in repeats}) == 2

    fresh = _plans(WorkloadConfig(seed=3, repeat_share=0.0), 30)
    seeds = [spec.seed for p in fresh for spec in p.photos]
    assert not any(p.repeated for p in fresh)
    assert len(seeds) == len(set(seeds))


def test_a_seed_fixes_the_traffic_and_no_seed_salts_it() -> None:
    fixed = WorkloadConfig(seed=9)
    assert [p.body for p in _plans(fixed, 5)] == [p.body for p in _plans(fixed, 5)]
    assert Workload(WorkloadConfig()).salt != Workload(WorkloadConfig()).salt


def test_shape_weights_and_chinese_share_are_honoured() -> None:
    only_streams = _plans(WorkloadConfig(seed=1, shape_weights={"chat_stream": 1.0}), 10)
    assert {p.shape for p in only_streams} == {"chat_stream"}
    assert all(p.body["stream_options"] == {"include_usage": True} for p in only_streams)

    chinese = _plans(WorkloadConfig(seed=1, chinese_share=1.0, shape_weights={"vqa": 1}), 10)
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in p.body["prompt"]) for p in chinese)


def test_weights_and_config_are_validated() -> None:
    assert parse_weights("chat=3, vqa=1", SHAPES) == {"chat": 3.0, "vqa": 1.0}
    for bad, why in (("chat", "NAME=NUMBER"), ("nope=1", "unknown name"),
                     ("chat=-1", ">= 0"), ("chat=0", "no positive weight")):  # fmt: skip
        with pytest.raises(ValueError, match=why):
            parse_weights(bad, SHAPES)
    with pytest.raises(ValueError, match="repeat_share"):
        WorkloadConfig(repeat_share=1.5)
    with pytest.raises(ValueError, match="unknown name"):
        WorkloadConfig(size_weights={"poster": 1.0})


def test_questions_cover_every_kind_in_both_languages() -> None:
    for table in (GENERIC, COMPARE, *BY_KIND.values()):
        assert set(table) == {"en", "zh"}
        assert all(table[lang] for lang in table)
    assert len(all_questions()) >= 50
    rng = random.Random(0)
    assert pick_question(rng, "bag", chinese_share=1.0).lang == "zh"
    assert pick_question(rng, "watch", chinese_share=0.0).lang == "en"


def _chunk(content: str | None, **extra: Any) -> bytes:
    delta = {} if content is None else {"content": content}
    event = {"choices": [{"index": 0, "delta": delta}], **extra}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def test_sse_reader_times_content_chunks_across_split_reads() -> None:
    reader = SSEReader(start=10.0)
    role = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    reader.feed(role, 10.05)  # no content: not the first token
    first = _chunk("Hel")
    reader.feed(first[:7], 10.2)
    reader.feed(first[7:] + b": keep-alive comment\n\n", 10.25)
    reader.feed(_chunk("lo") + _chunk("!"), 10.3)  # two chunks in one read
    usage = _chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8})
    reader.feed(usage + b"data: [DONE]\n\n", 10.4)
    result = reader.finish(10.5)

    assert result.ok
    assert result.text == "Hello!"
    assert result.ttft_ms == pytest.approx(250.0)
    assert result.itl_ms == pytest.approx([50.0, 0.0])
    assert result.usage == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert result.total_ms == pytest.approx(500.0)


def test_sse_reader_reports_error_events_and_truncated_streams() -> None:
    reader = SSEReader(start=0.0)
    reader.feed(_chunk("a"), 0.1)
    reader.feed(b'data: {"error": {"message": "worker died", "code": "upstream_error"}}\n\n', 0.2)
    errored = reader.finish()
    assert not errored.ok
    assert errored.error == "SSE error event: worker died"

    truncated = SSEReader(start=0.0)
    truncated.feed(_chunk("a"), 0.1)
    assert not truncated.finish().done

    garbage = SSEReader(start=0.0)
    garbage.feed(b"data: {not json\n\ndata: [DONE]", 0.1)  # last line without a newline
    result = garbage.finish()
    assert result.done
    assert result.error == "an SSE data line is not JSON"
