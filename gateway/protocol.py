"""Request and response models: OpenAI chat completions, the simple VQA shape, errors.

Requests are strict (no type coercion, unknown fields rejected) because the gateway
forwards only what it has validated: a field we do not know could change what the worker
does (sampling, guided decoding, processor kwargs) without passing our limits. Responses
are OpenAI's shape exactly (no other field): what every answer, fresh or replayed, holds.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# OpenAI's limit on stop sequences.
MAX_STOP_SEQUENCES = 4


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# --- chat completions: request -------------------------------------------------------------


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str = Field(
        description="A data:image/(jpeg|png|webp|gif|heic);base64,... URI (a GIF's first "
        "frame is used; HEIC/HEIF is converted), or an http(s) URL on a "
        "host the server allows (GATEWAY_REMOTE_IMAGES_*; off by default)."
    )
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


StopString = Annotated[str, Field(min_length=1)]
StopList = Annotated[list[StopString], Field(max_length=MAX_STOP_SEQUENCES)]
ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


# OpenAI's pattern for function and schema names.
Name = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
# A JSON schema as the client sent it: key order is kept (it is the order the grammar
# emits properties in); its bounds are checked in gateway/validation/features.py.
JsonSchema = dict[str, Any]


class ToolCallFunction(_Strict):
    name: Name
    arguments: str


class ToolCall(_Strict):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"]
    function: ToolCallFunction


class ChatMessage(_Strict):
    # "developer" is what OpenAI's newer models call the system role (their SDK examples
    # send it): a system message here, so both spellings share one cache key and template.
    role: Literal["system", "developer", "user", "assistant", "tool"]
    # None only on an assistant message that carries tool_calls.
    content: str | list[ContentPart] | None
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=128)
    tool_call_id: str | None = Field(default=None, min_length=1, max_length=256)

    @field_validator("role")
    @classmethod
    def _developer_is_system(cls, role: str) -> str:
        return "system" if role == "developer" else role


class StreamOptions(_Strict):
    include_usage: bool | None = None


class ResponseFormatText(_Strict):
    type: Literal["text"]


class ResponseFormatJsonObject(_Strict):
    type: Literal["json_object"]


class JsonSchemaFormat(_Strict):
    name: Name
    description: str | None = Field(default=None, max_length=1024)
    # "schema" would shadow BaseModel.schema: the attribute is json_schema, the key "schema".
    json_schema: JsonSchema | None = Field(default=None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class ResponseFormatJsonSchema(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema,
    Field(discriminator="type"),
]


class FunctionDefinition(_Strict):
    name: Name
    description: str | None = Field(default=None, max_length=1024)
    parameters: JsonSchema | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: Name


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


MetadataKey = Annotated[str, Field(max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]


class ChatCompletionRequest(_Strict):
    """The OpenAI chat completion request, restricted to what this service supports."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    # vLLM refuses empty stop strings: refuse them here, before the worker.
    stop: StopString | StopList | None = None
    # Bounded by GATEWAY_MAX_CHOICES (default 4) in validation; 128 is OpenAI's own cap.
    n: int | None = Field(default=None, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Bookkeeping that SDKs send: accepted within OpenAI's bounds, recorded in the log,
    # never forwarded to a worker and never part of the cache key.
    user: str | None = Field(default=None, max_length=256)
    safety_identifier: str | None = Field(default=None, max_length=64)
    prompt_cache_key: str | None = Field(default=None, max_length=64)
    metadata: dict[MetadataKey, MetadataValue] | None = Field(default=None, max_length=16)
    store: bool | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    # vLLM extensions that benchmark and load clients send (vLLM's own `bench serve`
    # sets ignore_eos). Harmless: the answer is still bounded by max_tokens.
    ignore_eos: bool | None = None
    min_tokens: int | None = Field(default=None, ge=0)


# --- the simple shape ----------------------------------------------------------------------


class VQARequest(_Strict):
    """The simple shape: one image, one question, one answer."""

    image: str = Field(
        min_length=1,
        description="Base64 image bytes, bare or as a data URI, or an http(s) URL as for "
        "image_url.",
    )
    prompt: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    model: str | None = Field(default=None, description="Defaults to the gateway's model.")
    detail: Literal["auto", "low", "high"] | None = Field(
        default=None,
        description="As image_url.detail: 'low' sends the image at the low-detail pixel "
        "budget, 'high' and 'auto' (the default) at the high one (docs/IMAGES.md).",
    )


class VQAResponse(BaseModel):
    text: str


# --- chat completions: response ---------------------------------------------------------
# OpenAI's shape, and nothing else: the worker's own fields are dropped and optional fields
# are left out unless set (gateway/upstream/shape.py); a replay has the same shape.


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResponseFunction(_Answer):
    name: str
    arguments: str = Field(description="JSON text, as the model wrote it.")


class ResponseToolCall(_Answer):
    id: str
    type: Literal["function"]
    function: ResponseFunction


class ResponseMessage(_Answer):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ResponseToolCall] | None = Field(
        default=None, description="Only when the model called tools."
    )


class TopLogprob(_Answer):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(_Answer):
    content: list[TokenLogprob]


class ChatCompletionChoice(_Answer):
    index: int
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None = Field(default=None, description="Only with logprobs.")
    finish_reason: str | None


class Usage(_Answer):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionResponse(_Answer):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage | None = None


class ChunkToolCallFunction(_Answer):
    name: str | None = None
    arguments: str | None = None


class ChunkToolCall(_Answer):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ChunkToolCallFunction | None = None


class ChunkDelta(_Answer):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ChunkToolCall] | None = None


class ChunkChoice(_Answer):
    index: int
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None = Field(default=None, description="Only with logprobs.")
    finish_reason: str | None


class ChatCompletionChunk(_Answer):
    """One server-sent event of a streamed answer; the last before [DONE] carries the
    usage alone (no choices) when stream_options.include_usage is true."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- operations ----------------------------------------------------------------------------


class HealthStatus(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyStatus(BaseModel):
    status: Literal["ready"] = "ready"
    healthy_workers: int
    total_workers: int


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The one error body, for JSON responses and SSE error events alike."""

    error: ErrorDetail
