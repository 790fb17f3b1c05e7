"""gateway.images: strict base64, MIME allow-list, magic bytes, header sizes, digest."""

from __future__ import annotations

import hashlib
import time

import pytest

from gateway.errors import ErrorCode, GatewayError
from gateway.images import (
    ImageLimits,
    check_image,
    decode_base64_strict,
    read_dimensions,
    sniff_format,
)
from tests.support.images import b64, data_uri, image_bytes, jpeg_header_bomb, png_header_bomb

LIMITS = ImageLimits(max_pixels=1_000_000, verify_decode=True)


def _code(reference: str, *, bare: bool = False, limits: ImageLimits = LIMITS) -> ErrorCode:
    with pytest.raises(GatewayError) as caught:
        check_image(reference, limits, allow_bare_base64=bare, param="p")
    assert caught.value.status == 400
    assert caught.value.param == "p"
    return caught.value.code


@pytest.mark.parametrize(
    ("fmt", "save", "mime"),
    [
        ("PNG", {}, "image/png"),
        ("JPEG", {"quality": 80}, "image/jpeg"),
        ("JPEG", {"progressive": True}, "image/jpeg"),
        ("WEBP", {"quality": 80}, "image/webp"),  # lossy: VP8
        ("WEBP", {"lossless": True}, "image/webp"),  # VP8L
    ],
)
def test_accepts_each_format_and_reads_size_from_header(
    fmt: str, save: dict[str, object], mime: str
) -> None:
    data = image_bytes(fmt, (123, 45), **save)
    checked = check_image(data_uri(data, mime), LIMITS)
    info = checked.info
    assert (info.width, info.height) == (123, 45)
    assert info.mime == mime
    assert info.size_bytes == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert checked.data_uri == data_uri(data, mime)


def test_webp_extended_header() -> None:
    from PIL import Image

    image = Image.new("RGBA", (77, 33), (1, 2, 3, 128))
    import io

    out = io.BytesIO()
    image.save(out, "WEBP", quality=70, exif=b"Exif\x00\x00")  # exif forces VP8X
    data = out.getvalue()
    assert data[12:16] == b"VP8X"
    assert read_dimensions(data, "webp") == (77, 33)


def test_digest_is_of_decoded_bytes_not_the_encoding() -> None:
    data = image_bytes("PNG")
    as_uri = check_image(data_uri(data), LIMITS).info.sha256
    as_bare = check_image(b64(data), LIMITS, allow_bare_base64=True).info.sha256
    assert as_uri == as_bare == hashlib.sha256(data).hexdigest()


def test_format_comes_from_magic_bytes_not_declared_mime() -> None:
    png = image_bytes("PNG")
    checked = check_image(data_uri(png, "image/jpeg"), LIMITS)
    assert checked.info.format == "png"
    # The worker gets a data URI whose MIME matches the bytes.
    assert checked.data_uri.startswith("data:image/png;base64,")


def test_bare_base64_only_where_allowed() -> None:
    png = image_bytes("PNG")
    assert check_image(b64(png), LIMITS, allow_bare_base64=True).data_uri == data_uri(png)
    assert _code(b64(png)) is ErrorCode.INVALID_IMAGE_URL


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "abc",  # bad length
        "YWJj\nZA==",  # whitespace
        "YWJjZA=",  # wrong padding
        "YWJjZA==YQ==",  # data after padding
        "ab-_",  # URL-safe alphabet
        "é" * 4,  # not ASCII
    ],
)
def test_strict_base64(payload: str) -> None:
    with pytest.raises(GatewayError) as caught:
        decode_base64_strict(payload)
    assert caught.value.code is ErrorCode.INVALID_BASE64


@pytest.mark.parametrize(
    "mime", ["image/bmp", "image/svg+xml", "text/plain", "application/octet-stream", ""]
)
def test_mime_allow_list(mime: str) -> None:
    assert _code(data_uri(image_bytes("PNG"), mime)) is ErrorCode.UNSUPPORTED_IMAGE_TYPE


def test_declared_mime_is_case_insensitive() -> None:
    png = image_bytes("PNG")
    assert check_image(data_uri(png, "IMAGE/PNG"), LIMITS).info.format == "png"


@pytest.mark.parametrize("url", ["http://example.com/a.png", "HTTPS://example.com/a.png"])
def test_remote_urls_refused(url: str) -> None:
    assert _code(url) is ErrorCode.REMOTE_IMAGE_URL_UNSUPPORTED


@pytest.mark.parametrize(
    "reference", ["file:///etc/passwd", "data:image/png,notbase64", "data:image/png;base64"]
)
def test_other_references_refused(reference: str) -> None:
    assert _code(reference) is ErrorCode.INVALID_IMAGE_URL


@pytest.mark.parametrize(
    "data",
    [
        image_bytes("GIF")[:20],  # header only
        image_bytes("BMP"),
        b"hello world, not an image at all",
        image_bytes("PNG")[:8],  # signature only
        image_bytes("PNG", (300, 200))[:-40],  # truncated
        image_bytes("JPEG", (300, 200))[:-100],  # truncated
        b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 20,  # WebP without a frame header
    ],
)
def test_not_a_decodable_image(data: bytes) -> None:
    assert _code(data_uri(data)) is ErrorCode.INVALID_IMAGE


def test_corrupt_body_passes_without_full_decode() -> None:
    # With verify_decode off only the header is checked (the worker will decode).
    truncated = image_bytes("PNG", (100, 100))[:120]
    assert check_image(data_uri(truncated), ImageLimits(1_000_000, False)).info.width == 100


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (png_header_bomb(20_000, 20_000), "image/png"),
        (png_header_bomb(1001, 1000), "image/png"),
        (jpeg_header_bomb(40_000, 40_000), "image/jpeg"),
    ],
)
def test_pixel_cap_is_read_from_the_header_before_decoding(data: bytes, mime: str) -> None:
    # These files hold almost no pixel data: decoding them would fail with INVALID_IMAGE,
    # so IMAGE_TOO_LARGE proves the cap was applied first, from the header alone.
    started = time.perf_counter()
    assert _code(data_uri(data, mime)) is ErrorCode.IMAGE_TOO_LARGE
    assert time.perf_counter() - started < 0.05


def test_bomb_headers_parse() -> None:
    assert sniff_format(png_header_bomb(5, 6)) == "png"
    assert read_dimensions(png_header_bomb(5, 6), "png") == (5, 6)
    assert read_dimensions(jpeg_header_bomb(7, 8), "jpeg") == (7, 8)
    assert read_dimensions(jpeg_header_bomb(0, 8), "jpeg") is None
