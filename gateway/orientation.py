"""The EXIF orientation tag (0x0112) of a JPEG, PNG or WebP file, read from its bytes.

Phones store the sensor's pixels as they come and tag how to turn them for display; vLLM
applies the tag when it loads an image (``ImageOps.exif_transpose``), so the gateway must
too wherever it looks at pixels (validation/reshape.py). Read here without Pillow: the
check runs for every image, cache hits included, and the tag sits in the first few
kilobytes. Anything malformed or missing reads as 1 (upright), as Pillow reads it.
"""

from __future__ import annotations

from typing import Final, Literal

UPRIGHT: Final = 1
_ORIENTATION_TAG: Final = 0x0112
_EXIF_HEADER: Final = b"Exif\x00\x00"


def orientation_from_tiff(block: bytes) -> int:
    """The orientation in a TIFF structure (EXIF's payload): IFD0's tag 0x0112."""
    if block.startswith(_EXIF_HEADER):
        block = block[len(_EXIF_HEADER) :]
    order: Literal["little", "big"]
    if block[:4] == b"II*\x00":
        order = "little"
    elif block[:4] == b"MM\x00*":
        order = "big"
    else:
        return UPRIGHT
    ifd = int.from_bytes(block[4:8], order)
    if ifd + 2 > len(block):
        return UPRIGHT
    entries = int.from_bytes(block[ifd : ifd + 2], order)
    for index in range(entries):
        entry = block[ifd + 2 + 12 * index : ifd + 14 + 12 * index]
        if len(entry) < 12:
            return UPRIGHT
        if int.from_bytes(entry[:2], order) == _ORIENTATION_TAG:
            # Type SHORT (3), one value, stored in the first two bytes of the value field.
            if int.from_bytes(entry[2:4], order) != 3:
                return UPRIGHT
            value = int.from_bytes(entry[8:10], order)
            return value if 1 <= value <= 8 else UPRIGHT
    return UPRIGHT


def _jpeg_exif(data: bytes) -> bytes | None:
    i, n = 2, len(data)
    while i + 4 <= n and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD9, 0xDA) or (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)):
            return None  # the tag comes before the frame header in every camera's file
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2:
            return None
        segment = data[i + 4 : i + 2 + length]
        if marker == 0xE1 and segment.startswith(_EXIF_HEADER):
            return segment
        i += 2 + length
    return None


def _png_exif(data: bytes) -> bytes | None:
    i, n = 8, len(data)
    while i + 8 <= n:
        length = int.from_bytes(data[i : i + 4], "big")
        kind = data[i + 4 : i + 8]
        if kind == b"eXIf":
            return data[i + 8 : i + 8 + length]
        if kind in (b"IDAT", b"IEND"):
            return None  # eXIf must come before the image data
        i += 12 + length
    return None


def _webp_exif(data: bytes) -> bytes | None:
    # Only an extended (VP8X) WebP carries metadata, in an "EXIF" chunk.
    if data[12:16] != b"VP8X" or len(data) < 21 or not data[20] & 0x08:
        return None
    i, n = 12, len(data)
    while i + 8 <= n:
        kind = data[i : i + 4]
        length = int.from_bytes(data[i + 4 : i + 8], "little")
        if kind == b"EXIF":
            return data[i + 8 : i + 8 + length]
        i += 8 + length + (length & 1)
    return None


def read_orientation(data: bytes, fmt: str) -> int:
    """The file's EXIF orientation, 1 to 8 (1: upright, or no tag)."""
    if fmt == "jpeg":
        block = _jpeg_exif(data)
    elif fmt == "png":
        block = _png_exif(data)
    elif fmt == "webp":
        block = _webp_exif(data)
    else:
        block = None
    return UPRIGHT if block is None else orientation_from_tiff(block)
