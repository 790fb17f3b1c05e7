"""The stdlib PNG writer: valid images, and every seed a different photo."""

from __future__ import annotations

import io

from PIL import Image

from worker.sample_image import png_bytes


def test_png_decodes_at_the_requested_size() -> None:
    with Image.open(io.BytesIO(png_bytes(37, 21, seed=3))) as image:
        image.load()
        assert image.size == (37, 21)
        assert image.mode == "RGB"


def test_every_seed_is_a_different_photo_and_the_same_seed_the_same() -> None:
    assert png_bytes(16, 16, seed=5) == png_bytes(16, 16, seed=5)
    # The gradient's colours repeat every 256 seeds; the pixels must not.
    seeds = range(0, 5000, 7)
    assert len({png_bytes(16, 16, seed=s) for s in seeds}) == len(seeds)
    assert png_bytes(16, 16, seed=1) != png_bytes(16, 16, seed=257)
