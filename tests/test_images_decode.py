"""The full decode check decodes a JPEG at 1/8 scale (draft mode): it must refuse exactly
what a decode at full scale refuses. A seeded corpus of corrupted Pillow-made JPEGs
(baseline, progressive, grey, CMYK, 4:4:4 and 4:2:0, restart markers) is judged both
ways; named cases pin the refusals that matter (truncation, a garbage scan)."""

from __future__ import annotations

import io
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from gateway import images
from gateway.errors import ErrorCode, GatewayError
from gateway.images import ImageLimits, check_image, read_dimensions, verify_decode
from tests.support.images import data_uri, image_bytes

LIMITS = ImageLimits(max_pixels=4096 * 4096, verify_decode=True)
_SAVES: tuple[dict[str, Any], ...] = (
    {},
    {"progressive": True},
    {"subsampling": 0, "quality": 95},
    {"subsampling": 2, "quality": 60},
    {"optimize": True},
    {"restart_marker_blocks": 2},
    {"progressive": True, "subsampling": 1},
)
_MARKERS = (0xD0, 0xD3, 0xC4, 0xDB, 0xDA, 0xE1, 0xD9, 0x00, 0xFE, 0x01, 0xC0)


def _full_scale_decodes(data: bytes) -> bool:
    """The reference: what the check did before draft mode (and what a worker's Pillow does)."""
    size = read_dimensions(data, "jpeg")
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
            if image.size != size:
                return False
            image.load()
    except Exception:
        return False
    return True


def _check_decodes(data: bytes) -> bool:
    size = read_dimensions(data, "jpeg")
    return size is not None and images._decodes(data, "jpeg", size)


def _noise(mode: str, size: tuple[int, int], rng: random.Random) -> Image.Image:
    bands = [Image.effect_noise(size, rng.randint(20, 80)) for _ in range(3)]
    return Image.merge("RGB", bands).convert(mode)


def _sources(rng: random.Random) -> Iterator[tuple[str, bytes]]:
    for mode in ("RGB", "L", "CMYK"):
        for save in _SAVES:
            size = (rng.randint(9, 160), rng.randint(9, 160))
            out = io.BytesIO()
            _noise(mode, size, rng).save(out, "JPEG", **save)
            yield f"{mode} {save}", out.getvalue()
    out = io.BytesIO()
    _noise("RGB", (640, 480), rng).save(out, "JPEG", quality=85)
    yield "RGB 640x480", out.getvalue()


def _scan_start(data: bytes) -> int:
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")


def _variants(data: bytes, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    scan, n = _scan_start(data), len(data)
    yield "truncated in the scan", data[: rng.randint(scan, n - 1)]
    yield "truncated in the header", data[: rng.randint(2, scan)]
    flipped = bytearray(data)
    flipped[rng.randint(scan, n - 3)] ^= 1 << rng.randint(0, 7)
    yield "one bit flipped", bytes(flipped)
    scattered = bytearray(data)
    for _ in range(rng.randint(1, 20)):
        scattered[rng.randint(scan, n - 3)] = rng.randint(0, 255)
    yield "bytes overwritten", bytes(scattered)
    at = rng.randint(scan, n - 3)
    length = rng.randint(1, min(400, n - 2 - at))
    yield "a run overwritten", data[:at] + rng.randbytes(length) + data[at + length :]
    yield "a garbage scan", data[:scan] + rng.randbytes(n - 2 - scan) + b"\xff\xd9"
    at = rng.randint(scan, n - 3)
    yield "a marker inserted", data[:at] + bytes([0xFF, rng.choice(_MARKERS)]) + data[at:]
    at = rng.randint(scan, n - 3)
    yield "bytes cut out", data[:at] + data[at + rng.randint(1, 200) :]
    header = bytearray(data)
    header[rng.randint(2, scan - 1)] = rng.randint(0, 255)
    yield "a header byte changed", bytes(header)


def test_draft_and_full_scale_decodes_refuse_the_same_jpegs() -> None:
    rng = random.Random(20240611)
    judged: Counter[tuple[str, bool]] = Counter()
    disagree: list[tuple[str, str]] = []
    for source, data in _sources(rng):
        assert _full_scale_decodes(data), source
        assert _check_decodes(data), source
        for _ in range(12):
            for kind, variant in _variants(data, rng):
                full = _full_scale_decodes(variant)
                judged[kind, full] += 1
                if _check_decodes(variant) != full:
                    disagree.append((source, kind))
    assert disagree == []
    # The corpus holds both verdicts for each kind of damage but truncation, which is
    # always refused: the comparison above is not between two always-true answers.
    for kind in ("one bit flipped", "a garbage scan", "a marker inserted", "bytes cut out"):
        assert judged[kind, True], kind
        assert judged[kind, False], kind
    assert judged["truncated in the scan", False]
    assert not judged["truncated in the scan", True]


def _cases() -> dict[str, bytes]:
    photo = image_bytes("JPEG", (640, 480), quality=90)
    progressive = image_bytes("JPEG", (640, 480), progressive=True)
    scan, n = _scan_start(photo), len(photo)
    middle = (scan + n) // 2
    rng = random.Random(7)
    return {
        "truncated": photo[:middle],
        "truncated before its end marker": photo[:-2],
        "progressive, truncated": progressive[: len(progressive) * 2 // 3],
        "a garbage scan": photo[:scan] + rng.randbytes(n - 2 - scan) + b"\xff\xd9",
        "a table marker in the middle of the scan": photo[:middle] + b"\xff\xc4" + photo[middle:],
        "a second scan header in the middle": photo[:middle] + b"\xff\xda" + photo[middle:],
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_a_damaged_jpeg_gets_our_400(name: str) -> None:
    data = _cases()[name]
    assert not _full_scale_decodes(data)
    with pytest.raises(GatewayError) as caught:
        check_image(data_uri(data, "image/jpeg"), LIMITS, param="p")
    assert (caught.value.code, caught.value.param) == (ErrorCode.INVALID_IMAGE, "p")
    # The same through the pixel check's path, which decodes after the cache lookup.
    checked = check_image(data_uri(data, "image/jpeg"), ImageLimits(4096 * 4096, False))
    with pytest.raises(GatewayError) as caught:
        verify_decode(checked, "p")
    assert caught.value.message == "The image could not be decoded."


def test_corrupt_huffman_data_is_accepted_as_the_workers_pillow_accepts_it() -> None:
    # libjpeg only warns about a scan of wrong but complete entropy-coded data: the check
    # promises what a full decode refuses, no more (a limit of the check, kept on purpose).
    photo = image_bytes("JPEG", (320, 240), quality=90)
    scan = _scan_start(photo)
    zeros = photo[:scan] + bytes(len(photo) - 2 - scan) + b"\xff\xd9"
    assert _full_scale_decodes(zeros)
    assert _check_decodes(zeros)


def test_the_decode_check_uses_the_bytes_the_checks_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    photo = image_bytes("JPEG", (320, 240))
    checked = check_image(data_uri(photo, "image/jpeg"), ImageLimits(4096 * 4096, False))
    assert checked.data == photo
    monkeypatch.setattr(images, "b64decode", None)  # no second base64 decode
    verify_decode(checked, "p")


def test_the_decode_check_decodes_the_base64_when_it_has_no_bytes() -> None:
    photo = image_bytes("JPEG", (320, 240))
    for data, decodes in ((photo, True), (photo[:-300], False)):
        checked = check_image(data_uri(data, "image/jpeg"), ImageLimits(4096 * 4096, False))
        bare = images.CheckedImage(info=checked.info, data_uri=checked.data_uri)
        assert bare.data is None
        if decodes:
            verify_decode(bare, "p")
        else:
            with pytest.raises(GatewayError):
                verify_decode(bare, "p")
