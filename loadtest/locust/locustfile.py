"""Locust scenario: shoppers asking questions about product photos.

Run it through ``python -m loadtest.locust.run`` (``make loadtest``), which adds the
thresholds and the reports, or with Locust itself::

    .venv/bin/locust -f loadtest/locust/locustfile.py --host http://127.0.0.1:8080 \\
        --headless -u 16 -r 4 -t 60s --repeat-share 0.3

What a simulated shopper does is planned by ``loadtest.locust.workload`` (read its docstring):
realistic questions in English and Chinese about synthetic product photos of five
sizes, in both API shapes, streamed and not, with a share of repeated (cacheable)
requests.

Statistics, besides Locust's own per-request entries:

* ``TTFT`` entries: time to the first content chunk of each streamed answer;
* ``ITL`` entries: every gap between successive content chunks of a streamed answer;
* a streamed request's own entry is timed to its last byte, not to its headers.

These custom entries are not requests: ``--summary-json`` writes a summary whose
``http`` aggregate leaves them out (Locust's own "Aggregated" row does not), and it
tallies the ``X-Cache`` response header per shape, for repeated and fresh photos (in
one Locust process; with ``--processes`` the tally stays in the worker processes).

API keys: ``LOADTEST_API_KEY`` (several may be given, comma-separated; users take
them in turn) is sent as ``Authorization: Bearer``. It is read from the environment
only, never from the command line, so that it does not show in ``ps``.

Options (each also as an environment variable, ``LOADTEST_<NAME>``): ``--model``
(default: the first model of ``GET /v1/models``), ``--repeat-share``,
``--popular-products``, ``--shapes`` (e.g. ``chat=1,chat_stream=1`` for a bare vLLM
worker, which does not speak the simple shape), ``--sizes``, ``--max-tokens``,
``--chinese-share``, ``--two-image-share``, ``--seed``, ``--think-min``,
``--think-max``, ``--request-timeout``, ``--summary-json``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from locust import HttpUser, events, task
from locust.argument_parser import LocustArgumentParser
from locust.clients import ResponseContextManager
from locust.env import Environment
from locust.event import EventHook

from loadtest.locust.photos import SIZES
from loadtest.locust.summary import RunState, summary_of
from loadtest.locust.workload import (
    DEFAULT_SHAPES,
    DEFAULT_SIZES,
    SHAPES,
    PlannedRequest,
    SSEReader,
    Workload,
    WorkloadConfig,
    parse_weights,
)

logger = logging.getLogger("loadtest")

API_KEY_ENV = "LOADTEST_API_KEY"
FALLBACK_MODEL = "qwen3-vl-tiny"


def add_arguments(parser: LocustArgumentParser) -> None:
    group = parser.add_argument_group("vlm-serve load test")
    add = group.add_argument
    add(
        "--model",
        default="",
        env_var="LOADTEST_MODEL",
        help="served model name; default: the first one GET /v1/models lists",
    )
    add(
        "--repeat-share",
        type=float,
        default=0.3,
        env_var="LOADTEST_REPEAT_SHARE",
        help="share of requests about a popular product (identical, cacheable requests)",
    )
    add("--popular-products", type=int, default=8, env_var="LOADTEST_POPULAR_PRODUCTS")
    add(
        "--shapes",
        default=DEFAULT_SHAPES,
        env_var="LOADTEST_SHAPES",
        help=f"weights of the request shapes ({', '.join(SHAPES)})",
    )
    add(
        "--sizes",
        default=DEFAULT_SIZES,
        env_var="LOADTEST_SIZES",
        help=f"weights of the photo sizes ({', '.join(SIZES)})",
    )
    add("--max-tokens", type=int, default=64, env_var="LOADTEST_MAX_TOKENS")
    add("--chinese-share", type=float, default=0.25, env_var="LOADTEST_CHINESE_SHARE")
    add(
        "--two-image-share",
        type=float,
        default=0.1,
        env_var="LOADTEST_TWO_IMAGE_SHARE",
        help="share of fresh chat requests that compare two photos",
    )
    add(
        "--seed",
        type=int,
        default=-1,
        env_var="LOADTEST_SEED",
        help="fixes photos and questions; -1: a random salt, so fresh photos miss the cache",
    )
    add(
        "--think-min",
        type=float,
        default=0.5,
        env_var="LOADTEST_THINK_MIN",
        help="seconds a shopper waits between requests, at least",
    )
    add("--think-max", type=float, default=2.0, env_var="LOADTEST_THINK_MAX")
    add("--request-timeout", type=float, default=300.0, env_var="LOADTEST_REQUEST_TIMEOUT")
    add(
        "--summary-json",
        default="",
        env_var="LOADTEST_SUMMARY_JSON",
        help="write a JSON summary here when Locust quits",
    )


def workload_config(options: Any, model: str) -> WorkloadConfig:
    """The workload from Locust's parsed options (argparse.Namespace, or None: defaults)."""

    def option(name: str, default: Any) -> Any:
        return getattr(options, name, default) if options is not None else default

    seed = int(option("seed", -1))
    return WorkloadConfig(
        model=model,
        repeat_share=float(option("repeat_share", 0.3)),
        popular_products=int(option("popular_products", 8)),
        shape_weights=parse_weights(str(option("shapes", DEFAULT_SHAPES)), SHAPES),
        size_weights=parse_weights(str(option("sizes", DEFAULT_SIZES)), tuple(SIZES)),
        max_tokens=int(option("max_tokens", 64)),
        chinese_share=float(option("chinese_share", 0.25)),
        two_image_share=float(option("two_image_share", 0.1)),
        seed=None if seed < 0 else seed,
    )


def api_keys() -> list[str]:
    return [k.strip() for k in os.environ.get(API_KEY_ENV, "").split(",") if k.strip()]


def discover_model(host: str, key: str | None, timeout_s: float = 10.0) -> str | None:
    """The first model id of GET {host}/v1/models, or None when it cannot be read."""
    request = urllib.request.Request(host.rstrip("/") + "/v1/models")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            listing = json.loads(response.read())
        return str(listing["data"][0]["id"])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        logger.warning("could not read the model from %s/v1/models: %s", host, exc)
        return None


STATE = RunState()


def planned_workload(environment: Environment) -> Workload:
    if STATE.workload is None:
        options = environment.parsed_options
        model = str(getattr(options, "model", "") or "") if options is not None else ""
        if not model and environment.host:
            keys = api_keys()
            model = discover_model(environment.host, keys[0] if keys else None) or ""
        config = workload_config(options, model or FALLBACK_MODEL)
        STATE.workload = Workload(config)
        logger.info(
            "workload: model %s, repeat share %.2f, salt %d",
            config.model,
            config.repeat_share,
            STATE.workload.salt,
        )
    return STATE.workload


def on_test_start(environment: Environment, **_: Any) -> None:
    STATE.started_at = time.time()
    planned_workload(environment)


def on_test_stop(environment: Environment, **_: Any) -> None:
    STATE.stopped_at = time.time()


def _error_summary(response: ResponseContextManager) -> str:
    """A short, stable failure message (Locust groups failures by message)."""
    if not response.status_code:
        return "no response (connection failed or timed out)"
    code = ""
    try:
        error = response.json().get("error")
        if isinstance(error, dict):
            code = str(error.get("code") or error.get("type") or "")
    except (ValueError, AttributeError):
        pass
    return f"HTTP {response.status_code} {code}".strip()


class Shopper(HttpUser):
    """One shopper: asks a question about a product photo, waits, asks another."""

    def on_start(self) -> None:
        self.workload = planned_workload(self.environment)
        user_id = next(STATE.user_ids)
        self.rng = random.Random(f"{self.workload.salt}:{user_id}")
        keys = api_keys()
        self.api_key = keys[user_id % len(keys)] if keys else None
        options = self.environment.parsed_options
        self.think = (
            float(getattr(options, "think_min", 0.5)) if options else 0.5,
            float(getattr(options, "think_max", 2.0)) if options else 2.0,
        )
        self.timeout = float(getattr(options, "request_timeout", 300.0)) if options else 300.0

    def wait_time(self) -> float:
        low, high = self.think
        return self.rng.uniform(low, max(low, high))

    def headers(self) -> dict[str, str]:
        headers = {"X-Request-ID": f"lt-{uuid.uuid4().hex}"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    @task
    def ask(self) -> None:
        plan = self.workload.next(self.rng)
        if plan.stream:
            self._streamed(plan)
        else:
            self._answered(plan)

    def _tally(self, plan: PlannedRequest, response: ResponseContextManager) -> None:
        origin = "repeated" if plan.repeated else "fresh"
        STATE.x_cache[(plan.shape, origin, response.headers.get("X-Cache", "absent"))] += 1

    def _answered(self, plan: PlannedRequest) -> None:
        with self.client.post(
            plan.path,
            json=plan.body,
            headers=self.headers(),
            name=plan.name,
            catch_response=True,
            timeout=self.timeout,
        ) as response:
            self._tally(plan, response)
            if response.status_code != 200:
                response.failure(_error_summary(response))
                return
            try:
                answer = response.json()
                text = (
                    answer["choices"][0]["message"]["content"]
                    if plan.shape == "chat"
                    else answer["text"]
                )
            except (ValueError, KeyError, IndexError, TypeError):
                response.failure("answer does not have the expected shape")
                return
            if not isinstance(text, str):
                response.failure("answer text is not a string")
                return
            response.success()

    def _streamed(self, plan: PlannedRequest) -> None:
        start = time.perf_counter()
        with self.client.post(
            plan.path,
            json=plan.body,
            headers=self.headers(),
            name=plan.name,
            catch_response=True,
            stream=True,
            timeout=self.timeout,
        ) as response:
            self._tally(plan, response)
            if response.status_code != 200:
                response.failure(_error_summary(response))
                return
            reader = SSEReader(start)
            received = 0
            try:
                for data in response.iter_content(chunk_size=None):
                    reader.feed(data, time.perf_counter())
                    received += len(data)
            except OSError as exc:  # requests' exceptions derive from OSError
                response.failure(f"stream broken: {type(exc).__name__}")
                return
            result = reader.finish(time.perf_counter())
            # Time the whole stream, not only its headers, and count its bytes.
            response.request_meta["response_time"] = result.total_ms
            response.request_meta["response_length"] = received
            if result.error:
                response.failure(result.error)
            elif not result.done:
                response.failure("stream ended without [DONE]")
            else:
                response.success()
        fire = self.environment.events.request.fire
        if result.ttft_ms is not None:
            fire(
                request_type="TTFT",
                name=plan.name,
                response_time=result.ttft_ms,
                response_length=0,
                exception=None,
                context={},
            )
        for gap in result.itl_ms:
            fire(
                request_type="ITL",
                name=plan.name,
                response_time=gap,
                response_length=0,
                exception=None,
                context={},
            )


def summarise(environment: Environment) -> dict[str, Any]:
    """The summary ``--summary-json`` writes (loadtest/locust/summary.py)."""
    return summary_of(environment, STATE)


def on_quitting(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    path = str(getattr(options, "summary_json", "") or "") if options is not None else ""
    if path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(summarise(environment), indent=2))


def _listen(hook: EventHook, listener: Callable[..., None]) -> None:
    hook.add_listener(listener)  # type: ignore[no-untyped-call]  # Locust's EventHook is untyped


_listen(events.init_command_line_parser, add_arguments)
_listen(events.test_start, on_test_start)
_listen(events.test_stop, on_test_stop)
_listen(events.quitting, on_quitting)
