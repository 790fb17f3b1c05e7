"""Phone photos for the tests, built in code: EXIF-tagged and physically rotated variants
of one picture, HEIC files (pillow-heif encodes them), and photos at phone sizes."""

from __future__ import annotations

import io
from typing import Final

from PIL import Image

# What ImageOps.exif_transpose applies for each orientation, and its inverse: the
# transposition a camera's sensor pixels went through for the photo to display upright.
_DISPLAY: Final[dict[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_STORE: Final[dict[int, Image.Transpose]] = {
    **_DISPLAY,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


def upright_picture(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A picture with no symmetry: every rotation and mirror of it is a different image."""
    width, height = size
    image = Image.new("RGB", size)
    image.putdata(
        [
            (255 * x // width, 255 * y // height, 255 if x < width // 4 and y < height // 3 else 0)
            for y in range(height)
            for x in range(width)
        ]
    )
    return image


def encode(image: Image.Image, fmt: str, orientation: int | None = None, **save: object) -> bytes:
    """``image`` in Pillow's format ``fmt``, with an EXIF orientation tag if one is given."""
    out = io.BytesIO()
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        save = {**save, "exif": exif.tobytes()}
    image.save(out, fmt, **save)
    return out.getvalue()


def stored_for(upright: Image.Image, orientation: int) -> Image.Image:
    """The pixels a camera stores for ``upright`` when it tags them with ``orientation``."""
    return upright if orientation == 1 else upright.transpose(_STORE[orientation])


def tagged(upright: Image.Image, fmt: str, orientation: int, **save: object) -> bytes:
    """A file that displays as ``upright`` by its EXIF orientation tag."""
    return encode(stored_for(upright, orientation), fmt, orientation, **save)


def heic(image: Image.Image, quality: int = 90) -> bytes:
    import pillow_heif

    out = io.BytesIO()
    pillow_heif.from_pillow(image).save(out, quality=quality)
    return out.getvalue()


def phone_photo(width: int, height: int, quality: int = 85) -> bytes:
    """A JPEG at a phone camera's size; gradients, so it compresses as photos do."""
    small = upright_picture((max(8, width // 16), max(8, height // 16)))
    return encode(small.resize((width, height), Image.Resampling.BILINEAR), "JPEG", quality=quality)
