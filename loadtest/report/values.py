"""The report's values: measurements (Stat), targets with their verdicts, and sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NOT_MEASURED = "not measured yet"


@dataclass(frozen=True)
class Stat:
    median: float
    min: float | None = None
    max: float | None = None

    @classmethod
    def parse(cls, value: Any) -> Stat:
        if isinstance(value, bool):
            raise ValueError(f"not a measurement: {value!r}")
        if isinstance(value, int | float):
            return cls(float(value))
        if isinstance(value, dict) and "median" in value:
            low, high = value.get("min"), value.get("max")
            return cls(
                float(value["median"]),
                None if low is None else float(low),
                None if high is None else float(high),
            )
        raise ValueError(f"not a measurement: {value!r}")

    def fmt(self, spec: str = ".2f", unit: str = "") -> str:
        text = f"{self.median:{spec}}{unit}"
        if self.min is not None and self.max is not None and self.min != self.max:
            text += f" ({self.min:{spec}}–{self.max:{spec}})"
        return text

    def error_bar(self) -> tuple[float, float]:
        low = self.median - self.min if self.min is not None else 0.0
        high = self.max - self.median if self.max is not None else 0.0
        return (max(0.0, low), max(0.0, high))


def stat_at(data: dict[str, Any], *path: str) -> Stat:
    value: Any = data
    for key in path:
        if not isinstance(value, dict) or key not in value:
            raise KeyError("/".join(path))
        value = value[key]
    return Stat.parse(value)


def optional_stat(data: dict[str, Any], *path: str) -> Stat | None:
    try:
        return stat_at(data, *path)
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class Target:
    name: str
    threshold: str
    measured: str
    met: bool | None  # None: not measured yet
    section: str = ""

    @property
    def verdict(self) -> str:
        if self.met is None:
            return NOT_MEASURED
        return "met" if self.met else "**missed**"


def at_least(name: str, value: Stat | None, limit: float, spec: str = ".2f") -> Target:
    threshold = f"≥ {limit:{spec}}"
    if value is None:
        return Target(name, threshold, "—", None)
    return Target(name, threshold, value.fmt(spec), value.median >= limit)


def at_most(name: str, value: Stat | None, limit: float, unit: str = "") -> Target:
    threshold = f"≤ {limit:g}{unit}"
    if value is None:
        return Target(name, threshold, "—", None)
    return Target(name, threshold, value.fmt(".2f", unit), value.median <= limit)


@dataclass
class Section:
    key: str
    title: str
    source: str
    how: str  # the command that produces the source
    body: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    figure: str | None = None
    machine: str | None = None
    measured: bool = False
