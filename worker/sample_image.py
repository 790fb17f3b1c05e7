"""Deterministic PNG test images written with the standard library only.

The launcher's warm-up request and the tests need real images, and nothing can
be downloaded; this also runs where Pillow is not installed.
"""

from __future__ import annotations

import base64
import struct
import zlib


def _chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    """An RGB gradient whose colours depend on seed, so different seeds are
    different photos as far as any content digest is concerned."""
    if width <= 0 or height <= 0:
        raise ValueError("image sides must be positive")
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter type "none" for this row
        for x in range(width):
            rows += bytes(
                (
                    (x * 255 // max(width - 1, 1) + seed * 37) % 256,
                    (y * 255 // max(height - 1, 1) + seed * 91) % 256,
                    (x + y + seed * 53) % 256,
                )
            )
    # The colours above repeat every 256 seeds: write the seed itself into the red
    # channel of the first row, so any two seeds (below 2**64) differ in their pixels.
    for i, byte in enumerate(seed.to_bytes(8, "big")[-min(width, 8) :]):
        rows[1 + 3 * i] = byte
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(bytes(rows), 6))
        + _chunk(b"IEND", b"")
    )


def png_data_uri(width: int, height: int, seed: int = 0) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(width, height, seed)).decode()
