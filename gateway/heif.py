"""HEIC/HEIF, the iPhone camera's default format, through pillow-heif (libheif).

No worker reads HEIF: the gateway converts it (validation/reshape.py), as it flattens a
GIF. Its size is read from the container (``ispe`` boxes: libheif parses the boxes and
decodes nothing until asked), so the pixel cap refuses a bomb before any decoding.
libheif applies the container's rotation and mirroring when it decodes, and reports the
size as displayed: a HEIF photo arrives upright, with no EXIF tag left to apply.
"""

from __future__ import annotations

import io
from typing import Final

import pillow_heif
from PIL import Image

# ISO base media files start with an "ftyp" box; these major brands are HEIF images
# (HEVC-coded, single images or sequences, and the generic MIAF/"mif1" brands).
HEIF_BRANDS: Final = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
)


def is_heif(data: bytes) -> bool:
    return len(data) >= 12 and data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS


def heif_size(data: bytes) -> tuple[int, int] | None:
    """The primary image's (width, height) as displayed, or None when the container is
    malformed. Parses boxes only: no pixel is decoded."""
    try:
        heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)
        width, height = heif.size
    except Exception:  # libheif raises several types for a malformed container
        return None
    return int(width), int(height)


def heif_image(data: bytes) -> Image.Image:
    """The primary image, decoded and upright (raises on a corrupt file)."""
    heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)
    image = heif.to_pillow()
    image.load()
    return image
