"""The locustfile loads in Locust, its options parse, its users build valid requests, and its
summary keeps the custom TTFT/ITL entries out of the HTTP aggregate.

Importing Locust monkey-patches the process with gevent, so all of it runs in a child
process that prints JSON; no server is contacted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from gateway.protocol import ChatCompletionRequest, VQARequest
from worker.profiles import REPO_ROOT

PROBE = textwrap.dedent(
    """
    import json, random, sys
    import locust
    from locust.argument_parser import get_parser
    from locust.env import Environment
    import loadtest.locust.locustfile as lf

    options = get_parser().parse_args([
        "-f", "loadtest/locust/locustfile.py", "--host", "http://127.0.0.1:9", "-u", "3",
        "--shapes", "chat=1,chat_stream=1,vqa=1,simple_chat=1", "--seed", "5",
        "--max-tokens", "32",
    ])
    env = Environment(user_classes=[lf.Shopper], events=locust.events,
                      host=options.host, parsed_options=options)
    env.create_local_runner()
    config = lf.workload_config(options, "probe-model")
    workload = lf.Workload(config)
    rng = random.Random(1)
    plans = [workload.next(rng) for _ in range(24)]

    fire = env.events.request.fire
    for ms in (100, 200, 300):
        fire(request_type="POST", name="/v1/vqa", response_time=ms, response_length=10,
             exception=None, context={})
    fire(request_type="POST", name="/v1/chat/completions", response_time=400,
         response_length=0, exception=Exception("HTTP 503 no_healthy_worker"), context={})
    fire(request_type="TTFT", name="/v1/chat/completions [stream]", response_time=50,
         response_length=0, exception=None, context={})
    for _ in range(40):
        fire(request_type="ITL", name="/v1/chat/completions [stream]", response_time=5,
             response_length=0, exception=None, context={})
    lf.STATE.workload = workload
    print(json.dumps({
        "users": [cls.__name__ for cls in env.user_classes],
        "repeat_share": options.repeat_share,
        "config": {"model": config.model, "max_tokens": config.max_tokens,
                   "seed": config.seed, "repeat_share": config.repeat_share},
        "plans": [{"shape": p.shape, "path": p.path, "name": p.name, "body": p.body}
                  for p in plans],
        "summary": lf.summarise(env),
    }))
    """
)


@pytest.fixture(scope="module")
def probe() -> dict[str, Any]:
    env = {**os.environ, "LOADTEST_REPEAT_SHARE": "0.75", "LOADTEST_API_KEY": "k1,k2"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_locust_lists_the_shopper_user() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtest/locust/locustfile.py", "--list"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Shopper" in done.stdout


def test_options_come_from_the_command_line_and_the_environment(probe: dict[str, Any]) -> None:
    assert probe["users"] == ["Shopper"]
    assert probe["repeat_share"] == 0.75  # LOADTEST_REPEAT_SHARE
    assert probe["config"] == {
        "model": "probe-model", "max_tokens": 32, "seed": 5, "repeat_share": 0.75,
    }  # fmt: skip


def test_planned_requests_are_valid_for_the_gateway(probe: dict[str, Any]) -> None:
    shapes = set()
    for plan in probe["plans"]:
        shapes.add(plan["shape"])
        body = plan["body"]
        if "messages" in body:
            assert ChatCompletionRequest.model_validate(body).max_tokens == 32
        else:
            assert VQARequest.model_validate(body).max_tokens == 32
    assert shapes == {"chat", "chat_stream", "vqa", "simple_chat"}


def test_summary_keeps_ttft_and_itl_out_of_the_http_aggregate(probe: dict[str, Any]) -> None:
    summary = probe["summary"]
    http = summary["http"]
    assert (http["requests"], http["failures"]) == (4, 1)
    assert http["failure_ratio"] == pytest.approx(0.25)
    assert http["p95_ms"] == 400
    assert summary["ttft"]["requests"] == 1
    assert summary["itl"]["requests"] == 40
    assert summary["errors"] == [
        {"type": "POST", "name": "/v1/chat/completions",
         "error": "Exception('HTTP 503 no_healthy_worker')", "occurrences": 1},
    ]  # fmt: skip
    assert {(e["type"], e["name"]) for e in summary["entries"]} == {
        ("POST", "/v1/vqa"), ("POST", "/v1/chat/completions"),
        ("TTFT", "/v1/chat/completions [stream]"), ("ITL", "/v1/chat/completions [stream]"),
    }  # fmt: skip
    assert summary["workload"]["model"] == "probe-model"
    assert summary["users"] == 3
