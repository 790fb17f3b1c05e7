"""Issue 15, section 2: the coalescing drills with real processes
(loadtest/bench/coalesce_drills.py): two gateway replicas, a private Redis, a worker double
with 3-second generations."""

from __future__ import annotations

from pathlib import Path

from loadtest.bench.coalesce_drills import kill_the_leader, the_leader_hangs_up

# Generous against a loaded 2-core machine, and far below the old behaviour: waiters
# of a dead leader waited out coalesce_wait_timeout_s (120 s), then all called workers.
SLACK_S = 6.0


async def test_sigkill_of_the_leaders_replica_costs_a_lease_and_one_generation(
    tmp_path: Path,
) -> None:
    result = await kill_the_leader(tmp_path, lease_s=2.0, generation_s=3.0, waiters=8)
    assert result.answered == result.waiters
    assert result.extra_worker_requests <= 1
    assert result.seconds_to_last_answer < result.lease_s + result.generation_s + SLACK_S


async def test_the_leaders_client_hanging_up_costs_no_worker_request(tmp_path: Path) -> None:
    result = await the_leader_hangs_up(tmp_path, lease_s=2.0, generation_s=3.0, waiters=8)
    assert result.answered == result.waiters
    assert result.extra_worker_requests == 0
    assert result.seconds_to_last_answer < result.generation_s + SLACK_S


async def test_a_streaming_leaders_client_hanging_up_costs_no_worker_request(
    tmp_path: Path,
) -> None:
    result = await the_leader_hangs_up(tmp_path, 2.0, 3.0, waiters=8, stream=True)
    assert result.answered == result.waiters
    assert result.extra_worker_requests == 0
