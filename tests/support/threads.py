"""Which thread ran a piece of work: for the tests that keep work off the event loop."""

from __future__ import annotations

import threading
from typing import Any

import pytest


def record_threads(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[str]:
    """Wrap ``module.name`` so that each call appends the name of the thread it ran in."""
    seen: list[str] = []
    real = getattr(module, name)

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, recording)
    return seen


def off_the_loop(seen: list[str]) -> bool:
    """Every recorded call ran in a thread other than the event loop's (the main one)."""
    return bool(seen) and all(name != threading.main_thread().name for name in seen)
