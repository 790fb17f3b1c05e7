"""The body's JSON parser (pydantic-core's, with the standard library behind it) gives
every body exactly what the standard library alone gave: the same value, or the same
400 for what is not JSON."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import ErrorCode, GatewayError
from gateway.validation.parse import load_json_object  # through gateway/json_text.py

FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),  # past 64 bits both ways
    st.floats(allow_nan=True, allow_infinity=True),  # json.dumps writes NaN, Infinity
    st.text(alphabet=st.characters(codec=None), max_size=20),  # lone surrogates included
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


def _stdlib(raw: bytes) -> dict[str, Any] | str:
    """What the body parser answered before: json.loads, or our 400."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return "invalid_json"
    return value if isinstance(value, dict) else "not_an_object"


def _ours(raw: bytes) -> dict[str, Any] | str:
    try:
        return load_json_object(raw)
    except GatewayError as error:
        if error.code is not ErrorCode.INVALID_JSON:
            return f"unexpected {error.code}"
        return "not_an_object" if "object" in error.message else "invalid_json"


def _same(raw: bytes) -> None:
    # repr: NaN is not equal to itself, and 1 == 1.0 == True would hide a changed type.
    assert repr(_ours(raw)) == repr(_stdlib(raw)), raw


@FAST
@given(st.dictionaries(st.text(max_size=5), values, max_size=5), st.booleans())
def test_any_json_object_parses_to_the_same_value(value: dict[str, Any], ascii_only: bool) -> None:
    _same(json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))


@FAST
@given(values, st.binary(max_size=8), st.integers(min_value=0, max_value=200))
def test_damaged_json_gets_the_same_answer(value: Any, noise: bytes, at: int) -> None:
    raw = json.dumps({"v": value}).encode()
    at %= len(raw) + 1
    _same(raw[:at] + noise + raw[at:])


def test_what_only_the_standard_library_reads_still_parses() -> None:
    for raw in (
        '{"a": 1}'.encode("utf-16"),  # json.loads detects UTF-16 and UTF-32
        b'\xef\xbb\xbf{"a": 1}',  # a UTF-8 byte order mark
        b'{"a": "\\ud800"}',  # a lone surrogate: refused later, with its own 400
        b'{"a": ' + b"[" * 500 + b"]" * 500 + b"}",  # deeper than pydantic-core goes
    ):
        _same(raw)
        assert isinstance(_ours(raw), dict)
