"""Property tests of the base64 and image checks: whatever the input, the answer is either
a valid result or a GatewayError with a 4xx status, never another exception."""

from __future__ import annotations

import base64
import io
from functools import cache

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from gateway.errors import ErrorCode, GatewayError
from gateway.images import ImageLimits, check_image, decode_base64_strict, inspect_image
from tests.support.images import picture

LIMITS = ImageLimits(max_pixels=1_000_000, verify_decode=True)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BASE64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="

# Base64-looking text: mostly alphabet characters, some noise, so both outcomes are common.
base64_like = st.text(
    alphabet=st.one_of(st.sampled_from(BASE64_ALPHABET), st.sampled_from(" \n\r\t-_.%\x00é\ud800")),
    max_size=40,
)


def _respelled(raw: bytes, position: int, char: str) -> str:
    """Canonical base64 of raw with one character replaced: often still decodable."""
    encoded = base64.b64encode(raw).decode()
    position %= len(encoded)
    return encoded[:position] + char + encoded[position + 1 :]


respelled_base64 = st.builds(
    _respelled,
    st.binary(min_size=1, max_size=30),
    st.integers(min_value=-3, max_value=-1) | st.integers(min_value=0, max_value=60),
    st.sampled_from(BASE64_ALPHABET),
)


def _assert_client_error(error: GatewayError, *codes: ErrorCode, param: str | None = None) -> None:
    assert 400 <= error.status < 500
    assert error.code in codes, error.code
    if param is not None:
        assert error.param == param


@FAST
@given(st.one_of(base64_like, respelled_base64, st.text(max_size=40)))
@example("00000000=")  # found by CI: a stray pad after a whole quantum
@example("QR==")
def test_base64_is_decoded_only_when_canonical(payload: str) -> None:
    try:
        data = decode_base64_strict(payload, "image")
    except GatewayError as error:
        _assert_client_error(error, ErrorCode.INVALID_BASE64, param="image")
        return
    # Accepted: the input is the one canonical spelling of the bytes.
    assert base64.b64encode(data).decode() == payload


@FAST
@given(
    st.binary(min_size=200, max_size=4000),
    st.integers(min_value=0),
    st.sampled_from(" \n\r\t-_.%\x00=é\ud800"),
)
def test_one_stray_character_in_a_long_payload_is_refused(
    raw: bytes, position: int, char: str
) -> None:
    # Long enough for the decoder's SIMD blocks: a stray character anywhere in one of
    # them, not only in the short tail the examples above reach, must be found.
    encoded = base64.b64encode(raw).decode()
    position %= len(encoded) - 4  # not in the last quantum, where "=" may be padding
    payload = encoded[:position] + char + encoded[position + 1 :]
    try:
        decode_base64_strict(payload, "image")
    except GatewayError as error:
        _assert_client_error(error, ErrorCode.INVALID_BASE64, param="image")
    else:
        raise AssertionError(f"accepted a stray {char!r} at {position}")


@FAST
@given(st.binary(max_size=30))
def test_canonical_base64_of_any_bytes_is_accepted(raw: bytes) -> None:
    encoded = base64.b64encode(raw).decode()
    if raw:
        assert decode_base64_strict(encoded) == raw
    else:
        try:
            decode_base64_strict(encoded)
        except GatewayError as error:
            _assert_client_error(error, ErrorCode.INVALID_BASE64)


@cache
def _valid_images() -> tuple[bytes, ...]:
    return tuple(picture(fmt, (23, 17)) for fmt in ("PNG", "JPEG", "WEBP"))


def _mutated(data: bytes, cuts: list[tuple[int, int]], keep: float) -> bytes:
    buffer = bytearray(data[: max(1, int(len(data) * keep))])
    for position, value in cuts:
        buffer[position % len(buffer)] = value
    return bytes(buffer)


mutated_images = st.builds(
    _mutated,
    st.sampled_from(range(3)).map(lambda i: _valid_images()[i]),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    st.sampled_from([1.0, 1.0, 0.9, 0.5, 0.1]),
)
IMAGE_CODES = (ErrorCode.INVALID_IMAGE, ErrorCode.IMAGE_TOO_LARGE)


def _check_bytes(data: bytes) -> None:
    try:
        info = inspect_image(data, LIMITS, "image")
    except GatewayError as error:
        _assert_client_error(error, *IMAGE_CODES)
        return
    # Accepted: it really decodes, to the size the header claimed, within the cap.
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.size == (info.width, info.height)
    assert info.pixels <= LIMITS.max_pixels


@FAST
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_refused_in_our_shape(data: bytes) -> None:
    _check_bytes(data)


@FAST
@given(mutated_images)
def test_mutated_and_truncated_images_decode_or_are_refused(data: bytes) -> None:
    _check_bytes(data)


def test_the_unmutated_images_are_accepted() -> None:
    # The strategy above keeps some images whole: without this, "refused" would always pass.
    for data in _valid_images():
        assert inspect_image(data, LIMITS, None).width == 23


@FAST
@given(
    st.sampled_from(["data:image/png;base64,", "data:image/jpeg;base64,", "data:image/gif;base64,",
                     "data:;base64,", "data:image/png,", "DATA:IMAGE/WEBP;BASE64,", ""]),
    st.one_of(mutated_images.map(lambda d: base64.b64encode(d).decode()), base64_like),
)  # fmt: skip
def test_any_image_reference_is_checked_or_refused_with_a_4xx(prefix: str, payload: str) -> None:
    reference = prefix + payload
    try:
        checked = check_image(reference, LIMITS, allow_bare_base64=True, param="image")
    except GatewayError as error:
        _assert_client_error(
            error,
            *IMAGE_CODES,
            ErrorCode.INVALID_BASE64,
            ErrorCode.INVALID_IMAGE_URL,
            ErrorCode.UNSUPPORTED_IMAGE_TYPE,
        )
        return
    decoded = base64.b64decode(checked.data_uri.split(",", 1)[1])
    assert checked.data_uri.startswith(f"data:{checked.info.mime};base64,")
    with Image.open(io.BytesIO(decoded)) as image:
        image.load()
