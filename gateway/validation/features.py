"""The OpenAI features beyond plain chat: structured outputs, tools, logprobs, n, and the
bookkeeping fields SDKs send. Checked here before any worker sees them.

- ``read_features`` validates them (bounds on schemas and tools, tool messages, n against
  greedy sampling) and returns what the later stages need: the schema's name and digest
  for the log, why the answer cache is bypassed, the extra text the model reads (the
  token estimate and the prompt's moderation count it), the hashed end-user id.
- ``worker_payload`` is the body a worker receives: bookkeeping fields dropped (they
  change nothing in the answer), explicit no-op defaults dropped (so ``logprobs: false``
  and an absent ``logprobs`` share one cache key), schemas with their key order kept.
- ``key_view`` is the payload as the cache key sees it: each schema as its compact JSON
  text, so the key's sorted canonical form cannot reorder a schema's properties (the
  grammar emits them in declared order: two orders are two different answers).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Final

from gateway.config import Settings
from gateway.errors import ErrorCode, GatewayError
from gateway.protocol import ChatCompletionRequest, ImagePart, NamedToolChoice, Tool
from gateway.validation.schema_bounds import SchemaLimits, check_schema, serialized

# Accepted, recorded in the log, never forwarded and never part of the cache key.
BOOKKEEPING: Final = frozenset(
    {"user", "safety_identifier", "prompt_cache_key", "metadata", "store", "service_tier"}
)
# All of a request's tool schemas together, in multiples of one schema's byte bound.
_TOOLS_BYTES_FACTOR: Final = 4


@dataclass(frozen=True, slots=True)
class Features:
    """What the stages after validation need to know about the request's features."""

    response_format: str | None = None  # "json_object" or "json_schema"
    schema_name: str | None = None
    schema_sha256: str | None = None
    choices: int = 1
    # Why the answer cache is not used for this request (None: it may be).
    cache_bypass: str | None = None
    # What the model reads besides the messages' text: schemas, tool definitions and
    # earlier tool calls' arguments, as JSON.
    extra_text: str = ""
    end_user_sha256: str | None = None
    metadata: dict[str, str] | None = None
    # The non-default feature and bookkeeping values, for the log's request_options.
    options: dict[str, Any] | None = None
    # Appended to each image's uuid for the worker when the request carries a schema the
    # grammar backend may refuse. vLLM refuses such a schema after its API server has
    # cached the image under its uuid, but before the engine has it; the next request
    # with that uuid then fails (its "P0/P1 cache drift", a 500). With the schema's
    # digest in the uuid, only the same refused schema ever meets that entry again.
    uuid_salt: str | None = None

    @property
    def structured(self) -> bool:
        """The answer must be JSON: one that does not parse is served, never cached."""
        return self.response_format is not None


NO_FEATURES: Final = Features()


def schema_limits(settings: Settings) -> SchemaLimits:
    return SchemaLimits(
        max_bytes=settings.max_schema_bytes,
        max_depth=settings.max_schema_depth,
        max_branches=settings.max_schema_branches,
        max_pattern_chars=settings.max_schema_pattern_chars,
    )


def _invalid(param: str, message: str) -> GatewayError:
    return GatewayError(ErrorCode.INVALID_REQUEST, f"'{param}' {message}.", param=param)


def _digest(text: str) -> str:
    # surrogatepass: a lone surrogate is refused later, with the request's own 400
    # (encode.canonical_request), not here as an encoding error.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def read_features(request: ChatCompletionRequest, settings: Settings) -> Features:
    """Check the features against our bounds (raises GatewayError: 400)."""
    limits = schema_limits(settings)
    extra: list[str] = []
    fmt = schema_name = schema_sha256 = None
    rf = request.response_format
    if rf is not None and rf.type != "text":
        fmt = rf.type
        if rf.type == "json_schema":
            spec = rf.json_schema
            if spec.json_schema is None:
                raise _invalid("response_format.json_schema.schema", "is required")
            text = check_schema(spec.json_schema, "response_format.json_schema.schema", limits)
            schema_name, schema_sha256 = spec.name, _digest(text)
            extra.append(text)
    tool_names = _check_tools(request, settings, limits, extra)
    _check_messages(request, settings, extra)
    choices = _check_choices(request, settings)
    if request.top_logprobs and not request.logprobs:
        raise _invalid("top_logprobs", "requires 'logprobs': true")
    # Logprobs and tool calls are not in a stored answer's shape: such requests bypass the
    # cache. n > 1 is stored whole, every choice (it is cacheable when seeded).
    bypass = None
    if request.logprobs:
        bypass = "logprobs"
    elif tool_names:
        bypass = "tools"
    salt = None
    if schema_sha256 is not None or tool_names:
        salt = _digest("\n".join(extra))
    return Features(
        uuid_salt=salt[:16] if salt else None,
        response_format=fmt,
        schema_name=schema_name,
        schema_sha256=schema_sha256,
        choices=choices,
        cache_bypass=bypass,
        extra_text="\n".join(extra),
        end_user_sha256=_end_user_hash(request, settings),
        metadata=dict(request.metadata) if request.metadata else None,
        options=_options(request, tool_names) or None,
    )


def _check_tools(
    request: ChatCompletionRequest, settings: Settings, limits: SchemaLimits, extra: list[str]
) -> list[str]:
    tools: list[Tool] = request.tools or []
    choice = request.tool_choice
    if not tools:
        if choice in ("required",) or isinstance(choice, NamedToolChoice):
            raise _invalid("tool_choice", "needs 'tools'")
        return []
    if len(tools) > settings.max_tools:
        raise _invalid("tools", f"must have at most {settings.max_tools} item(s)")
    names: list[str] = []
    total = 0
    for i, tool in enumerate(tools):
        function = tool.function
        if function.name in names:
            raise _invalid(f"tools[{i}].function.name", "repeats another tool's name")
        names.append(function.name)
        if function.parameters is not None:
            param = f"tools[{i}].function.parameters"
            total += len(check_schema(function.parameters, param, limits))
        extra.append(serialized(tool.model_dump(exclude_none=True)))
    if total > _TOOLS_BYTES_FACTOR * limits.max_bytes:
        raise GatewayError(
            ErrorCode.INVALID_JSON_SCHEMA,
            f"The tools' parameter schemas are larger than "
            f"{_TOOLS_BYTES_FACTOR * limits.max_bytes} bytes together.",
            param="tools",
        )
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise _invalid("tool_choice.function.name", "does not name one of the tools")
    return names


def _check_messages(request: ChatCompletionRequest, settings: Settings, extra: list[str]) -> None:
    """Tool calls and tool results sit where OpenAI's protocol puts them."""
    arguments = 0
    for i, message in enumerate(request.messages):
        where = f"messages[{i}]"
        if message.tool_calls and message.role != "assistant":
            raise _invalid(f"{where}.tool_calls", "is only allowed on assistant messages")
        if message.tool_call_id is not None and message.role != "tool":
            raise _invalid(f"{where}.tool_call_id", "is only allowed on tool messages")
        if message.role == "tool":
            if message.tool_call_id is None:
                raise _invalid(f"{where}.tool_call_id", "is required on tool messages")
            if isinstance(message.content, list) and any(
                isinstance(part, ImagePart) for part in message.content
            ):
                raise _invalid(f"{where}.content", "of a tool message must be text")
        if message.content is None and not (message.role == "assistant" and message.tool_calls):
            raise _invalid(f"{where}.content", "is required")
        for call in message.tool_calls or ():
            arguments += len(call.function.arguments)
            extra.append(call.function.arguments)
    if arguments > settings.max_prompt_chars:
        raise GatewayError(
            ErrorCode.PROMPT_TOO_LONG,
            f"The tool calls' arguments have {arguments} characters; the limit is "
            f"{settings.max_prompt_chars}.",
            param="messages",
        )


def _check_choices(request: ChatCompletionRequest, settings: Settings) -> int:
    n = request.n or 1
    if n > settings.max_choices:
        raise _invalid("n", f"must be at most {settings.max_choices}")
    if n > 1 and request.temperature == 0:
        # vLLM refuses it too: greedy sampling would give n identical choices.
        raise _invalid("n", "must be 1 with greedy sampling (temperature 0)")
    return n


def _end_user_hash(request: ChatCompletionRequest, settings: Settings) -> str | None:
    end_user = request.safety_identifier or request.user
    secret = settings.log.end_user_hash_secret
    if not end_user or secret is None:
        return None
    key = secret.get_secret_value().encode()
    return hmac.new(key, end_user.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def _options(request: ChatCompletionRequest, tool_names: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if request.n and request.n > 1:
        options["n"] = request.n
    if request.logprobs:
        options["logprobs"] = True
        options["top_logprobs"] = request.top_logprobs or 0
    if tool_names:
        options["tools"] = tool_names
        choice = request.tool_choice
        if isinstance(choice, NamedToolChoice):
            options["tool_choice"] = {"function": choice.function.name}
        elif choice is not None:
            options["tool_choice"] = choice
        if request.parallel_tool_calls is False:
            options["parallel_tool_calls"] = False
    if request.safety_identifier or request.user:
        options["end_user_field"] = "safety_identifier" if request.safety_identifier else "user"
    for name in ("prompt_cache_key", "store", "service_tier"):
        value = getattr(request, name)
        if value is not None:
            options[name] = value
    return options


def worker_payload(request: ChatCompletionRequest) -> dict[str, Any]:
    """The request as a worker receives it: no bookkeeping, no explicit no-op defaults."""
    payload = request.model_dump(exclude_none=True, by_alias=True, exclude=set(BOOKKEEPING))
    if payload.get("response_format") == {"type": "text"}:
        del payload["response_format"]
    if not payload.get("logprobs"):
        payload.pop("logprobs", None)
        payload.pop("top_logprobs", None)  # 0 without logprobs (more is refused above)
    if payload.get("n") == 1:
        del payload["n"]
    if not payload.get("tools"):
        for name in ("tools", "tool_choice", "parallel_tool_calls"):
            payload.pop(name, None)
    else:
        if payload.get("tool_choice") == "auto":  # the default when tools are given
            del payload["tool_choice"]
        if payload.get("parallel_tool_calls") is True:
            del payload["parallel_tool_calls"]
    return payload


def key_view(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with each schema as its compact JSON text (key order kept), for a
    canonical form that sorts keys everywhere else."""
    view = dict(payload)
    fmt = view.get("response_format")
    if isinstance(fmt, dict) and isinstance(fmt.get("json_schema"), dict):
        spec = dict(fmt["json_schema"])
        if "schema" in spec:
            spec["schema"] = serialized(spec["schema"])
        view["response_format"] = {**fmt, "json_schema": spec}
    tools = view.get("tools")
    if isinstance(tools, list):
        kept = []
        for tool in tools:
            function = dict(tool.get("function") or {})
            if "parameters" in function:
                function["parameters"] = serialized(function["parameters"])
            kept.append({**tool, "function": function})
        view["tools"] = kept
    return view
