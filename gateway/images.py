"""Image checks: strict base64, MIME allow-list, magic bytes, header dimensions, digest.

Order matters for safety: the pixel count is read from the file header by the small
parsers below, before Pillow sees a byte, so a decompression bomb (a tiny file that claims
a huge canvas) is refused without being decoded. Only images within the cap are (optionally)
decoded in full to prove they are not truncated or corrupt.

A JPEG is decoded at 1/8 scale, as grey (Pillow's draft mode: libjpeg's DCT scaling).
libjpeg still reads and entropy-decodes every block of every component and scan, which is
where it finds what it refuses (truncation, bad markers, bad tables, a scan that is
garbage): only the inverse DCT, upsampling and colour conversion are skipped, 40% of the
work. Full and draft decodes refuse exactly the same files of a seeded corpus of corrupted
JPEGs (tests/test_images_decode.py). libjpeg only warns about corrupt Huffman data, which
Pillow accepts in either mode: the check refuses what the worker's Pillow cannot decode.
"""

from __future__ import annotations

import binascii
import hashlib
import io
import re
from base64 import b64decode, b64encode
from dataclasses import dataclass, field
from typing import Final, Literal

import pybase64
from PIL import Image

from gateway.errors import ErrorCode, GatewayError
from gateway.heif import heif_image, heif_size, is_heif
from gateway.orientation import UPRIGHT, read_orientation

# GIF (its first frame) and HEIF are accepted and converted before a worker sees them
# (validation/detail.py): the workers read JPEG, PNG and WebP.
ImageFormat = Literal["jpeg", "png", "webp", "gif", "heif"]

# Declared MIME types we accept in data URIs. The bytes decide the real format.
ALLOWED_MIME_TYPES: Final[frozenset[str]] = frozenset(
    {"image/jpeg", "image/jpg", "image/png", "image/webp", "image/gif", "image/heic", "image/heif"}
)
# Said in every error about the type of an image, so it names each one we take.
ACCEPTED_TYPES_TEXT: Final = "image/jpeg, image/png, image/webp, image/gif or image/heic (HEIF)"
FORMAT_MIME: Final[dict[ImageFormat, str]] = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "heif": "image/heic",
}
PILLOW_FORMAT: Final[dict[ImageFormat, str]] = {
    "jpeg": "JPEG",
    "png": "PNG",
    "webp": "WEBP",
    "gif": "GIF",
    "heif": "HEIF",  # opened through pillow-heif, never by Pillow's own plugins
}

_DATA_URI = re.compile(r"data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<payload>.*)", re.DOTALL)
_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the dimensions; C4, C8 and CC share the range but are not.
_JPEG_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Qwen-VL's image processor refuses sides more than 200x apart (a 1x50000 strip): refuse
# them here, in our words, rather than after a trip to a worker.
MAX_ASPECT_RATIO: Final = 200


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What the cache and the interaction log need to know about one image."""

    format: ImageFormat
    width: int
    height: int
    size_bytes: int
    sha256: str  # hex digest of the decoded bytes: the same image gives the same key
    # The EXIF orientation tag (1: upright or none): width and height are as stored; a
    # tagged image is turned upright before anything looks at its pixels (detail.py).
    orientation: int = UPRIGHT

    @property
    def mime(self) -> str:
        return FORMAT_MIME[self.format]

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True, slots=True)
class CheckedImage:
    info: ImageInfo
    data_uri: str  # what the worker receives: a data URI whose MIME matches the bytes
    # The decoded bytes, kept for the full decode (verify_decode) so that it need not
    # decode the base64 again; the pixel check lets go of them once it has run.
    data: bytes | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class ImageLimits:
    max_pixels: int
    verify_decode: bool


def _fail(code: ErrorCode, message: str, param: str | None) -> GatewayError:
    return GatewayError(code, message, param=param)


def is_remote_url(reference: str) -> bool:
    return reference[:8].lower().startswith(("http://", "https://"))


def remote_url_unsupported(param: str | None) -> GatewayError:
    return _fail(
        ErrorCode.REMOTE_IMAGE_URL_UNSUPPORTED,
        "Remote image URLs are not enabled on this server; send the image as a "
        "data:image/...;base64 URI.",
        param,
    )


def split_image_reference(
    reference: str, *, allow_bare_base64: bool, param: str | None = None
) -> tuple[str | None, str]:
    """Return (declared MIME or None, base64 payload) for a data URI or bare base64."""
    if is_remote_url(reference):
        raise remote_url_unsupported(param)
    if reference[:5].lower() == "data:":
        match = _DATA_URI.fullmatch(reference)
        if match is None:
            raise _fail(ErrorCode.INVALID_IMAGE_URL, "Malformed data URI.", param)
        params = [p.strip().lower() for p in match["params"].split(";") if p.strip()]
        if "base64" not in params:
            raise _fail(ErrorCode.INVALID_IMAGE_URL, "Data URIs must be base64-encoded.", param)
        mime = match["mime"].strip().lower()
        if mime not in ALLOWED_MIME_TYPES:
            raise _fail(
                ErrorCode.UNSUPPORTED_IMAGE_TYPE,
                f"Unsupported image type; use {ACCEPTED_TYPES_TEXT}.",
                param,
            )
        return mime, match["payload"]
    if allow_bare_base64:
        return None, reference
    raise _fail(
        ErrorCode.INVALID_IMAGE_URL,
        "Image URLs must be data:image/...;base64 URIs.",
        param,
    )


def decode_base64_strict(payload: str, param: str | None = None) -> bytes:
    """Standard alphabet, canonical padding, no whitespace, nothing after the padding."""
    if not payload:
        raise _fail(ErrorCode.INVALID_BASE64, "The image is empty.", param)
    try:
        # pybase64 (SIMD): 30x the standard library's speed; validate=True refuses what
        # binascii's strict mode does, and the checks below what both let through.
        data = pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        if "\n" in payload or "\r" in payload:
            # Android's Base64.DEFAULT wraps lines. Not accepted, as vLLM's own loader
            # refuses whitespace too (the worker gets the string as sent): say what to use.
            raise _fail(
                ErrorCode.INVALID_BASE64,
                "The image's base64 has line breaks; send it on one line (Android: "
                "Base64.NO_WRAP, not Base64.DEFAULT).",
                param,
            ) from None
        raise _fail(ErrorCode.INVALID_BASE64, "The image is not valid base64.", param) from None
    # strict_mode ignores the unused bits of a padded last quantum ("QR==" is b"A") and a
    # stray "=" after a whole one ("AAAA="): one image, one spelling, so the string
    # forwarded is the one the digest describes.
    partial = len(data) % 3
    if len(payload) != -(-len(data) // 3) * 4 or (
        partial and payload[-4:] != b64encode(data[-partial:]).decode()
    ):
        raise _fail(ErrorCode.INVALID_BASE64, "The image is not valid base64.", param)
    return data


def sniff_format(data: bytes) -> ImageFormat | None:
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if is_heif(data):
        return "heif"
    return None


def read_dimensions(data: bytes, fmt: ImageFormat) -> tuple[int, int] | None:
    """(width, height) from the header alone, or None when the header is malformed."""
    if fmt == "png":
        size = _png_size(data)
    elif fmt == "jpeg":
        size = _jpeg_size(data)
    elif fmt == "heif":
        size = heif_size(data)  # the container's boxes: no pixel decoded
    elif fmt == "gif":
        # The logical screen; Pillow reports the same size, and the checks compare them.
        size = None
        if len(data) >= 10:
            size = (int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little"))
    else:
        size = _webp_size(data)
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return size


def _png_size(data: bytes) -> tuple[int, int] | None:
    # The IHDR chunk must come first: length (13), type, width, height.
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            return None
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return None
        marker = data[i]
        i += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        if i + 2 > n:
            return None
        length = int.from_bytes(data[i : i + 2], "big")
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            if i + 7 > n:
                return None
            height = int.from_bytes(data[i + 3 : i + 5], "big")
            width = int.from_bytes(data[i + 5 : i + 7], "big")
            return width, height
        i += length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width = int.from_bytes(data[26:28], "little") & 0x3FFF
        height = int.from_bytes(data[28:30], "little") & 0x3FFF
        return width, height
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None


def _decodes(data: bytes, fmt: ImageFormat, size: tuple[int, int]) -> bool:
    try:
        if fmt == "heif":
            return heif_image(data).size == size
        with Image.open(io.BytesIO(data), formats=[PILLOW_FORMAT[fmt]]) as image:
            if image.size != size:  # our header parser and Pillow disagree: trust neither
                return False
            if fmt == "jpeg":
                # 1/8 scale, luma only: every block of every component is still read and
                # entropy-decoded (module doc).
                image.draft("L", (1, 1))
            image.load()
    except Exception:  # Pillow raises many types for corrupt input; all mean "not decodable"
        return False
    return True


def check_image(
    reference: str,
    limits: ImageLimits,
    *,
    allow_bare_base64: bool = False,
    param: str | None = None,
) -> CheckedImage:
    """Validate one image reference; raise GatewayError (400) naming ``param`` if it fails."""
    _, payload = split_image_reference(reference, allow_bare_base64=allow_bare_base64, param=param)
    data = decode_base64_strict(payload, param)
    info = inspect_image(data, limits, param)
    prefix = f"data:{info.mime};base64,"
    # Forward the caller's string untouched (no copy) when it is already canonical.
    data_uri = reference if reference.startswith(prefix) else prefix + payload
    return CheckedImage(info=info, data_uri=data_uri, data=data)


def check_image_bytes(
    data: bytes, limits: ImageLimits, *, param: str | None = None
) -> CheckedImage:
    """The same checks for bytes the gateway fetched itself (remote image URLs); the worker
    gets them as a data URI, so it never fetches anything."""
    info = inspect_image(data, limits, param)
    uri = f"data:{info.mime};base64,{b64encode(data).decode()}"
    return CheckedImage(info=info, data_uri=uri, data=data)


def inspect_image(data: bytes, limits: ImageLimits, param: str | None) -> ImageInfo:
    """Real format from the bytes, dimensions from the header, then the optional decode."""
    fmt = sniff_format(data)
    if fmt is None:
        raise _fail(
            ErrorCode.INVALID_IMAGE,
            f"The image is not a file of a type we read; use {ACCEPTED_TYPES_TEXT}.",
            param,
        )
    size = read_dimensions(data, fmt)
    if size is None:
        raise _fail(ErrorCode.INVALID_IMAGE, "The image header is malformed.", param)
    if size[0] * size[1] > limits.max_pixels:
        raise _fail(
            ErrorCode.IMAGE_TOO_LARGE,
            f"The image has {size[0]}x{size[1]} pixels; the limit is "
            f"{limits.max_pixels} pixels in total.",
            param,
        )
    if max(size) > MAX_ASPECT_RATIO * min(size):
        raise _fail(
            ErrorCode.INVALID_IMAGE,
            f"The image is {size[0]}x{size[1]} pixels; one side may be at most "
            f"{MAX_ASPECT_RATIO} times the other.",
            param,
        )
    if limits.verify_decode and not _decodes(data, fmt, size):
        raise _fail(ErrorCode.INVALID_IMAGE, "The image could not be decoded.", param)
    return ImageInfo(
        format=fmt,
        width=size[0],
        height=size[1],
        size_bytes=len(data),
        sha256=image_digest(data),
        orientation=read_orientation(data, fmt),
    )


def image_bytes(image: CheckedImage) -> bytes:
    if image.data is not None:
        return image.data
    return b64decode(image.data_uri.split(",", 1)[1])


def verify_decode(image: CheckedImage, param: str | None) -> None:
    """Decode every pixel of a checked image (400 if it does not decode): run before a
    worker sees the image, never on a cache hit (gateway/validation/pixels.py)."""
    data = image_bytes(image)
    size = (image.info.width, image.info.height)
    if not _decodes(data, image.info.format, size):
        raise _fail(ErrorCode.INVALID_IMAGE, "The image could not be decoded.", param)


def image_digest(data: bytes) -> str:
    """The digest the cache and the log use for an image: sha256 of its decoded bytes."""
    return hashlib.sha256(data).hexdigest()
