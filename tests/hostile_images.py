"""Images a hostile caller would send, built locally with Pillow and zlib.

Shared by the property test (tests/test_property_images.py) and the hostile-input matrix
(tests/test_hostile_inputs.py).
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
