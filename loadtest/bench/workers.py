"""make bench (worker pool): throughput with 1 worker against 2, through the gateway.

Two cpu-tiny workers, each pinned to its own core (``WORKER_CPU_THREADS_BIND`` 0 and 1),
and two gateways: one that knows worker A only, one that knows A and B (least-loaded
choice with image affinity, gateway/upstream/pool.py). The answer cache is off, so every request
reaches a worker. Each round runs both setups (alternating which goes first) with a
closed loop of chat requests carrying a 640×480 product photo; the throughput ratio
(2 workers over 1) is taken within a round, then summarised as median (min–max).

Then the drills, under the same load: a worker frozen with SIGSTOP, a gateway sent SIGTERM
behind Nginx, a worker slowed by the fault-injecting proxy (``localstack/fault_proxy.py``),
every worker unreachable then one back, and a worker SIGKILLed.

Writes ``loadtest/results/bench-workers.json`` (schema in ``loadtest/report/build.py``).

Environment: ``BENCH_ROUNDS`` (3), ``BENCH_REPEAT_SECONDS`` (10),
``BENCH_WORKERS_CONCURRENCY`` (8), ``BENCH_MAX_TOKENS`` (32), ``BENCH_PROFILE``
(``cpu-tiny``), ``BENCH_MODEL`` (served model name).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.bench.replicas import RESULTS, LoopResult, _stat, closed_loop
from loadtest.bench.worker import machine_description
from loadtest.locust.photos import photo
from loadtest.locust.workload import chat_body
from localstack.fault_proxy import FaultProxy
from localstack.processes import (
    NO_AUTH,
    LocalProcess,
    signal_tree,
    start_gateway,
    start_nginx,
    start_worker,
)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = float(os.environ.get("BENCH_REPEAT_SECONDS", "10"))
CONCURRENCY = int(os.environ.get("BENCH_WORKERS_CONCURRENCY", "8"))
MAX_TOKENS = int(os.environ.get("BENCH_MAX_TOKENS", "32"))
PROFILE = os.environ.get("BENCH_PROFILE", "cpu-tiny")
MODEL = os.environ.get("BENCH_MODEL", "qwen3-vl-tiny")
SLOW_DELAY_S = float(os.environ.get("BENCH_SLOW_DELAY_S", "0.25"))
# Clients in the all-down drill pause this long after a 503: a client backing off, but
# briefly, so recovery is still seen within a tenth of a second.
BACKOFF_S = 0.1
SETUPS = ("1", "2")
WORKLOAD = "photo questions"


Action = Callable[[], Awaitable[dict[str, Any]]]


async def _under_load(
    url: str, body: dict[str, Any], action: Action
) -> tuple[LoopResult, dict[str, Any]]:
    """The closed loop against ``url``; ``action`` strikes a third of the way in."""
    loop = asyncio.create_task(closed_loop(url, body, CONCURRENCY, SECONDS))
    await asyncio.sleep(SECONDS / 3)
    facts = await action()
    return await loop, facts


def _drill(name: str, url: str, body: dict[str, Any], action: Action, what: str) -> dict[str, Any]:
    result, facts = asyncio.run(_under_load(url, body, action))
    return _report_drill(name, result, facts, what)


def _report_drill(
    name: str, result: LoopResult, facts: dict[str, Any], what: str
) -> dict[str, Any]:
    p99 = result.percentile(0.99)
    extra = ", ".join(f"{k} {v}" for k, v in facts.items())
    print(
        f"  {name}: {result.requests} ok, {result.errors} client errors, p99 {p99:.0f} ms"
        + (f", {extra}" if extra else ""),
        flush=True,
    )
    return {
        "requests": result.requests + result.errors,
        "client_errors": result.errors,
        "p99_latency_ms": {"median": p99, "min": p99, "max": p99},
        **facts,
        "description": f"{CONCURRENCY} clients for {SECONDS:.0f} s; {what}",
    }


async def _worker_health(gateway_url: str, worker_url: str) -> float | None:
    """The gateway's gateway_worker_healthy for one worker (None: not exported)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gateway_url}/metrics") as response,
    ):
        text = await response.text()
    prefix = f'gateway_worker_healthy{{worker="{worker_url}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    return None


async def _until_health(gateway_url: str, worker_url: str, value: float) -> float:
    started = time.perf_counter()
    while True:  # polling a remote gauge: there is no event to wait on
        if await _worker_health(gateway_url, worker_url) == value:
            return time.perf_counter() - started
        await asyncio.sleep(0.02)


def _freeze(gateway: LocalProcess, victim: LocalProcess) -> Action:
    async def action() -> dict[str, Any]:
        signal_tree(victim, signal.SIGSTOP)
        ejected_s = await _until_health(gateway.url, victim.url, 0.0)
        await asyncio.sleep(SECONDS / 3)
        signal_tree(victim, signal.SIGCONT)
        return {"ejected_after_s": round(ejected_s, 2)}

    return action


def _terminate(victim: LocalProcess) -> Action:
    async def action() -> dict[str, Any]:
        victim.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(victim.process.wait, 60)
        return {"gateway_exit_code": code}

    return action


def _kill(victim: LocalProcess) -> Action:
    async def action() -> dict[str, Any]:
        signal_tree(victim, signal.SIGKILL)
        return {}

    return action


async def _choices_by_worker(gateway_url: str) -> Counter[str]:
    """Attempts the gateway has sent to each worker (gateway_worker_choices_total)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gateway_url}/metrics") as response,
    ):
        text = await response.text()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("gateway_worker_choices_total{"):
            labels, value = line.rsplit(" ", 1)
            worker = labels.split('worker="', 1)[1].split('"', 1)[0]
            counts[worker] += int(float(value))
    return counts


def _share(after: Counter[str], before: Counter[str], worker: str) -> float:
    sent = after - before
    return round(sent[worker] / max(1, sum(sent.values())), 2)


async def _slow_worker(
    run_dir: Path, workers: list[LocalProcess], env: dict[str, str], body: dict[str, Any]
) -> tuple[LoopResult, dict[str, Any]]:
    """Worker B behind the fault proxy; a third of the way in every chunk to and from it
    is delayed. Its share of attempts before and after says whether traffic moved."""
    a, b = workers
    async with FaultProxy("127.0.0.1", b.port) as proxy:
        slow_env = {**env, "GATEWAY_AFFINITY_ENABLED": "false"}
        gateway = await asyncio.to_thread(start_gateway, [a.url, proxy.url], run_dir, env=slow_env)
        try:
            start = await _choices_by_worker(gateway.url)
            loop = asyncio.create_task(closed_loop(gateway.url, body, CONCURRENCY, SECONDS))
            await asyncio.sleep(SECONDS / 3)
            struck = await _choices_by_worker(gateway.url)
            proxy.delay_s = SLOW_DELAY_S
            result = await loop
            end = await _choices_by_worker(gateway.url)
        finally:
            await asyncio.to_thread(gateway.stop)
    return result, {
        "slow_share_before": _share(struck, start, proxy.url),
        "slow_share_after": _share(end, struck, proxy.url),
    }


@dataclass(frozen=True)
class Answer:
    started: float
    finished: float
    status: int  # 0: the connection failed
    retry_after: str | None


async def _timeline(url: str, body: dict[str, Any], seconds: float) -> list[Answer]:
    """A closed loop that keeps every answer's times and status (closed_loop counts
    only successes); clients pause BACKOFF_S after a failure."""
    answers: list[Answer] = []
    payload = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def client() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    async with session.post(
                        f"{url}/v1/chat/completions", data=payload, headers=headers
                    ) as response:
                        await response.read()
                        status, retry_after = response.status, response.headers.get("Retry-After")
                except (aiohttp.ClientError, TimeoutError):
                    status, retry_after = 0, None
                answers.append(Answer(started, time.perf_counter(), status, retry_after))
                if status != 200:
                    await asyncio.sleep(BACKOFF_S)

        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return answers


def _p99_ms(answers: list[Answer]) -> float:
    latencies = sorted((a.finished - a.started) * 1000 for a in answers)
    return latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0.0


async def _all_down(
    run_dir: Path, workers: list[LocalProcess], env: dict[str, str], body: dict[str, Any]
) -> dict[str, Any]:
    """Both workers behind fault proxies; a third of the way in both stop listening (as
    dead workers do), a third later A listens again."""
    async with (
        FaultProxy("127.0.0.1", workers[0].port) as proxy_a,
        FaultProxy("127.0.0.1", workers[1].port) as proxy_b,
    ):
        gateway = await asyncio.to_thread(
            start_gateway, [proxy_a.url, proxy_b.url], run_dir, env=env
        )
        try:
            loop = asyncio.create_task(_timeline(gateway.url, body, SECONDS))
            await asyncio.sleep(SECONDS / 3)
            down_at = time.perf_counter()
            await proxy_a.stop_listening()
            await proxy_b.stop_listening()
            await asyncio.sleep(SECONDS / 3)
            back_at = time.perf_counter()
            await proxy_a.listen()
            answers = await loop
        finally:
            await asyncio.to_thread(gateway.stop)
    # Requests sent while no worker listened (those in flight at the cut are left out:
    # they waited on a worker, not on the gateway's refusal).
    outage = [a for a in answers if down_at < a.started and a.finished < back_at]
    refused = [a for a in outage if a.status == 503]
    served_again = [a.finished for a in answers if a.started > back_at and a.status == 200]
    before = [a for a in answers if a.finished < down_at]
    statuses = Counter(a.status for a in outage)
    print(f"  all-down statuses during the outage: {dict(statuses)}", flush=True)
    return {
        "requests": len(answers),
        "client_errors": sum(a.status != 200 for a in before),
        "p99_latency_ms": {"median": (p99 := _p99_ms(refused)), "min": p99, "max": p99},
        "outage_answers": len(outage),
        "outage_503_share": round(len(refused) / max(1, len(outage)), 3),
        "retry_after_share": round(
            sum(a.retry_after is not None for a in refused) / max(1, len(refused)), 3
        ),
        "recovered_after_s": round(min(served_again) - back_at, 2) if served_again else None,
        "description": f"{CONCURRENCY} clients for {SECONDS:.0f} s, pausing {BACKOFF_S} s "
        f"after a failure; both workers unreachable from {SECONDS / 3:.1f} s (fault proxy "
        f"stops listening), worker A back {SECONDS / 3:.1f} s later. p99: the answers to "
        "requests sent during the outage; client_errors: failures before it; "
        "recovered_after_s: from A listening again to the first 200.",
    }


def _drills(
    run_dir: Path, workers: list[LocalProcess], gateway: LocalProcess, env: dict[str, str],
    body: dict[str, Any], processes: list[LocalProcess],
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """SIGSTOP, a slowdown and SIGKILL of worker B under load on the 2-worker gateway, every
    worker down then one back, and SIGTERM of one of two gateways behind Nginx (B is
    killed last: nothing runs after it)."""
    b = workers[1]
    drills = {
        "worker SIGSTOP under load": _drill(
            "SIGSTOP drill", gateway.url, body, _freeze(gateway, b),
            f"worker B SIGSTOPped after {SECONDS / 3:.1f} s, SIGCONTed {SECONDS / 3:.1f} s "
            "after its ejection; ejected_after_s: until the gateway marked it unhealthy "
            "(health checks every 0.5 s, 2 s timeout). Requests it held move to worker A.",
        )
    }  # fmt: skip
    asyncio.run(_until_health(gateway.url, b.url, 1.0))
    second = start_gateway([w.url for w in workers], run_dir, env=env)
    processes.append(second)
    nginx = start_nginx([f"127.0.0.1:{gateway.port}", f"127.0.0.1:{second.port}"], run_dir)
    processes.append(nginx)
    drills["gateway SIGTERM under load"] = _drill(
        "gateway SIGTERM drill", nginx.url, body, _terminate(second),
        f"through Nginx to 2 gateways; one SIGTERMed after {SECONDS / 3:.1f} s: it fails "
        "readiness, finishes its in-flight requests and exits; Nginx sends the rest to "
        "the other.",
    )  # fmt: skip
    result, facts = asyncio.run(_slow_worker(run_dir, workers, env, body))
    drills["slow worker under load"] = _report_drill(
        "slow-worker drill", result, facts,
        f"worker B behind the fault proxy; after {SECONDS / 3:.1f} s every chunk to and "
        f"from it waits {SLOW_DELAY_S} s. Affinity off, so the shares show load-aware "
        "routing alone: B's share of attempts before and after the slowdown.",
    )  # fmt: skip
    drills["all workers down"] = asyncio.run(_all_down(run_dir, workers, env, body))
    print(
        "  all-down drill: p99 of refusals {:.0f} ms, recovered after {} s".format(
            drills["all workers down"]["p99_latency_ms"]["median"],
            drills["all workers down"]["recovered_after_s"],
        ),
        flush=True,
    )
    drills["worker SIGKILL under load"] = _drill(
        "SIGKILL drill", gateway.url, body, _kill(b),
        f"worker B SIGKILLed (launcher, API server, engine) after {SECONDS / 3:.1f} s. "
        "Requests it held are retried on worker A before any byte reaches the client.",
    )  # fmt: skip
    return drills


def main() -> None:
    run_dir = Path(os.environ.get("RUN_DIR", ".run")) / "bench-workers"
    processes: list[LocalProcess] = []
    body: dict[str, Any] = chat_body(
        MODEL,
        [photo(11, "listing", "bag")],
        "Is this bag real leather?",
        max_tokens=MAX_TOKENS,
        temperature=0.0,
        stream=False,
    )
    body["ignore_eos"] = True
    body["min_tokens"] = MAX_TOKENS
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in SETUPS}
    ratios: list[float] = []
    errors = 0
    env = {"GATEWAY_CACHE_ENABLED": "false", "GATEWAY_HEALTH_INTERVAL_S": "0.5", **NO_AUTH}
    try:
        workers = [
            start_worker(run_dir, profile=PROFILE, env={"WORKER_CPU_THREADS_BIND": str(i)})
            for i in range(2)
        ]
        processes += workers
        gateways = {
            "1": start_gateway([workers[0].url], run_dir, env=env),
            "2": start_gateway([w.url for w in workers], run_dir, env=env),
        }
        processes += gateways.values()
        print(f"workers: {ROUNDS} rounds, {CONCURRENCY} clients for {SECONDS:.0f}s", flush=True)
        for round_index in range(ROUNDS):
            order = SETUPS if round_index % 2 == 0 else SETUPS[::-1]
            thru: dict[str, float] = {}
            for setup in order:
                loop = asyncio.run(closed_loop(gateways[setup].url, body, CONCURRENCY, SECONDS))
                errors += loop.errors
                runs[setup].append(
                    {
                        "throughput": loop.throughput,
                        "median_ms": loop.percentile(0.5),
                        "p99_ms": loop.percentile(0.99),
                    }
                )
                thru[setup] = loop.throughput
                print(
                    f"  round {round_index + 1}/{ROUNDS} {setup} worker(s): "
                    f"{loop.throughput:.2f} req/s, p99 {loop.percentile(0.99):.0f} ms, "
                    f"{loop.errors} errors",
                    flush=True,
                )
            ratios.append(thru["2"] / thru["1"])
        drills = _drills(run_dir, workers, gateways["2"], env, body, processes)
    finally:
        for process in reversed(processes):
            process.stop()

    workloads: dict[str, dict[str, Any]] = {
        WORKLOAD: {
            "description": f"one chat request (640×480 JPEG, max_tokens {MAX_TOKENS}, "
            f"ignore_eos), {CONCURRENCY} clients back to back for {SECONDS:.0f} s per setup; "
            "answer cache off, so every request reaches a worker.",
            "throughput_rps": {s: _stat([r["throughput"] for r in runs[s]]) for s in SETUPS},
            "median_latency_ms": {s: _stat([r["median_ms"] for r in runs[s]]) for s in SETUPS},
            "p99_latency_ms": {s: _stat([r["p99_ms"] for r in runs[s]]) for s in SETUPS},
            "ratio": _stat(ratios),
        }
    }
    report = {
        "machine": machine_description(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "workload": f"1 or 2 {PROFILE} workers (one core each) behind one gateway",
        "rounds": ROUNDS,
        "profile": PROFILE,
        "workloads": workloads,
        "drills": drills,
        "notes": f"{errors} failed requests over all rounds. Image affinity "
        f"{'off' if os.environ.get('GATEWAY_AFFINITY_ENABLED', '').lower() == 'false' else 'on'}"
        " (one photo in every request: with affinity on, it concentrates on one worker "
        "until the load bound). On a 2-core machine the second worker shares a core with "
        "the gateway and this client, so the ratio measures contention, not scaling.",
    }
    ratio = workloads[WORKLOAD]["ratio"]
    print(f"\n2 workers / 1: {ratio['median']:.3f} ({ratio['min']:.3f}-{ratio['max']:.3f})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench-workers.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
