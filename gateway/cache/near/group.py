"""Which stored answers a request may borrow: those of the same group.

A group is every request with the same model, checkpoint, key scope, question and other
parameters, whatever its photos: the canonical request (validation/encode.py) with each
image's digest replaced by a placeholder and every text normalised, so that a question
typed on a phone ("Is this REAL leather？ ") and on a desktop ("is this real leather")
land together. Normalising: Unicode NFKC (full-width forms become half-width), case
folded, runs of whitespace made one space, and trailing punctuation and spaces dropped.
Nothing else: a different word is a different question.

The group's digest is the hash tag of every index key of the group (index.py), so a
lookup is one command on one Redis Cluster slot.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any, Final

_SPACES: Final = re.compile(r"\s+")
IMAGE_PLACEHOLDER: Final = "image"
NEAR_FORMAT_VERSION: Final = 1


def normalise_text(text: str) -> str:
    folded = _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    end = len(folded)
    while end > 0 and (folded[end - 1] == " " or unicodedata.category(folded[end - 1])[0] == "P"):
        end -= 1
    return folded[:end]


def _normalised(value: Any) -> Any:
    """The canonical request's JSON with texts normalised and image digests dropped."""
    if isinstance(value, list):
        return [_normalised(item) for item in value]
    if not isinstance(value, dict):
        return value
    if value.get("type") == "image_url":
        return {**value, "image_url": IMAGE_PLACEHOLDER}
    out = {key: _normalised(item) for key, item in value.items()}
    if value.get("type") == "text" and isinstance(value.get("text"), str):
        out["text"] = normalise_text(value["text"])
    if isinstance(value.get("role"), str) and isinstance(value.get("content"), str):
        out["content"] = normalise_text(value["content"])
    return out


def near_group(namespace: str, model: str, revision: str, canonical: bytes) -> str:
    """The group's digest (hex). ``revision``: the answer key's (checkpoint and scope)."""
    view = _normalised(json.loads(canonical))
    text = json.dumps(view, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    digest = hashlib.sha256()
    for field in (f"near{NEAR_FORMAT_VERSION}", namespace, model, revision, text):
        data = field.encode()
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()
