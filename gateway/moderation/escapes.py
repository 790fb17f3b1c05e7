"""JSON string escapes decoded, so the policy sees the text an escaped answer spells.

A structured answer (or a tool call's arguments) is JSON text, where a forbidden term can
hide as ``\\u8272\\u60c5``; the client's parser decodes it. Decoding works on partial JSON
too (a stream's window, an answer cut at max_tokens), where parsing would fail.
"""

from __future__ import annotations

import json
import re
from typing import Final

_ESCAPE: Final = re.compile(
    r"\\(u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|[\"\\/bfnrt])"
)


def _decode(match: re.Match[str]) -> str:
    decoded: str = json.loads('"\\' + match.group(1) + '"')
    return decoded


def decode_json_escapes(text: str) -> str:
    """``text`` with each JSON escape replaced by the character it stands for."""
    if "\\" not in text:  # the common case: nothing escaped
        return text
    return _ESCAPE.sub(_decode, text)
