"""Helpers for the near-duplicate tests: a product shot, its re-encodings, chat bodies."""

from __future__ import annotations

import asyncio
import hashlib
import io
from typing import Any

import httpx
from PIL import Image

from loadtest.bench.near_corpus import Product, encode
from tests.support.images import data_uri
from tests.support.requests import image_chat_body

QUESTION = "Is this bag real leather?"
BAG = Product(7, "bag", (176, 48, 40), "NOVA", "circle", "M", (232, 228, 220))
INDEXED = 'gateway_cache_near_indexed_total{result="indexed"}'


def jpeg(image: Image.Image, quality: int = 90, scale: float = 1.0) -> bytes:
    if scale != 1.0:
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return encode(image, "JPEG", quality)


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def body(photo: bytes, question: str = QUESTION, **extra: Any) -> dict[str, Any]:
    mime = "image/png" if photo.startswith(b"\x89PNG") else "image/jpeg"
    fields = {"max_tokens": 8, "temperature": 0, **extra}
    return image_chat_body(question, data_uri(photo, mime), **fields)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def indexed(client: httpx.AsyncClient, count: int) -> None:
    """Wait until ``count`` answers are in the index (it is written once they are stored)."""
    for _ in range(200):
        text = (await client.get("/metrics")).text
        found = [row for row in text.splitlines() if row.startswith(INDEXED)]
        if found and float(found[0].split()[-1]) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the answer was never indexed")
