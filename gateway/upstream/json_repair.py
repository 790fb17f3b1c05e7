"""Raw control characters inside the strings of a JSON answer, escaped losslessly.

A grammar backend may let U+0000-U+001F into a JSON string (xgrammar issue 286): the
answer is then not JSON (RFC 8259 wants them escaped), and ``json.loads`` and the
official SDK's ``parse()`` refuse it. Inside a string such a character can only mean
itself, so writing it as its escape (``\\n``, ``\\u0001``) gives the very same value to
any parser: nothing is lost. Outside strings the text is left as it is (tab, line feed
and carriage return are whitespace there; the workers' grammars emit no other).

The text may arrive in pieces (a stream's deltas, cut anywhere, even between a
backslash and the character it escapes): one escaper per text keeps the state between
them.
"""

from __future__ import annotations

import re
from typing import Final

# What changes the state or needs an escape: a quote, a backslash, a control character.
_SPECIAL: Final = re.compile(r'["\\\x00-\x1f]')
_SHORT: Final = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    return _SHORT.get(char) or f"\\u{ord(char):04x}"


class StringEscaper:
    """Feed a JSON text piece by piece; get each piece back with the control characters
    inside its strings escaped. ``repaired`` counts the characters escaped so far."""

    __slots__ = ("_after_backslash", "_in_string", "repaired")

    def __init__(self) -> None:
        self._in_string = False
        self._after_backslash = False  # the previous piece ended inside an escape
        self.repaired = 0

    def feed(self, text: str) -> str:
        if not text:
            return text
        position = 0
        if self._after_backslash:
            self._after_backslash = False
            position = 1  # the escaped character, whatever it is
        pieces: list[str] = []
        copied = 0
        while (found := _SPECIAL.search(text, position)) is not None:
            index = found.start()
            char = text[index]
            position = index + 1
            if char == '"':
                self._in_string = not self._in_string
            elif char == "\\":
                if self._in_string:
                    if position < len(text):
                        position += 1
                    else:
                        self._after_backslash = True
            elif self._in_string:
                pieces += (text[copied:index], _escape(char))
                copied = position
                self.repaired += 1
        if not pieces:
            return text
        pieces.append(text[copied:])
        return "".join(pieces)


def escape_control_characters(text: str) -> tuple[str, int]:
    """A whole JSON text, repaired, and how many characters were escaped."""
    escaper = StringEscaper()
    return escaper.feed(text), escaper.repaired
