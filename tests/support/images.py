"""Image bytes for the tests, built locally with Pillow and zlib: valid pictures, their
base64 and data-URI forms, header bombs, and what a hostile caller would send (shared by
tests/test_property_images.py and the hostile-input matrix, tests/test_hostile_inputs.py).
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from typing import Any

from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (64, 48), **save: Any) -> bytes:
    image = Image.new("RGB", size, (180, 40, 40))
    for x in range(0, size[0], 8):  # some structure, so encoders do real work
        image.putpixel((x, x % size[1]), (0, 200, 0))
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{b64(data)}"


def picture(fmt: str = "PNG", size: tuple[int, int] = (32, 24)) -> bytes:
    """A small valid image in Pillow's format name (PNG, JPEG, WEBP, GIF, TIFF, BMP)."""
    image = Image.new("RGB", size, (200, 60, 30))
    for x in range(0, size[0], 3):  # some structure, so encoders do real work
        image.putpixel((x, (x * 7) % size[1]), (0, 220, 0))
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_header_bomb(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def jpeg_header_bomb(width: int, height: int) -> bytes:
    """SOI, an APP0 segment, then a baseline SOF0 claiming width x height."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A real, decodable 1-bit PNG of width x height, all zeros: ~50 MB of pixels in a few
    tens of KB. Only its header may be read: a full decode is the attack."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def png_text_bomb(megabytes: int = 64) -> bytes:
    """A small valid PNG carrying a zTXt chunk that inflates to ``megabytes`` MB."""
    png = picture("PNG", (8, 8))
    text = b"Comment\x00\x00" + zlib.compress(b"\x00" * (megabytes * 1024 * 1024), 9)
    iend = len(png) - 12  # the IEND chunk is the last 12 bytes
    return png[:iend] + png_chunk(b"zTXt", text) + png[iend:]


def png_then_html() -> bytes:
    """A polyglot: a PNG signature and header, then an HTML page where pixels belong."""
    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    html = b"<html><script>alert(document.cookie)</script></html>"
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + html


def png_with_zip_appended() -> bytes:
    """A polyglot that is a whole valid PNG and, after IEND, a zip archive."""
    archive = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("payload.sh", "#!/bin/sh\necho owned\n")
    return picture("PNG", (16, 16)) + archive.getvalue()


def svg() -> bytes:
    return (
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" '
        b'height="10"><script>alert(1)</script><rect width="10" height="10"/></svg>'
    )


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: max(1, int(len(data) * keep))]
