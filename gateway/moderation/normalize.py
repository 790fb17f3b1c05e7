"""Text as the policy sees it: the trivial disguises of a term taken off before matching.

``variants(text)`` gives the normalised text and, when they differ from it, two more
readings: CJK characters with the spaces and punctuation between them removed
("色 情", "色.情" -> "色情"), and runs of single Latin letters or digits joined up
("p o r n", "p.o.r.n" -> "porn"). A term found in any reading is found.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final


# Zero-width characters, soft hyphens, bidi marks (format, Cf) and control characters
# (Cc) are invisible: dropped, except whitespace controls, which count as spaces. The
# class is built once from the Unicode database, as ranges (a class of single characters
# makes the engine compare them one by one).
def _invisible_class() -> str:
    codes = [
        code
        # The blocks that hold them (Unicode 15): a scan of all 1.1M code points would
        # cost a second at import.
        for code in (
            *range(0x2100),
            *range(0xFE00, 0x10000),
            *range(0x11000, 0x11100),
            *range(0x13430, 0x13460),
            *range(0x1BCA0, 0x1BCB0),
            *range(0x1D170, 0x1D180),
            *range(0xE0000, 0xE0080),
        )
        if unicodedata.category(chr(code)) in ("Cf", "Cc") and not chr(code).isspace()
    ]
    ranges: list[list[int]] = []
    for code in codes:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    return "".join(
        re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in ranges
    )


_INVISIBLE: Final = re.compile(f"[{_invisible_class()}]+")
_CJK: Final = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
# Anything that is not a letter or digit, between two CJK characters.
_CJK_GAP: Final = re.compile(rf"(?<=[{_CJK}])[\W_]+(?=[{_CJK}])")
# Three or more single letters or digits, each followed by one separator: "p o r n".
_SPACED_LETTERS: Final = re.compile(r"(?<![a-z0-9])(?:[a-z0-9][ .\-_*/|]){2,}[a-z0-9](?![a-z0-9])")
_SEPARATORS: Final = re.compile(r"[ .\-_*/|]")


def normalize(text: str) -> str:
    """NFKC (full-width letters, ligatures, circled digits), casefold, invisible characters
    dropped, whitespace collapsed to one space."""
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    if text.isprintable():  # the common case, checked in C: nothing invisible left
        return text
    return " ".join(_INVISIBLE.sub("", text).split())


def variants(text: str) -> list[str]:
    """The readings of ``text`` the policy is matched against, normalised first."""
    base = normalize(text)
    readings = [base]
    squashed = _CJK_GAP.sub("", base)
    if squashed != base:
        readings.append(squashed)
    joined = _SPACED_LETTERS.sub(lambda m: _SEPARATORS.sub("", m.group()), base)
    if joined != base:
        readings.append(joined)
    return readings
