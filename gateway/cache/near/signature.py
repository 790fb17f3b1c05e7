"""An image's perceptual signature: a 256-bit DCT hash for finding candidates, and a small
colour thumbnail for verifying them (verify.py).

The hash is pHash's construction at PDQ's size: the luminance of the image box-filtered to
64x64, its 2-D DCT-II, the 16x16 lowest frequencies, one bit per coefficient (above their
median or not). Re-encoding, resizing and recompression move few bits; a different picture
moves about half. It cannot see colour (a red bag and the same bag in blue have the same
luminance layout), nor a small local change (a size tag, a logo): the thumbnail can.

The thumbnails are the image box-filtered to 32x32 in CIELAB (L*, a*, b*; D65), where a
Euclidean distance is roughly what a person sees as different, and the 64x64 luminance the
hash was taken from (fine detail: a label's letters, a size tag); one byte per value.

Computed from the bytes the worker receives, decoded as the worker decodes them (no EXIF
rotation: the model sees the stored orientation, so the signature must too). A JPEG is
decoded at a reduced DCT scale (libjpeg's draft mode) that keeps at least 256 pixels a
side: four times the thumbnails' side, so the reduction barely shows in them (at twice,
the same pixels as JPEG and as PNG differed by up to 20 levels at sharp edges), and still
several times cheaper than a full decode.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image

HASH_SIDE: Final = 64  # the luminance thumbnail the DCT runs on
LOW_FREQUENCIES: Final = 16  # 16x16 coefficients: 256 bits
HASH_BYTES: Final = LOW_FREQUENCIES * LOW_FREQUENCIES // 8
THUMB_SIDE: Final = 32
THUMB_BYTES: Final = THUMB_SIDE * THUMB_SIDE * 3
LUMA_BYTES: Final = HASH_SIDE * HASH_SIDE
SIGNATURE_BYTES: Final = HASH_BYTES + THUMB_BYTES + LUMA_BYTES

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class ImageSignature:
    """What the near-duplicate index keeps of one image (about 7 KB)."""

    bits: bytes  # HASH_BYTES: the DCT hash
    thumb: bytes  # THUMB_BYTES: CIELAB thumbnail, row-major, quantised (see _quantise)
    luma: bytes  # LUMA_BYTES: the 64x64 luminance the hash was taken from, row-major

    def encode(self) -> bytes:
        return self.bits + self.thumb + self.luma

    @classmethod
    def decode(cls, raw: bytes) -> ImageSignature:
        if len(raw) != SIGNATURE_BYTES:
            raise ValueError("not a signature")
        return cls(raw[:HASH_BYTES], raw[HASH_BYTES:-LUMA_BYTES], raw[-LUMA_BYTES:])

    def distance(self, other: ImageSignature) -> int:
        return hamming(self.bits, other.bits)

    def lab(self) -> Floats:
        """The thumbnail as (THUMB_SIDE, THUMB_SIDE, 3) L*, a*, b* values."""
        raw = np.frombuffer(self.thumb, dtype=np.uint8).astype(np.float64)
        lab = raw.reshape(THUMB_SIDE, THUMB_SIDE, 3)
        return np.stack((lab[..., 0] * (100 / 255), lab[..., 1] - 128, lab[..., 2] - 128), axis=-1)

    def luminance(self) -> Floats:
        """The 64x64 luminance, 0 to 255."""
        raw = np.frombuffer(self.luma, dtype=np.uint8).astype(np.float64)
        return raw.reshape(HASH_SIDE, HASH_SIDE)


def hamming(a: bytes, b: bytes) -> int:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()


@cache
def _dct_rows() -> Floats:
    """The first LOW_FREQUENCIES rows of the orthonormal DCT-II matrix of size HASH_SIDE."""
    n = HASH_SIDE
    k = np.arange(LOW_FREQUENCIES)[:, None]
    i = np.arange(n)[None, :]
    rows = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    rows[0] /= np.sqrt(2)
    return np.asarray(rows, dtype=np.float64)


def _decode_rgb(data: bytes) -> Image.Image:
    """The image as RGB, decoded at the smallest scale that still covers the thumbnails."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG":
            # Draft mode keeps at least the requested size: 1/2, 1/4 or 1/8 of the full scale.
            image.draft("RGB", (4 * HASH_SIDE, 4 * HASH_SIDE))
        image.load()
        return image.copy() if image.mode == "RGB" else image.convert("RGB")


def _srgb_to_lab(rgb: Floats) -> Floats:
    """sRGB in [0, 255] -> CIELAB (D65)."""
    c = rgb / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array(
        [
            [0.4124564, 0.3575761, 0.1804375],
            [0.2126729, 0.7151522, 0.0721750],
            [0.0193339, 0.1191920, 0.9503041],
        ]
    )
    xyz = linear @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lab_l = 116 * f[..., 1] - 16
    lab_a = 500 * (f[..., 0] - f[..., 1])
    lab_b = 200 * (f[..., 1] - f[..., 2])
    return np.stack((lab_l, lab_a, lab_b), axis=-1)


def _quantise(lab: Floats) -> bytes:
    scaled = np.stack((lab[..., 0] * (255 / 100), lab[..., 1] + 128, lab[..., 2] + 128), axis=-1)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8).tobytes()


def dct_hash(luma: Floats) -> bytes:
    """256 bits from a HASH_SIDE x HASH_SIDE luminance array."""
    rows = _dct_rows()
    coefficients = rows @ luma @ rows.T
    bits = (coefficients > np.median(coefficients)).ravel()
    return np.packbits(bits).tobytes()


def signature_of_image(image: Image.Image) -> ImageSignature:
    """The signature of a decoded RGB image."""
    small = image.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX)
    luma = np.asarray(small, dtype=np.uint8)
    thumb = image.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX)
    lab = _srgb_to_lab(np.asarray(thumb, dtype=np.float64))
    return ImageSignature(dct_hash(luma.astype(np.float64)), _quantise(lab), luma.tobytes())


def compute_signature(data: bytes) -> ImageSignature:
    """The signature of an encoded image (JPEG, PNG, WebP; a GIF arrives as PNG). CPU-bound:
    callers run it off the event loop. Raises ValueError for bytes Pillow cannot decode."""
    try:
        image = _decode_rgb(data)
    except Exception as exc:  # Pillow raises many types for corrupt input; all mean this
        raise ValueError(f"undecodable image: {type(exc).__name__}") from None
    return signature_of_image(image)
