"""docs/LIMITS.md and docs/IMAGES.md state the settings' default values and what images
cost: every number in their tables is checked against gateway/config.py and the estimate,
so the documents stay true when a default changes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Settings
from gateway.ratelimit.estimate import PixelBounds, image_tokens
from gateway.validation.detail import DetailBudgets, sent_size

DOCS = Path(__file__).resolve().parent.parent / "docs"
_ROW = re.compile(r"^\|\s*`(GATEWAY_[A-Z0-9_]+)`\s*\|\s*([0-9,.]+)\s*\|", re.MULTILINE)


def _default(name: str) -> Any:
    """A setting's default, found by its environment variable's name."""
    settings: Any = Settings()
    for prefix, attribute in (("GATEWAY_RATELIMIT_", "ratelimit"),):
        if name.startswith(prefix):
            settings, name = getattr(settings, attribute), name.removeprefix(prefix)
            break
    else:
        name = name.removeprefix("GATEWAY_")
    return getattr(settings, name.lower())


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def test_every_limit_in_limits_md_is_its_settings_default() -> None:
    rows = _ROW.findall((DOCS / "LIMITS.md").read_text())
    names = {name for name, _ in rows}
    # The limits a client can hit, each documented with its value.
    assert {
        "GATEWAY_MAX_IMAGES",
        "GATEWAY_MAX_PROMPT_CHARS",
        "GATEWAY_MAX_TOKENS_CAP",
        "GATEWAY_MAX_BODY_BYTES",
        "GATEWAY_MAX_IMAGE_PIXELS",
        "GATEWAY_IMAGE_HIGH_DETAIL_PIXELS",
        "GATEWAY_IMAGE_LOW_DETAIL_PIXELS",
        "GATEWAY_RATELIMIT_TOKENS_PER_MINUTE",
    } <= names
    wrong = {name: value for name, value in rows if _number(value) != _default(name)}
    assert wrong == {}


IMAGE_SETTINGS = (
    "GATEWAY_IMAGE_HIGH_DETAIL_PIXELS",
    "GATEWAY_IMAGE_LOW_DETAIL_PIXELS",
    "GATEWAY_IMAGE_PROCESSOR_MIN_PIXELS",
    "GATEWAY_IMAGE_PROCESSOR_MAX_PIXELS",
)


def test_the_detail_table_in_images_md_is_the_settings_default() -> None:
    text = (DOCS / "IMAGES.md").read_text()
    settings = Settings()
    for name in IMAGE_SETTINGS:
        stated = re.findall(rf"`{name}`[`,]? ([0-9,]+)", text)
        assert stated, name
        assert {_number(value) for value in stated} == {_default(name)}
    assert settings.image_high_detail_pixels // 1024 == 2048  # "2,048" tokens at most


_COST = re.compile(
    r"^\| (\d+) x (\d+) \| [^|]+ \| (\d+) x (\d+) \| ([0-9,]+) \| (\d+) x (\d+) \| ([0-9,]+) \|$",
    re.MULTILINE,
)


def test_the_cost_table_in_images_md_is_what_the_estimate_counts() -> None:
    settings = Settings()
    budgets = DetailBudgets(settings.image_low_detail_pixels, settings.image_high_detail_pixels)
    bounds = PixelBounds(settings.image_processor_min_pixels, settings.image_processor_max_pixels)
    rows = _COST.findall((DOCS / "IMAGES.md").read_text())
    assert len(rows) >= 5
    for row in rows:
        width, height, hw, hh, high, lw, lh, low = (int(v.replace(",", "")) for v in row)
        for detail, size, tokens in (("high", (hw, hh), high), ("low", (lw, lh), low)):
            assert sent_size(width, height, 1, detail, budgets) == size, (row, detail)
            assert image_tokens(*size, bounds) == tokens, (row, detail)


@pytest.mark.parametrize("doc", ["LIMITS.md", "IMAGES.md"])
def test_the_documents_link_each_other(doc: str) -> None:
    other = "IMAGES.md" if doc == "LIMITS.md" else "LIMITS.md"
    assert f"]({other})" in (DOCS / doc).read_text()
