"""The synthetic product photos: deterministic, decodable, of the sizes asked for."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from loadtest.locust.photos import KINDS, SIZES, PhotoSpec, image_tokens, main, make_photo, photo


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("size", sorted(SIZES))
def test_every_size_decodes_with_its_dimensions_and_format(size: str) -> None:
    made = photo(11, size)
    image = _decode(made.data)

    assert image.size == (SIZES[size].width, SIZES[size].height)
    assert image.format == SIZES[size].format
    assert image.mode == "RGB"
    assert made.mime == ("image/png" if SIZES[size].format == "PNG" else "image/jpeg")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_the_same_spec_gives_the_same_bytes(fmt: str) -> None:
    spec = PhotoSpec(seed=42, width=333, height=217, format=fmt)  # type: ignore[arg-type]
    first = make_photo(spec).data
    make_photo.cache_clear()
    again = make_photo(spec).data

    assert first == again
    assert _decode(first).size == (333, 217)
    assert _decode(first).format == fmt


def test_different_seeds_and_kinds_give_different_photos() -> None:
    photos = {photo(seed, "listing").data for seed in range(6)}
    photos |= {photo(3, "listing", kind).data for kind in KINDS}

    assert len(photos) == 6 + len(KINDS) - 1  # seed 3 with its own kind is already there
    assert {PhotoSpec(seed, 64, 64).resolved_kind() for seed in range(8)} == set(KINDS)


def test_data_uri_and_base64_carry_the_same_bytes() -> None:
    made = photo(5, "thumbnail")
    prefix, _, payload = made.data_uri().partition(",")

    assert prefix == "data:image/png;base64"
    assert base64.b64decode(payload, validate=True) == made.data
    assert made.base64() == payload


def test_image_tokens_follow_qwen3_vl() -> None:
    assert {name: size.image_tokens for name, size in SIZES.items()} == {
        "thumbnail": 64, "listing": 300, "square": 625, "phone": 1200, "hd": 2040,
    }  # fmt: skip
    assert image_tokens(1920, 1080) == 2040


def test_tiny_photos_are_refused() -> None:
    with pytest.raises(ValueError, match="16x16"):
        make_photo(PhotoSpec(seed=1, width=8, height=300))


def test_the_command_writes_one_sample_per_kind_and_size(tmp_path: Path) -> None:
    main([str(tmp_path / "samples")])
    written = sorted((tmp_path / "samples").iterdir())

    assert len(written) == len(KINDS) * len(SIZES)
    for path in written:
        assert _decode(path.read_bytes()).format in ("JPEG", "PNG")
