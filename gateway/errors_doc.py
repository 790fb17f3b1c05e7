"""docs/ERRORS.md, generated from the error table (gateway/errors.py) and the words below.

    python -m gateway.errors_doc           # rewrite docs/ERRORS.md
    python -m gateway.errors_doc --check   # exit 1 when it is out of date

Status, type and retry advice come from the table itself; only when a code happens and
what to do about it are written here, one entry per code (tests/test_errors_catalogue.py
fails when a code has none or the document is stale).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final

from gateway.errors import ERROR_TABLE, ErrorCode, ErrorKind

DOC_PATH: Final = Path(__file__).resolve().parent.parent / "docs" / "ERRORS.md"

_FIX = "Fix the request as the message says."
# code -> (when it happens, what to do)
CATALOGUE: Final[dict[ErrorCode, tuple[str, str]]] = {
    ErrorCode.INVALID_JSON: ("The body is not JSON, or not a JSON object.", _FIX),
    ErrorCode.INVALID_REQUEST: (
        "A field has the wrong type or value; the message names it (`param`) and says "
        "what it takes.",
        _FIX,
    ),
    ErrorCode.UNSUPPORTED_PARAMETER: (
        "A field this service does not support (requests are strict: an unknown field "
        "could change what the model does).",
        "Remove the field named in `param`.",
    ),
    ErrorCode.MISSING_MODEL: ("No `model`.", "Send one of the ids `GET /v1/models` lists."),
    ErrorCode.MISSING_MESSAGES: (
        "Neither `messages` (chat format) nor `image` and `prompt` (simple format).",
        _FIX,
    ),
    ErrorCode.MISSING_PROMPT: ("The simple format without `prompt`.", _FIX),
    ErrorCode.MISSING_IMAGE: ("The simple format without `image`.", _FIX),
    ErrorCode.INVALID_MAX_TOKENS: (
        "`max_tokens` or `max_completion_tokens` below 1 or over the server's cap "
        "(GATEWAY_MAX_TOKENS_CAP).",
        "Ask for fewer tokens; the message gives the cap.",
    ),
    ErrorCode.INVALID_TEMPERATURE: ("`temperature` outside 0 to 2.", _FIX),
    ErrorCode.INVALID_TOP_P: ("`top_p` outside (0, 1].", _FIX),
    ErrorCode.PROMPT_TOO_LONG: (
        "The prompt's text is over GATEWAY_MAX_PROMPT_CHARS characters.",
        "Shorten the text; the message gives both counts.",
    ),
    ErrorCode.TOO_MANY_IMAGES: (
        "More images than GATEWAY_MAX_IMAGES in one request.",
        "Send fewer images, or one request per image.",
    ),
    ErrorCode.INVALID_IMAGE_URL: (
        "An image reference that is neither a `data:image/...;base64,` URI nor an "
        "allowed http(s) URL.",
        "Send the image as a base64 data URI.",
    ),
    ErrorCode.REMOTE_IMAGE_URL_UNSUPPORTED: (
        "An http(s) image URL, while this server does not fetch images.",
        "Send the image's bytes as a base64 data URI.",
    ),
    ErrorCode.REMOTE_IMAGE_HOST_NOT_ALLOWED: (
        "An image URL on a host outside the server's allow-list.",
        "Use an allowed host, or send the bytes as a data URI.",
    ),
    ErrorCode.REMOTE_IMAGE_ADDRESS_BLOCKED: (
        "An image URL that resolves to a private or local address.",
        "Use a public URL, or send the bytes as a data URI.",
    ),
    ErrorCode.REMOTE_IMAGE_FETCH_FAILED: (
        "The image URL answered with an error or not an image.",
        "Check the URL from the server's side; send the bytes instead.",
    ),
    ErrorCode.REMOTE_IMAGE_TOO_MANY_REDIRECTS: (
        "The image URL redirected too many times.",
        "Use the final URL.",
    ),
    ErrorCode.REMOTE_IMAGE_TOO_LARGE: (
        "The image at the URL is over the size limit.",
        "Send a smaller image.",
    ),
    ErrorCode.REMOTE_IMAGE_TIMEOUT: (
        "The image URL did not answer in time.",
        "Retry later or send the bytes as a data URI.",
    ),
    ErrorCode.UNSUPPORTED_IMAGE_TYPE: (
        "A data URI whose declared type is not an accepted image type.",
        "Send JPEG, PNG, WebP, GIF or HEIC (HEIF).",
    ),
    ErrorCode.INVALID_BASE64: (
        "The image is not strict base64: whitespace, line breaks (Android's "
        "`Base64.DEFAULT`), wrong padding.",
        "Encode on one line (`Base64.NO_WRAP` on Android).",
    ),
    ErrorCode.INVALID_IMAGE: (
        "The bytes are not a readable image (corrupt, truncated, wrong format).",
        "Send the file as the camera or library wrote it.",
    ),
    ErrorCode.IMAGE_TOO_LARGE: (
        "An image over GATEWAY_MAX_IMAGE_PIXELS pixels.",
        "Scale it down before sending.",
    ),
    ErrorCode.CONTENT_POLICY_VIOLATION: (
        "The prompt, image or answer is refused by the content policy.",
        "Rephrase; this request is not retried as is.",
    ),
    ErrorCode.INVALID_JSON_SCHEMA: (
        "A `response_format` or tool schema over the server's bounds (size, depth, "
        "branches, pattern length).",
        "Simplify the schema; the message names the bound.",
    ),
    ErrorCode.INVALID_IDEMPOTENCY_KEY: (
        "The `Idempotency-Key` header is empty, over 255 characters, or holds characters "
        "outside `A-Z a-z 0-9 . _ : ~ + / = -`.",
        "Send a UUID (`uuid4()`), one per logical request, reused on its retries.",
    ),
    ErrorCode.IDEMPOTENCY_KEY_REUSED: (
        "The `Idempotency-Key` was already used, within its window, with another body "
        "(docs/IDEMPOTENCY.md).",
        "Use a new key for a new request; retries must resend the same body.",
    ),
    ErrorCode.CONTEXT_LENGTH_EXCEEDED: (
        "The prompt (text and image tokens) is longer than the model's context; the "
        "message gives the limit and the prompt's count (OpenAI's code).",
        "Shorten the conversation, send fewer or smaller images (`detail: low`), or lower "
        "`max_tokens`.",
    ),
    ErrorCode.MISSING_API_KEY: (
        "No API key.",
        "Send `Authorization: Bearer <key>`.",
    ),
    ErrorCode.INVALID_AUTHORIZATION_SCHEME: (
        "An Authorization header in another scheme (`Token <key>`, `Basic ...`, a bare key).",
        "Send `Authorization: Bearer <key>`.",
    ),
    ErrorCode.INVALID_API_KEY: (
        "The key is malformed, unknown or revoked.",
        "Check the key; ask its owner for a new one.",
    ),
    ErrorCode.MODEL_NOT_PERMITTED: (
        "The key may not use the requested model.",
        "Use a model the key allows, or another key.",
    ),
    ErrorCode.RATE_LIMIT_EXCEEDED: (
        "Over one of the key's limits: requests or tokens per minute, or concurrent "
        "requests (the x-ratelimit-* headers say which).",
        "Wait Retry-After seconds; the SDKs do so themselves.",
    ),
    ErrorCode.REQUEST_EXCEEDS_TOKEN_LIMIT: (
        "This one request's estimated tokens exceed the key's whole tokens per minute: "
        "it can never be served as sent.",
        "Lower `max_tokens`, send fewer or smaller images, or ask for a higher limit.",
    ),
    ErrorCode.MODEL_NOT_FOUND: (
        "A model this server does not serve; the message lists those it does.",
        "Use an id from the message or `GET /v1/models`.",
    ),
    ErrorCode.NOT_FOUND: (
        "An unknown path; a path that exists under /v1 (a base URL without /v1) is named.",
        "Set the SDK's base URL to end in `/v1`.",
    ),
    ErrorCode.METHOD_NOT_ALLOWED: ("A method the path does not take (see Allow).", _FIX),
    ErrorCode.BODY_TOO_LARGE: (
        "The body is over GATEWAY_MAX_BODY_BYTES.",
        "Send smaller images (`detail: low`, or scale them down).",
    ),
    ErrorCode.BODY_READ_TIMEOUT: (
        "The body did not arrive within GATEWAY_BODY_READ_TIMEOUT_S.",
        "Retry on a better connection.",
    ),
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: (
        "Content-Type is not application/json.",
        "Send `Content-Type: application/json`.",
    ),
    ErrorCode.UPSTREAM_REJECTED: (
        "The worker refused the request with its own 4xx status and message.",
        "Read the message; fix the request.",
    ),
    ErrorCode.UPSTREAM_ERROR: (
        "The worker failed, broke off, or sent a malformed answer.",
        "Retry; report the x-request-id if it persists.",
    ),
    ErrorCode.UPSTREAM_UNAVAILABLE: ("No worker could be reached.", "Retry after Retry-After."),
    ErrorCode.NO_HEALTHY_WORKER: (
        "No worker passes its health checks (starting, or all down).",
        "Retry after Retry-After.",
    ),
    ErrorCode.UPSTREAM_TIMEOUT: (
        "The worker did not answer in time.",
        "Retry, perhaps with a smaller `max_tokens` or streaming.",
    ),
    ErrorCode.OVERLOADED: (
        "Every worker's queue is full: the request is shed rather than queued.",
        "Retry after Retry-After.",
    ),
    ErrorCode.AUTH_UNAVAILABLE: (
        "The key store could not check a key new to this replica.",
        "Retry after Retry-After.",
    ),
    ErrorCode.RATE_LIMITER_UNAVAILABLE: (
        "The rate limiter's Redis is down and the server fails closed.",
        "Retry after Retry-After.",
    ),
    ErrorCode.MODERATION_UNAVAILABLE: (
        "The image check could not run and the server fails closed.",
        "Retry after Retry-After.",
    ),
    ErrorCode.BATCH_STORE_UNAVAILABLE: (
        "The database of files and batches cannot be reached.",
        "Retry after Retry-After.",
    ),
    ErrorCode.BATCH_EXPIRED: (
        "A batch line not done within its batch's completion window (in the error file).",
        "Submit the line again in a new batch.",
    ),
    ErrorCode.DRAINING: (
        "This replica is shutting down.",
        "Retry: another replica answers.",
    ),
    ErrorCode.INTERNAL_ERROR: (
        "A fault of ours.",
        "Retry once; report the x-request-id.",
    ),
}

_HEADER = """# Error catalogue

Generated from the error table in `gateway/errors.py` by `python -m gateway.errors_doc`:
do not edit by hand (`tests/test_errors_catalogue.py` fails when it is out of date).

Every error has one body, as JSON and as a server-sent event once a stream has started:

```json
{"error": {"message": "...", "type": "invalid_request_error",
           "param": "messages[0].role", "code": "invalid_request"}}
```

Branch on `code`; show `message` to a developer, not to a shopper. `param` names the
field at fault when there is one. Every answer carries `X-Request-ID`: quote it when
reporting a problem.

**Retries.** The official `openai` SDKs retry 408, 409, 429 and 5xx by themselves (twice
by default), waiting `Retry-After` when the answer carries it, and never when it carries
`x-should-retry: false`: this server sends that header where the same request can never
succeed. The *Retry* column says what a client of its own should do.

**Choices worth knowing.**
- A request whose estimated tokens exceed the key's *whole* tokens per minute is 429
  `request_exceeds_token_limit` with `x-should-retry: false` and no `Retry-After`, not
  a 400: it stays a `RateLimitError` for the SDKs (as OpenAI's own "Request too large"
  is), and the header stops their retries, which would wait a minute twice for nothing.
- Base64 with line breaks (Android's `Base64.DEFAULT`) is refused with a message that
  says so, not silently unwrapped: vLLM's own image loader refuses whitespace too, and
  one image has one spelling in the cache key. Encode with `Base64.NO_WRAP`.
- Role `developer` (what OpenAI's newer SDK examples send) is a `system` message.
- An `X-Request-ID` outside `[A-Za-z0-9._:-]{1,128}` is replaced by a new id, by Nginx
  and the gateway alike; the answer then carries `X-Request-ID-Replaced: true`, and
  Nginx's access log has the new id as `request_id` and the one sent as
  `request_id_sent`.
- A path without `/v1` (an SDK base URL of `https://host` instead of `https://host/v1`)
  is a 404 `not_found` naming the `/v1` path to use.

| Code | HTTP | Type | When | What to do | Retry |
|---|---|---|---|---|---|
"""


def retry_advice(code: ErrorCode, kind: ErrorKind) -> str:
    if ("x-should-retry", "false") in kind.headers:
        return "No (`x-should-retry: false`)"
    if kind.retry_after:
        return "Yes, after `Retry-After`"
    if code is ErrorCode.UPSTREAM_REJECTED or code is ErrorCode.BATCH_EXPIRED:
        return "No"
    if kind.status >= 500 or kind.status == 408:
        return "Yes, with backoff"
    return "No: fix the request"


def render() -> str:
    rows = []
    for code, kind in ERROR_TABLE.items():
        when, action = CATALOGUE.get(code, ("(not described yet)", "(not described yet)"))
        status = f"{kind.status} (the worker's)" if code is ErrorCode.UPSTREAM_REJECTED else ""
        cells = (
            f"`{code.value}`",
            status or str(kind.status),
            f"`{kind.type}`",
            when,
            action,
            retry_advice(code, kind),
        )
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return _HEADER + "\n".join(rows) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = DOC_PATH.read_text() if DOC_PATH.exists() else ""
        if current != text:
            print(f"{DOC_PATH} is out of date: run python -m gateway.errors_doc")
            return 1
        return 0
    DOC_PATH.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
