"""The hostile-input matrix: what an attacker or a broken client sends, each with the
status and error code it must get, then: the gateway still answers /healthz, and the
interaction log holds exactly one row for the request with that status and code.

Requests are written as raw HTTP/1.1 on a socket, so headers with CR/LF or escapes, chunked
bodies and slow bodies go out exactly as written. The gateway is the real process with the
real log (this session's MariaDB database) and real Redis; its worker is the echo double,
since nothing here is about the model's answer (the engine's own tests cover that). Cases
marked ``via="nginx"`` go through real Nginx; those Nginx refuses itself (over its body
limit, headers too large) never reach a gateway, so for them the check is Nginx's answer in
our error shape and no row.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import inspect

from gateway.db.engine import create_sync_engine
from localstack import echo_worker
from localstack.processes import LocalProcess, start_gateway, start_nginx
from tests.support import images as img
from tests.support.mariadb import logged_rows
from tests.support.requests import MODEL, chat_body, image_message, vqa_body
from tests.support.worker import LOG_DIR

GATEWAY_MAX_BODY = 256 * 1024
NGINX_MAX_BODY = 1024 * 1024
# Short, so the slow-body cases take seconds (the defaults are 30 s and 60 s).
NGINX_BODY_TIMEOUT_S = 1
GATEWAY_BODY_TIMEOUT_S = 1
SQL = "'; DROP TABLE interactions; --"


@dataclass(frozen=True)
class Stack:
    gateway: LocalProcess
    nginx: LocalProcess
    auth_gateway: LocalProcess


@pytest.fixture(scope="module")
def stack(gateway_process_env: dict[str, str]) -> Iterator[Stack]:
    processes: list[LocalProcess] = []
    env = {
        **gateway_process_env,
        "GATEWAY_CACHE_NAMESPACE": f"hostile-{uuid.uuid4().hex[:10]}",
        "GATEWAY_MAX_BODY_BYTES": str(GATEWAY_MAX_BODY),
        "GATEWAY_MAX_IMAGES": "2",
        "GATEWAY_MAX_IMAGE_PIXELS": "1000000",
        "GATEWAY_LOG_FLUSH_INTERVAL_S": "0.1",
        "GATEWAY_BODY_READ_TIMEOUT_S": str(GATEWAY_BODY_TIMEOUT_S),
    }
    try:
        worker = echo_worker.start(LOG_DIR)
        processes.append(worker)
        gateway = start_gateway([worker.url], LOG_DIR, env={**env, "GATEWAY_AUTH_ENABLED": "false"})
        processes.append(gateway)
        auth_gateway = start_gateway(
            [worker.url], LOG_DIR, env={**env, "GATEWAY_AUTH_ENABLED": "true"}
        )
        processes.append(auth_gateway)
        nginx = start_nginx(
            [f"127.0.0.1:{gateway.port}"],
            LOG_DIR,
            max_body_bytes=NGINX_MAX_BODY,
            client_body_timeout_s=NGINX_BODY_TIMEOUT_S,
        )
        processes.append(nginx)
        yield Stack(gateway, nginx, auth_gateway)
    finally:
        for process in reversed(processes):
            process.stop()


# --- raw HTTP ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def send_raw(
    port: int, request: bytes, body_parts: tuple[bytes, ...] = (), pause_s: float = 0.0
) -> Answer:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        try:
            sock.sendall(request)
            for part in body_parts:
                time.sleep(pause_s)
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused early (413) and closed: its answer is still there
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body)


# --- the cases -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    status: int
    code: str | None  # the error code; None for a 200
    body: bytes = b""
    path: str = "/v1/chat/completions"
    headers: tuple[tuple[bytes, bytes], ...] = ()
    content_type: bytes | None = b"application/json"
    via: str = "gateway"  # gateway | nginx | auth
    chunked: bool = False
    logged: bool = True  # False: refused before any gateway (Nginx's own answers)
    request_id: bytes | None = None  # None: a fresh plain id
    row: dict[str, Any] = field(default_factory=dict)  # more fields the row must hold
    # The body's second half is sent after this pause (a slow-loris body).
    stall_s: float = 0.0


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def chat(content: Any = "what is this?", model: str = MODEL, **extra: Any) -> bytes:
    return _json(chat_body(content, model=model, **{"max_tokens": 4, **extra}))


def with_image(data: bytes, mime: str = "image/png", count: int = 1) -> bytes:
    return chat(image_message("what is this?", *[img.data_uri(data, mime)] * count))


def _raw_param(name: str, literal: str) -> bytes:
    """A chat body with a parameter whose value JSON cannot spell (NaN, Infinity)."""
    return chat()[:-1] + f', "{name}": {literal}}}'.encode()


PNG = img.picture("PNG")
JPEG = img.picture("JPEG")
ESC = "\x1b[31;1m\x1b]0;pwned\x07"

CASES = [
    # oversized bodies
    Case("body-over-limit", 413, "body_too_large", chat("x" * (GATEWAY_MAX_BODY + 10))),
    Case("chunked-body-over-limit", 413, "body_too_large", chat("x" * (GATEWAY_MAX_BODY + 10)),
         chunked=True),
    Case("nginx-body-over-gateway-limit", 413, "body_too_large",
         chat("x" * (GATEWAY_MAX_BODY + 10)), via="nginx"),
    Case("nginx-body-over-nginx-limit", 413, "body_too_large", chat("x" * (NGINX_MAX_BODY + 10)),
         via="nginx", logged=False),
    # base64 and image formats
    Case("malformed-base64", 400, "invalid_base64",
         chat([{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO%%=="}}])),
    Case("noncanonical-base64", 400, "invalid_base64",
         chat([{"type": "image_url", "image_url": {"url": "data:image/png;base64,QR=="}}])),
    Case("truncated-png", 400, "invalid_image", with_image(img.truncated(PNG))),
    Case("truncated-jpeg", 400, "invalid_image", with_image(img.truncated(JPEG), "image/jpeg")),
    Case("polyglot-png-header-html", 400, "invalid_image", with_image(img.png_then_html())),
    Case("polyglot-png-with-zip", 200, None, with_image(img.png_with_zip_appended())),
    Case("decompression-bomb-png", 400, "image_too_large", with_image(img.png_bomb())),
    Case("text-chunk-bomb-png", 400, "invalid_image", with_image(img.png_text_bomb())),
    Case("svg", 400, "unsupported_image_type", with_image(img.svg(), "image/svg+xml")),
    Case("svg-declared-png", 400, "invalid_image", with_image(img.svg())),
    # GIF is accepted (its first frame, as PNG, reaches the worker); a broken one is not.
    Case("gif", 200, None, with_image(img.picture("GIF"), "image/gif")),
    Case("gif-declared-png", 200, None, with_image(img.picture("GIF"))),
    Case("truncated-gif", 400, "invalid_image", with_image(img.picture("GIF")[:20], "image/gif")),
    Case("tiff", 400, "unsupported_image_type", with_image(img.picture("TIFF"), "image/tiff")),
    Case("tiff-declared-jpeg", 400, "invalid_image",
         with_image(img.picture("TIFF"), "image/jpeg")),
    Case("image-1x1", 200, None, with_image(img.picture("PNG", (1, 1)))),
    Case("image-1x50000", 400, "invalid_image", with_image(img.picture("PNG", (1, 50_000)))),
    Case("image-1x200", 200, None, with_image(img.picture("PNG", (1, 200)))),
    Case("too-many-images", 400, "too_many_images", with_image(PNG, count=3)),
    Case("vqa-bomb", 400, "image_too_large", path="/v1/vqa",
         body=_json(vqa_body(img.b64(img.png_bomb()), "hi"))),
    # sampling values
    Case("temperature-1e308", 400, "invalid_temperature", chat(temperature=1e308)),
    Case("temperature-negative", 400, "invalid_temperature", chat(temperature=-1)),
    Case("top-p-7", 400, "invalid_top_p", chat(top_p=7)),
    Case("max-tokens-10e12", 400, "invalid_max_tokens", chat(max_tokens=10**12)),
    Case("temperature-nan", 400, "invalid_temperature", _raw_param("temperature", "NaN")),
    Case("top-p-infinity", 400, "invalid_top_p", _raw_param("top_p", "Infinity")),
    Case("seed-beyond-int64", 400, "invalid_request", chat(seed=2**70)),
    # unicode
    Case("lone-surrogate-prompt", 400, "invalid_request", chat("what is \ud800 this?")),
    Case("lone-surrogate-model", 404, "model_not_found", chat(model="qwen\udfff")),
    # control characters in headers and prompts
    Case("crlf-injection-request-id", 200, None, chat(),
         request_id=b"hostile-%s\r\nSet-Cookie: a=1"),
    # Control characters in a header value break HTTP itself: the HTTP parser refuses the
    # request before the app (gateway/server.py answers in our shape), so no route
    # and no log row ever exist for it; through Nginx, the gateway's 400 is passed on.
    Case("ansi-user-agent", 400, "invalid_request", chat(), logged=False,
         headers=((b"User-Agent", ("app " + ESC).encode()),)),
    Case("nginx-ansi-user-agent", 400, "invalid_request", chat(), via="nginx", logged=False,
         headers=((b"User-Agent", ("app " + ESC).encode()),)),
    Case("ansi-request-id", 400, "invalid_request", chat(), logged=False,
         request_id=b"hostile-%s\x1b[2J"),
    Case("bare-lf-in-header", 400, "invalid_request", chat(), logged=False,
         headers=((b"X-Note", b"a\nb"),)),
    Case("tab-and-latin1-user-agent", 200, None, chat(),
         headers=((b"User-Agent", "app\t\u00e9\u00ff".encode("latin-1")),),
         row={"user_agent": "app\t\u00e9\u00ff"}),
    Case("crlf-ansi-prompt", 200, None, chat(f"line1\r\nline2 {ESC} \x00 end"),
         row={"prompt": f"line1\r\nline2 {ESC} \x00 end"}),
    Case("nginx-ansi-prompt", 200, None, chat(f"hi {ESC}"), via="nginx",
         row={"prompt": f"hi {ESC}"}),
    # SQL metacharacters
    Case("sql-prompt", 200, None, chat(SQL), row={"prompt": SQL}),
    Case("sql-model", 404, "model_not_found", chat(model=SQL), row={"model": SQL}),
    Case("sql-request-id-refused", 200, None, chat(), request_id=b"x'%s;DROP TABLE interactions"),
    # headers and encodings
    Case("huge-header", 200, None, chat(), headers=((b"X-Padding", b"a" * 60_000),)),
    Case("nginx-huge-header", 400, "invalid_request", chat(),
         headers=((b"X-Padding", b"a" * 60_000),), via="nginx", logged=False),
    # A slow body: Nginx buffers bodies (proxy_request_buffering is on), so the stalled
    # client holds no gateway. At client_body_timeout Nginx closes the connection without
    # an answer (it never writes a 408 on a timed-out read; its access log says 408).
    Case("nginx-slow-body", 408, None, chat(), via="nginx", logged=False,
         stall_s=NGINX_BODY_TIMEOUT_S + 2.0),
    # The same client reaching a gateway directly (no Nginx in front) stalls half-way
    # and never sends the rest: the gateway answers at its own deadline.
    Case("slow-body", 408, "body_read_timeout", chat(), stall_s=GATEWAY_BODY_TIMEOUT_S + 2.0),
    Case("nginx-many-headers", 400, "invalid_request", chat(), via="nginx", logged=False,
         headers=tuple((f"X-H{i}".encode(), b"v" * 40) for i in range(3000))),
    Case("wrong-content-type", 415, "unsupported_media_type", chat(), content_type=b"text/xml"),
    Case("gzip-bomb-content-encoding", 400, "invalid_json",
         gzip.compress(b" " * 50_000_000), headers=((b"Content-Encoding", b"gzip"),)),
    # The last duplicate wins, as in every mainstream parser (Nginx never parses bodies,
    # so no hop can read a different model than the gateway does).
    Case("duplicated-json-keys", 404, "model_not_found",
         chat()[:1] + b'"model": "nope-first", ' + chat()[1:].replace(
             f'"model": "{MODEL}"'.encode(), b'"model": "nope-last"'),
         row={"model": "nope-last"}),
    Case("stream-with-bomb-image", 400, "image_too_large",
         _json({"model": MODEL, "stream": True, "messages": [{"role": "user", "content": [
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,"
              + base64.b64encode(img.png_bomb()).decode()}}]}]})),
    Case("deeply-nested-json", 400, "invalid_json",
         b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    Case("nested-json-in-content", 400, "invalid_json",
         b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": '
         + b"[" * 5000 + b"]" * 5000 + b"}]}"),
    # API keys (auth on)
    Case("auth-missing", 401, "missing_api_key", chat(), via="auth"),
    Case("auth-bearer-empty", 401, "missing_api_key", chat(),
         headers=((b"Authorization", b"Bearer "),), via="auth"),
    Case("auth-unknown-key", 401, "invalid_api_key", chat(),
         headers=((b"Authorization", b"Bearer vlm_" + b"0" * 40),), via="auth"),
    Case("auth-huge-key", 401, "invalid_api_key", chat(),
         headers=((b"Authorization", b"Bearer " + b"k" * 20_000),), via="auth"),
    Case("auth-non-ascii-key", 401, "invalid_api_key", chat(),
         headers=((b"Authorization", "Bearer clé-ü-\u00ff".encode("latin-1")),), via="auth"),
    Case("auth-sql-key", 401, "invalid_api_key", chat(),
         headers=((b"Authorization", b"Bearer ' OR 1=1 --"),), via="auth"),
    Case("auth-crlf-injected-header", 401, "invalid_api_key", chat(), via="auth",
         headers=((b"Authorization", b"Bearer vlm_secret-crlf-" + b"7" * 20
                   + b"\r\nX-Api-Key-Override: admin"),)),
    Case("auth-ansi-key", 400, "invalid_request", chat(), via="auth", logged=False,
         headers=((b"Authorization", b"Bearer vlm_\x1b[2Jsecret"),)),
]  # fmt: skip


def _request_bytes(case: Case, request_id: bytes) -> tuple[bytes, tuple[bytes, ...]]:
    lines = [f"POST {case.path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close",
             b"X-Request-ID: " + request_id]  # fmt: skip
    if case.content_type is not None:
        lines.append(b"Content-Type: " + case.content_type)
    lines += [name + b": " + value for name, value in case.headers]
    if case.chunked:
        lines.append(b"Transfer-Encoding: chunked")
        size = 16 * 1024
        chunks = [case.body[i : i + size] for i in range(0, len(case.body), size)]
        parts = [f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks] + [b"0\r\n\r\n"]
        return b"\r\n".join(lines) + b"\r\n\r\n", tuple(parts)
    lines.append(f"Content-Length: {len(case.body)}".encode())
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    if case.stall_s:
        half = len(case.body) // 2
        return head + case.body[:half], (case.body[half:],)
    return head + case.body, ()


def _port(stack: Stack, case: Case) -> int:
    return {"gateway": stack.gateway, "nginx": stack.nginx, "auth": stack.auth_gateway}[
        case.via
    ].port


def _nginx_logged_status(nginx: LocalProcess, request_id: str) -> int:
    """The status Nginx's JSON access log gives the request (it logs at close)."""
    access_log = LOG_DIR.resolve() / f"nginx-{nginx.port}" / "nginx-access.json"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in access_log.read_text().splitlines():
            entry = json.loads(line)
            if entry["request_id"] == request_id:
                status: int = entry["status"]
                return status
        time.sleep(0.1)
    raise AssertionError(f"no access-log line for {request_id}")


def _assert_our_error_shape(answer: Answer, code: str) -> None:
    assert answer.headers.get("content-type", "").startswith("application/json"), answer
    error = json.loads(answer.body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code, error


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_request_gets_its_status_and_one_log_row(
    stack: Stack, log_database_url: str, case: Case
) -> None:
    plain_id = f"hostile-{uuid.uuid4().hex[:12]}"
    raw_id = case.request_id % plain_id.encode() if case.request_id else plain_id.encode()
    request, parts = _request_bytes(case, raw_id)
    if case.stall_s and case.via == "gateway":
        answer = send_raw(_port(stack, case), request)  # the rest is never sent
    elif case.stall_s:
        with pytest.raises(http.client.RemoteDisconnected):
            send_raw(_port(stack, case), request, parts, pause_s=case.stall_s)
        answer = Answer(_nginx_logged_status(stack.nginx, plain_id), {}, b"")
    else:
        answer = send_raw(_port(stack, case), request, parts, pause_s=case.stall_s)

    assert answer.status == case.status, answer.body[:500]
    if case.code is not None:
        _assert_our_error_shape(answer, case.code)
    assert "set-cookie" not in answer.headers
    # Nothing crashed: every process still answers.
    for process in (stack.gateway, stack.auth_gateway, stack.nginx):
        assert process.process.poll() is None, process.log_tail()
    health = send_raw(
        stack.nginx.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert health.status == 200

    _assert_no_secret_logged(case, stack)
    if not case.logged:
        assert logged_rows(log_database_url, plain_id, timeout_s=1.0) == []
        return
    # A refused X-Request-ID is replaced by a generated one, which the answer carries.
    row_id = answer.headers.get("x-request-id", "")
    assert row_id == plain_id or case.request_id is not None
    rows = logged_rows(log_database_url, row_id)
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["status_code"] == case.status
    assert row["error_code"] == case.code
    for name, value in case.row.items():
        assert row[name] == value, name
    _assert_no_secret_logged(case, stack, repr(row))


def _assert_no_secret_logged(case: Case, stack: Stack, row: str = "") -> None:
    """Secrets never reach logs: the key sent is in neither the process log nor the row."""
    for name, value in case.headers:
        if name == b"Authorization" and len(value) > len(b"Bearer "):
            token = value[len(b"Bearer ") :].split(b"\r")[0].decode("latin-1")
            logged = stack.auth_gateway.log_path.read_text(errors="replace") + row
            assert token not in logged


def test_the_interactions_table_survived_the_sql_cases(log_database_url: str) -> None:
    engine = create_sync_engine(log_database_url)
    try:
        assert "interactions" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
