"""POST /v1/files bodies: multipart/form-data with ``purpose`` and ``file``, and what makes
an input file acceptable (UTF-8 JSON lines, at most GATEWAY_BATCH_MAX_LINES of them).

Runs in a thread (the body may be as large as the body limit): parsing and checking grow
with the file. Each line is only read for what it is at validation time (lines.py), where
a bad line goes to the batch's error file instead of refusing the whole file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.errors import ErrorCode, GatewayError

PURPOSE_BATCH: Final = "batch"
_MAX_FIELD_BYTES: Final = 1024
_FILENAME_CHARS: Final = 255


@dataclass(frozen=True, slots=True)
class Upload:
    purpose: str
    filename: str
    data: bytes


def _invalid(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(ErrorCode.INVALID_REQUEST, message, param=param)


class _Part:
    __slots__ = ("data", "disposition", "header_field", "header_value")

    def __init__(self) -> None:
        self.disposition: bytes = b""
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.data = bytearray()


def _parts(boundary: bytes, body: bytes) -> list[_Part]:
    parts: list[_Part] = []

    def begin() -> None:
        parts.append(_Part())

    def field(data: bytes, start: int, end: int) -> None:
        parts[-1].header_field += data[start:end]

    def value(data: bytes, start: int, end: int) -> None:
        parts[-1].header_value += data[start:end]

    def header_end() -> None:
        part = parts[-1]
        if bytes(part.header_field).lower() == b"content-disposition":
            part.disposition = bytes(part.header_value)
        part.header_field.clear()
        part.header_value.clear()

    def data(chunk: bytes, start: int, end: int) -> None:
        parts[-1].data += chunk[start:end]

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": begin,
            "on_header_field": field,
            "on_header_value": value,
            "on_header_end": header_end,
            "on_part_data": data,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except Exception:
        raise _invalid("The multipart body could not be parsed.") from None
    return parts


def parse_upload(content_type: str | None, body: bytes) -> Upload:
    """The upload's fields, or a 400 saying what is missing (415 for another body type)."""
    kind, options = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        raise GatewayError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "Upload files as multipart/form-data.")
    boundary = options.get(b"boundary")
    if not boundary:
        raise _invalid("The multipart body has no boundary.")
    fields: dict[str, bytes] = {}
    file: tuple[str, bytes] | None = None
    for part in _parts(boundary, body):
        _, disposition = parse_options_header(part.disposition)
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in disposition and name == "file":
            filename = disposition[b"filename"].decode("utf-8", "replace")[:_FILENAME_CHARS]
            file = (filename or "upload.jsonl", bytes(part.data))
        elif len(part.data) <= _MAX_FIELD_BYTES:
            fields[name] = bytes(part.data)
    purpose = fields.get("purpose", b"").decode("utf-8", "replace")
    if purpose != PURPOSE_BATCH:
        raise _invalid("'purpose' must be 'batch': files here are batch inputs.", "purpose")
    if file is None:
        raise _invalid("The upload has no 'file' part.", "file")
    return Upload(purpose, file[0], file[1])


def check_input_file(data: bytes, max_lines: int) -> int:
    """An input file's line count; 400 when it is empty, not UTF-8 or has too many lines."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid("The file is not UTF-8 text (JSON lines).", "file") from None
    count = sum(1 for line in data.splitlines() if line.strip())
    if count == 0:
        raise _invalid("The file holds no lines.", "file")
    if count > max_lines:
        raise _invalid(f"The file has {count} lines; the limit is {max_lines}.", "file")
    return count
