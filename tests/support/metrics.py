"""Reading the gateway's Prometheus samples."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families


async def scrape(client: httpx.AsyncClient, base_url: str) -> dict[str, float]:
    """Prometheus samples as {'name{label="v",...}': value}, labels sorted."""
    response = await client.get(f"{base_url}/metrics")
    response.raise_for_status()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def total(
    samples: dict[str, float], name: str, where: Callable[[str], bool] = lambda _: True
) -> float:
    return sum(v for k, v in samples.items() if k.startswith(name + "{") and where(k))
