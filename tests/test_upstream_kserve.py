"""The Triton adapter's pieces without a worker: the chat template, the request
translation, Triton's events back into OpenAI's shapes, Triton's load, the pool settings.
The real worker's tests are in test_triton_engine.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from gateway.errors import GatewayError
from gateway.upstream.kserve.engine import TritonEngine
from gateway.upstream.kserve.template import ChatTemplate, read_chat_template
from gateway.upstream.kserve.translate import (
    EventReader,
    EventTranslator,
    generate_body,
    sampling_parameters,
)
from gateway.upstream.load import parse_triton_load
from gateway.upstream.settings import PoolSpec, TritonPool
from worker.profiles import TINY_MODEL_DIR

TINY = str(TINY_MODEL_DIR)
PNG_B64 = "iVBORw0KGgo="


def _payload(**extra: Any) -> dict[str, Any]:
    content = [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"},
         "uuid": "abc"},
        {"type": "text", "text": "Is this leather?"},
    ]  # fmt: skip
    return {"model": "qwen3-vl-tiny", "messages": [{"role": "user", "content": content}], **extra}


def test_the_checkpoints_template_renders_images_as_its_vision_placeholders() -> None:
    template = ChatTemplate(read_chat_template(TINY))
    body = json.loads(generate_body(_payload(max_tokens=5), template))
    assert body["text_input"] == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Is this leather?"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert body["image"] == [PNG_B64]
    assert body["exclude_input_in_output"] is True
    assert body["stream"] is False
    assert json.loads(body["sampling_parameters"]) == {"max_tokens": 5}


def test_a_template_from_tokenizer_config_and_its_own_refusal(tmp_path: Path) -> None:
    source = "{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}x"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": source}))
    template = ChatTemplate(read_chat_template(str(tmp_path)))
    assert template.render([{"role": "user", "content": "hi"}]) == "x"
    with pytest.raises(GatewayError) as refused:
        template.render([{"role": "assistant", "content": "hi"}])
    assert refused.value.status == 400
    assert refused.value.param == "messages"
    assert "user first" in refused.value.message


def test_a_checkpoint_folder_prefers_the_processors_template(tmp_path: Path) -> None:
    """Qwen-VL checkpoints keep the template in the processor's chat_template.json; the
    tokenizer's config may hold an older text-only one. transformers reads the .jinja, then
    chat_template.json, then the tokenizer's config: so do we."""
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "tokenizer"}))
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "processor"}))
    assert read_chat_template(str(tmp_path)) == "processor"
    (tmp_path / "chat_template.jinja").write_text("jinja")
    assert read_chat_template(str(tmp_path)) == "jinja"


def test_sampling_fields_map_to_vllm_sampling_params() -> None:
    params = sampling_parameters(
        {
            "max_tokens": 9,
            "max_completion_tokens": 7,
            "temperature": 0.5,
            "top_p": 0.9,
            "seed": 3,
            "stop": "END",
            "n": 2,
            "presence_penalty": 0.1,
            "frequency_penalty": 0.2,
            "ignore_eos": True,
            "min_tokens": 2,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"schema": {"type": "object"}},
            },
        }
    )
    structured = json.loads(params.pop("structured_outputs"))
    assert structured == {"json": {"type": "object"}}
    assert params == {
        "max_tokens": 7,  # max_completion_tokens first, as vLLM
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 3,
        "stop": ["END"],
        "n": 2,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "ignore_eos": True,
        "min_tokens": 2,
    }
    json_object = sampling_parameters({"response_format": {"type": "json_object"}})
    assert json.loads(json_object["structured_outputs"]) == {"json_object": True}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
        (
            {"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]},
            "messages[0].tool_calls",
        ),
        (
            {"messages": [{"role": "tool", "content": "42", "tool_call_id": "1"}]},
            "messages[0].role",
        ),
    ],
)
def test_what_triton_cannot_honour_is_a_400_naming_field_and_engine(
    extra: dict[str, Any], param: str
) -> None:
    template = ChatTemplate(read_chat_template(TINY))
    with pytest.raises(GatewayError) as refused:
        generate_body(_payload(**extra), template)
    assert refused.value.status == 400
    assert refused.value.param == param
    assert "triton engine" in refused.value.message


# Events as our model sends them through Triton's generate_stream (recorded).
STREAM = [
    {"finish_reason": "None", "model_name": "vllm_model", "model_version": "1",
     "num_input_tokens": 18, "num_output_tokens": 1, "text_output": "ab"},
    {"finish_reason": "None", "num_input_tokens": 18, "num_output_tokens": 1, "text_output": " cd"},
    {"finish_reason": "length", "num_input_tokens": 18, "num_output_tokens": 1, "text_output": ""},
]  # fmt: skip


def _sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)


def _chunks(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(e[6:]) for e in raw.decode().split("\n\n") if e.startswith("data: {")]


def test_events_become_openai_chunks_with_usage_and_done() -> None:
    translator = EventTranslator("qwen3-vl-tiny")
    out = b"".join(translator.chunks(e) for e in STREAM) + translator.end()
    assert out.endswith(b"data: [DONE]\n\n")
    events = _chunks(out)
    deltas = [c["choices"][0]["delta"] for c in events if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": "ab"}
    assert deltas[1] == {"content": " cd"}
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["usage"] == {"prompt_tokens": 18, "completion_tokens": 3, "total_tokens": 21}
    assert {c["id"] for c in events} == {translator.completion_id}


def test_one_event_becomes_a_completion_and_lists_are_choices() -> None:
    answer = json.loads(
        EventTranslator("m").answer(
            [{"text_output": ["yes", "no"], "finish_reason": ["stop", "length"],
              "num_input_tokens": 7, "num_output_tokens": [1, 4]}]
        )
    )  # fmt: skip
    assert [c["message"]["content"] for c in answer["choices"]] == ["yes", "no"]
    assert [c["finish_reason"] for c in answer["choices"]] == ["stop", "length"]
    assert answer["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


def test_tritons_errors_and_aborts_are_ours() -> None:
    translator = EventTranslator("m")
    error = json.loads(translator.chunks({"error": "Stub process is not healthy"})[6:])
    assert error["error"]["code"] == "upstream_error"
    assert "Stub process" in error["error"]["message"]
    with pytest.raises(GatewayError) as failed:
        EventTranslator("m").answer([{"text_output": "x", "finish_reason": "abort"}])
    assert failed.value.status == 502


def test_events_cut_anywhere_are_read_whole() -> None:
    raw = _sse(STREAM)
    for cut in range(len(raw) + 1):
        reader = EventReader()
        assert reader.feed(raw[:cut]) + reader.feed(raw[cut:]) + reader.close() == STREAM


# Triton's metrics with our model's gauges (recorded, trimmed).
METRICS = """\
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="vllm_model",version="1"} 2
nv_inference_pending_request_count{model="other",version="1"} 9
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model="vllm_model",version="1"} 3
vllm:num_requests_waiting{model="vllm_model",version="1"} 1
vllm:kv_cache_usage_perc{model="vllm_model",version="1"} 0.25
nv_inference_request_success{model="vllm_model",version="1"} 40
"""


def test_load_is_the_models_pending_requests_and_vllms_gauges() -> None:
    assert parse_triton_load(METRICS, "vllm_model") == (3.0, 3.0, 0.25)
    assert parse_triton_load("nv_inference_count 1\n", "vllm_model") is None


def test_the_cache_key_tells_engines_apart_unless_told_to_share() -> None:
    pool = TritonPool(served_model="qwen3-vl-tiny", chat_template=TINY, checkpoint=TINY)
    assert pool.cache_root == f"triton:{TINY}"
    assert pool.model_copy(update={"share_cache": True}).cache_root == TINY


def test_a_triton_pool_needs_its_block_and_the_template_must_exist() -> None:
    with pytest.raises(ValidationError):
        PoolSpec(name="t", engine="triton", urls=("http://a:8000",))
    with pytest.raises(ValidationError):
        PoolSpec.model_validate(
            {"name": "v", "urls": ["http://a:8000"],
             "triton": {"served_model": "m", "chat_template": TINY}}
        )  # fmt: skip
    with pytest.raises(FileNotFoundError):
        TritonEngine(TritonPool(served_model="m", chat_template="/nonexistent/template.jinja"))


def test_metrics_live_on_the_workers_port_plus_the_offset() -> None:
    engine = TritonEngine(TritonPool(served_model="m", chat_template=TINY))
    assert engine.metrics_url("http://10.0.0.5:8000") == "http://10.0.0.5:8002/metrics"
    assert engine.metrics_url("http://[fd00::1]:8000") == "http://[fd00::1]:8002/metrics"
