"""prometheus_client's metric types with a faster labels(): the types gateway/metrics.py
defines every metric with."""

from __future__ import annotations

from typing import cast

import prometheus_client


# A labelled series is looked up several times per request (eight on a cache hit):
# prometheus_client's labels() checks its arguments and takes a lock every time. These
# find a series that exists in one dict lookup, and defer to labels() for the rest
# (new series, keyword labels, values that are not strings).
class Counter(prometheus_client.Counter):
    def labels(self, *values: object, **by_name: object) -> Counter:
        found = None if by_name else self._metrics.get(values)  # type: ignore[arg-type]
        return cast(Counter, found) if found is not None else super().labels(*values, **by_name)


class Gauge(prometheus_client.Gauge):
    def labels(self, *values: object, **by_name: object) -> Gauge:
        found = None if by_name else self._metrics.get(values)  # type: ignore[arg-type]
        return cast(Gauge, found) if found is not None else super().labels(*values, **by_name)


class Histogram(prometheus_client.Histogram):
    def labels(self, *values: object, **by_name: object) -> Histogram:
        found = None if by_name else self._metrics.get(values)  # type: ignore[arg-type]
        return cast(Histogram, found) if found is not None else super().labels(*values, **by_name)
