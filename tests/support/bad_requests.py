"""The catalogue of bad requests: every invalid input the gateway must refuse before
anything reaches a worker, with the status and error code it must answer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.support.images import b64, data_uri, image_bytes, jpeg_header_bomb, png_header_bomb
from tests.support.requests import MODEL, chat_body, image_message

MARKER = "MARKER-7f3a9c"  # put into payloads; must never come back in an error message


@dataclass(frozen=True)
class BadCase:
    id: str
    status: int
    code: str
    body: bytes
    path: str = "/v1/chat/completions"
    content_type: str | None = "application/json"


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def bad_cases() -> list[BadCase]:
    """Every invalid input the gateway must refuse before anything reaches a worker."""
    png = image_bytes("PNG")
    bmp = image_bytes("BMP")
    text = f"what is this? {MARKER}"
    one = data_uri(png)
    photo = image_bytes("JPEG", (1024, 768))  # over detail "low"'s 512 x 512
    low_detail = image_message(text, data_uri(photo[: len(photo) // 2], "image/jpeg"))
    low_detail[0]["image_url"]["detail"] = "low"

    def chat(status: int, code: str, case_id: str, **kwargs: Any) -> BadCase:
        content = kwargs.pop("content", text)
        return BadCase(case_id, status, code, _json(chat_body(content, **kwargs)))

    def with_image(uri: str) -> list[dict[str, Any]]:
        return image_message(text, uri)

    cases = [
        BadCase("body-over-limit", 413, "body_too_large", _json(chat_body("x" * 300_000))),
        BadCase("not-json", 400, "invalid_json", f'{{"model": "{MARKER}",'.encode()),
        BadCase("json-array", 400, "invalid_json", b"[1, 2, 3]"),
        BadCase("not-utf8", 400, "invalid_json", b'{"model": "\xff\xfe"}'),
        BadCase(
            "text-plain",
            415,
            "unsupported_media_type",
            _json(chat_body(text)),
            content_type="text/plain",
        ),
        BadCase(
            "form-encoded",
            415,
            "unsupported_media_type",
            b"model=x",
            content_type="application/x-www-form-urlencoded",
        ),
        BadCase(
            "no-content-type", 415, "unsupported_media_type", _json(chat_body()), content_type=None
        ),
        chat(404, "model_not_found", "unknown-model", model=f"gpt-{MARKER}"),
        BadCase("missing-messages", 400, "missing_messages", _json({"model": MODEL})),
        BadCase("empty-messages", 400, "missing_messages", _json({"model": MODEL, "messages": []})),
        BadCase(
            "missing-model",
            400,
            "missing_model",
            _json({"messages": [{"role": "user", "content": text}]}),
        ),
        BadCase("simple-missing-prompt", 400, "missing_prompt", _json({"image": b64(png)})),
        BadCase(
            "vqa-missing-prompt", 400, "missing_prompt", _json({"image": b64(png)}), path="/v1/vqa"
        ),
        BadCase(
            "vqa-empty-prompt",
            400,
            "missing_prompt",
            _json({"image": b64(png), "prompt": ""}),
            path="/v1/vqa",
        ),
        BadCase("vqa-missing-image", 400, "missing_image", _json({"prompt": text}), path="/v1/vqa"),
        chat(
            400,
            "invalid_base64",
            "base64-bad-chars",
            content=with_image(f"data:image/png;base64,{MARKER}!!"),
        ),
        chat(
            400, "invalid_base64", "base64-newlines", content=with_image(one[:60] + "\n" + one[60:])
        ),
        chat(400, "invalid_base64", "base64-no-padding", content=with_image(one.rstrip("=") + "A")),
        chat(
            400,
            "invalid_base64",
            "base64-urlsafe",
            content=with_image("data:image/png;base64,ab-_"),
        ),
        BadCase(
            "vqa-bad-base64",
            400,
            "invalid_base64",
            _json({"image": f"{MARKER}%%", "prompt": text}),
            path="/v1/vqa",
        ),
        chat(
            400,
            "unsupported_image_type",
            "mime-bmp",
            content=with_image(data_uri(bmp, "image/bmp")),
        ),
        chat(
            400,
            "unsupported_image_type",
            "mime-svg",
            content=with_image(data_uri(b"<svg/>", "image/svg+xml")),
        ),
        chat(
            400,
            "unsupported_image_type",
            "mime-text",
            content=with_image(data_uri(b"hello", "text/plain")),
        ),
        chat(
            400,
            "invalid_image_url",
            "not-base64-data-uri",
            content=with_image("data:image/png,rawbytes"),
        ),
        chat(
            400, "invalid_image", "not-an-image", content=with_image(data_uri(MARKER.encode() * 20))
        ),
        chat(
            400, "invalid_image", "bmp-declared-png", content=with_image(data_uri(bmp, "image/png"))
        ),
        chat(
            400,
            "invalid_image",
            "truncated-png",
            content=with_image(data_uri(png[: len(png) // 2])),
        ),
        chat(400, "invalid_image", "png-signature-only", content=with_image(data_uri(png[:8]))),
        # detail "low" shrinks it while the request is prepared: its first decode (was a 500).
        chat(400, "invalid_image", "truncated-jpeg-detail-low", content=low_detail),
        chat(
            400,
            "image_too_large",
            "png-bomb",
            content=with_image(data_uri(png_header_bomb(20000, 20000))),
        ),
        chat(
            400,
            "image_too_large",
            "jpeg-bomb",
            content=with_image(data_uri(jpeg_header_bomb(30000, 30000), "image/jpeg")),
        ),
        BadCase(
            "vqa-bomb",
            400,
            "image_too_large",
            _json({"image": b64(png_header_bomb(5000, 5000)), "prompt": text}),
            path="/v1/vqa",
        ),
        chat(400, "too_many_images", "three-images", content=image_message(text, one, one, one)),
        chat(400, "invalid_max_tokens", "max-tokens-zero", max_tokens=0),
        chat(400, "invalid_max_tokens", "max-tokens-negative", max_tokens=-5),
        chat(400, "invalid_max_tokens", "max-tokens-over-cap", max_tokens=1501),
        chat(
            400, "invalid_max_tokens", "max-completion-tokens-over-cap", max_completion_tokens=10**9
        ),
        chat(400, "invalid_max_tokens", "max-tokens-string", max_tokens="10"),
        chat(400, "invalid_max_tokens", "max-tokens-float", max_tokens=1.5),
        BadCase(
            "vqa-max-tokens-zero",
            400,
            "invalid_max_tokens",
            _json({"image": b64(png), "prompt": text, "max_tokens": 0}),
            path="/v1/vqa",
        ),
        chat(400, "invalid_temperature", "temperature-negative", temperature=-0.1),
        chat(400, "invalid_temperature", "temperature-too-high", temperature=2.5),
        chat(400, "invalid_top_p", "top-p-zero", top_p=0),
        chat(400, "invalid_top_p", "top-p-too-high", top_p=1.5),
        chat(400, "prompt_too_long", "prompt-too-long", content="x" * 2001),
        BadCase(
            "vqa-prompt-too-long",
            400,
            "prompt_too_long",
            _json({"image": b64(png), "prompt": "y" * 2001}),
            path="/v1/vqa",
        ),
        chat(
            400,
            "remote_image_url_unsupported",
            "https-image-url",
            content=with_image(f"https://example.com/{MARKER}.png"),
        ),
        chat(
            400,
            "remote_image_url_unsupported",
            "http-image-url",
            content=with_image("http://x/a.jpg"),
        ),
        chat(400, "unsupported_parameter", "unknown-field", chat_template_kwargs={}),
        chat(400, "invalid_request", "empty-stop-string", stop=[""]),
        BadCase(
            "lone-surrogate",
            400,
            "invalid_request",
            _json(chat_body(f"{text} \ud800")),  # json.dumps writes it as an escape
        ),
        BadCase(
            "lone-surrogate-in-schema",  # its digest was taken before the text was checked
            400,
            "invalid_request",
            _json(
                chat_body(
                    text,
                    response_format={
                        "type": "json_schema",
                        "json_schema": {
                            "name": "answer",
                            "schema": {"type": "object", "description": "\udfff"},
                        },
                    },
                )
            ),
        ),
        chat(
            400,
            "invalid_request",
            "stream-options-without-stream",
            stream_options={"include_usage": True},
        ),
        chat(
            400, "invalid_request", "unknown-part-type", content=[{"type": "audio", "data": MARKER}]
        ),
        chat(400, "invalid_request", "content-number", content=5),
        BadCase(
            "role-tool",
            400,
            "invalid_request",
            _json({"model": MODEL, "messages": [{"role": "tool", "content": text}]}),
        ),
    ]
    # JSON has no NaN/Infinity, but Python's parser (and many clients) accept them.
    for name, value in (("nan", "NaN"), ("infinity", "Infinity"), ("minus-infinity", "-Infinity")):
        for param, code in (("temperature", "invalid_temperature"), ("top_p", "invalid_top_p")):
            raw = _json(chat_body(text))[:-1] + f', "{param}": {value}}}'.encode()
            cases.append(BadCase(f"{param}-{name}", 400, code, raw))
    return cases
