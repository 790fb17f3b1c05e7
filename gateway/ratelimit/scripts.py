"""The rate limits' Redis side as Lua scripts: one round trip per charge.

A sliding window counter per key and limit (this minute's count and the last one's,
weighted by how much of the last is still inside the window), kept in two Redis keys
whose TTLs, read on Redis' own clock, say where the window stands: the same algorithm
and the same arithmetic as the ``limits`` library's, but a charge and the figures for
the x-ratelimit-* headers come back from one script instead of two, and the
concurrency lease rides along with the request unit. Python's part is only the reset
time, from the TTLs the script returns.
"""

from __future__ import annotations

from typing import Final

WINDOW_MS: Final = 60_000

# charge(prev, cur, limit, cost) -> {allowed, previous count, its ttl, current, its ttl}:
# the window moves on when the current counter's TTL fell under one window (it is set
# to two), exactly as limits' acquire_sliding_window.lua does; a refused charge costs
# nothing.
_CHARGE_FUNCTION: Final = """
local expiry = tonumber(ARGV[1])
local function charge(prev_key, cur_key, limit, cost)
  local cur_ttl = tonumber(redis.call('PTTL', cur_key))
  if cur_ttl > 0 and cur_ttl < expiry then
    redis.call('RENAME', cur_key, prev_key)
    redis.call('SET', cur_key, 0, 'PX', cur_ttl + expiry)
  end
  local prev = tonumber(redis.call('GET', prev_key)) or 0
  local prev_ttl = tonumber(redis.call('PTTL', prev_key))
  local cur = tonumber(redis.call('GET', cur_key)) or 0
  cur_ttl = tonumber(redis.call('PTTL', cur_key))
  if prev_ttl < 0 then prev_ttl = 0 end
  if cur_ttl < 0 then cur_ttl = 0 end
  local weighted = math.floor(prev * prev_ttl / expiry) + cur
  if cost > limit or weighted + cost > limit then
    return {0, prev, prev_ttl, cur, cur_ttl}
  end
  if cur_ttl > 0 then
    redis.call('INCRBY', cur_key, cost)
  else
    redis.call('SET', cur_key, cost, 'PX', expiry * 2)
    cur_ttl = expiry * 2
  end
  return {1, prev, prev_ttl, cur + cost, cur_ttl}
end
"""

# KEYS: previous, current. ARGV: window ms, limit, cost.
CHARGE: Final = (
    _CHARGE_FUNCTION + "return charge(KEYS[1], KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[3]))"
)

# KEYS: the key's lease set, requests previous, requests current.
# ARGV: window ms, requests limit, slots limit, lease ttl ms, lease id.
# The slot first: a request refused for concurrency ({-1}) uses no request unit; one
# refused for requests takes no slot.
ADMIT: Final = (
    _CHARGE_FUNCTION
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return {-1} end
local result = charge(KEYS[2], KEYS[3], tonumber(ARGV[2]), 1)
if result[1] == 1 then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return result
"""
)


def _limits_of(namespace: str, key_id: str) -> str:
    """Every Redis key of one API key's limits carries its id as the Redis Cluster hash tag:
    one slot, so the scripts that touch several of them (the window's two counters and
    their RENAME, the lease set beside the requests window) run on a cluster too."""
    return f"{namespace}:ratelimit:{{{key_id}}}"


def window_keys(namespace: str, kind: str, key_id: str) -> tuple[str, str]:
    prefix = f"{_limits_of(namespace, key_id)}:{kind}"
    return f"{prefix}:prev", f"{prefix}:cur"


def lease_set_key(namespace: str, key_id: str) -> str:
    """The sorted set of the API key's concurrency leases."""
    return f"{_limits_of(namespace, key_id)}:concurrent"
