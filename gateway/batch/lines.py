"""An input file's lines, read at validation: each one a request, or an error of its own.

A line is ``{"custom_id": str, "method": "POST", "url": <the batch's endpoint>, "body":
{...}}`` (OpenAI's format). What only the line's envelope can get wrong (not JSON, no or a
repeated custom_id, another method or url, a streamed body) is found here; everything
about the body itself (limits, images, moderation, the model) is found by the gateway,
exactly as for an online request. Either way a bad line only fails itself: its result
goes to the error file, the batch goes on.

Results are the lines of the output and error files::

    {"id": "batch_req_…", "custom_id": …, "response": {"status_code", "request_id", "body"},
     "error": null}                       the gateway answered (a 4xx body is our error shape)
    {"id": "batch_req_…", "custom_id": …, "response": null, "error": {"message", "type",
     "param", "code"}}                     the line was never answered (invalid, expired)
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Final

from gateway.batch.tables import CUSTOM_ID_CHARS
from gateway.errors import ErrorCode, GatewayError

_KEYS: Final = frozenset({"custom_id", "method", "url", "body"})


@dataclass(frozen=True, slots=True)
class InputLine:
    line_no: int  # 1-based, as an editor counts the file's lines
    custom_id: str | None  # None when the line has no usable (or a repeated) one
    url: str
    body: str  # the request body, compact JSON
    result: str | None = None  # set when the line already failed (its error-file line)


def result_line(
    custom_id: str | None,
    response: dict[str, Any] | None = None,
    error: GatewayError | None = None,
) -> str:
    """One line of the output or error file."""
    line = {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": custom_id,
        "response": response,
        "error": error.to_response().error.model_dump() if error is not None else None,
    }
    # ASCII: a lone surrogate a client escaped into its JSON stays an escape.
    return json.dumps(line, separators=(",", ":"))


def _line_error(line_no: int, message: str, param: str | None = None) -> GatewayError:
    code = ErrorCode.INVALID_JSON if param is None else ErrorCode.INVALID_REQUEST
    return GatewayError(code, f"Line {line_no}: {message}", param=param)


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _object(text: str, line_no: int) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise _line_error(line_no, "not valid JSON.") from None
    if not isinstance(value, dict):
        raise _line_error(line_no, "must be a JSON object.")
    return value


def _custom_id(value: dict[str, Any], line_no: int) -> str:
    custom_id = value.get("custom_id")
    if (
        isinstance(custom_id, str)
        and 1 <= len(custom_id) <= CUSTOM_ID_CHARS
        and custom_id.isprintable()
        and not _not_utf8(custom_id)
    ):
        return custom_id
    raise _line_error(
        line_no, f"'custom_id' must be 1 to {CUSTOM_ID_CHARS} printable characters.", "custom_id"
    )


def _body(value: dict[str, Any], line_no: int, endpoint: str) -> dict[str, Any]:
    if set(value) - _KEYS:
        raise GatewayError(
            ErrorCode.UNSUPPORTED_PARAMETER,
            f"Line {line_no}: only custom_id, method, url and body are allowed.",
        )
    if value.get("method") != "POST":
        raise _line_error(line_no, "'method' must be POST.", "method")
    if value.get("url") != endpoint:
        raise _line_error(line_no, f"'url' must be the batch's endpoint, {endpoint}.", "url")
    body = value.get("body")
    if not isinstance(body, dict):
        raise _line_error(line_no, "'body' must be a JSON object.", "body")
    if body.get("stream") is True:
        raise GatewayError(
            ErrorCode.UNSUPPORTED_PARAMETER,
            f"Line {line_no}: batch answers are not streamed.",
            param="body.stream",
        )
    return body


def read_lines(data: bytes, endpoint: str) -> list[InputLine]:
    """Every non-blank line of an input file (UTF-8, checked at upload), in order."""
    lines: list[InputLine] = []
    seen: dict[str, int] = {}
    for line_no, raw in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        custom_id: str | None = None
        try:
            value = _object(raw, line_no)
            custom_id = _custom_id(value, line_no)
            body = _body(value, line_no, endpoint)
            if custom_id in seen:
                raise _line_error(
                    line_no, f"repeats the custom_id of line {seen[custom_id]}.", "custom_id"
                )
        except GatewayError as error:
            result = result_line(custom_id, error=error)
            lines.append(InputLine(line_no, None, endpoint, "{}", result))
            continue
        seen[custom_id] = line_no
        text = json.dumps(body, separators=(",", ":"))
        lines.append(InputLine(line_no, custom_id, endpoint, text))
    return lines
