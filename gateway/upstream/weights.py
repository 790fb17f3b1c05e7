"""The choice of pool: smooth weighted round-robin (Nginx's), over the pools that can serve.

With weights stable 95 and canary 5, every 100 consecutive choices give canary exactly 5,
spread out rather than in a burst, and a pool with no available worker drops out of the
rotation until it has one again (its share goes to the others meanwhile).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping


class WeightedRoundRobin:
    def __init__(self, weights: Mapping[str, int]) -> None:
        self._weights = dict(weights)
        self._current = dict.fromkeys(weights, 0)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._weights)

    def pick(self, eligible: Collection[str]) -> str | None:
        """The next pool among ``eligible`` (None when none is)."""
        names = [n for n in self._weights if n in eligible]
        if not names:
            return None
        total = 0
        for name in names:
            self._current[name] += self._weights[name]
            total += self._weights[name]
        best = max(names, key=lambda n: self._current[n])
        self._current[best] -= total
        return best
