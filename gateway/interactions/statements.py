"""The SQL the interaction log writer sends, and how it reads MySQL's errors: an outage
(spool and retry) or bad data (isolate the row)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Final

from sqlalchemy.exc import DBAPIError, InterfaceError

from gateway.interactions.records import COLUMNS

# MySQL errors that say "the server (or our access to it) is unavailable", not "this row is
# bad": connection and server-gone errors, shutdown, too many connections, access and schema
# errors (not migrated yet), lock time-outs and deadlocks, read-only server. Their batches
# are spooled and retried, never treated as poison.
OUTAGE_ERRORS: Final = frozenset(
    {
        1040, 1044, 1045, 1049, 1053, 1054, 1142, 1146, 1205, 1213, 1290, 1836, 1927,
        2002, 2003, 2005, 2006, 2013, 2014, 2055, 4031,
    }
)  # fmt: skip
# Keep one INSERT well below max_allowed_packet (16 MiB by default).
MAX_STATEMENT_BYTES: Final = 4 * 1024 * 1024

_INSERT_TAIL = " ON DUPLICATE KEY UPDATE `request_id` = `request_id`"
_IMAGE_COLUMNS = ("request_id", "position", "digest", "received_at_ms")


def _values_sql(table: str, columns: Sequence[str], rows: int) -> str:
    names = ", ".join(f"`{c}`" for c in columns)
    one = "(" + ", ".join(["%s"] * len(columns)) + ")"
    return f"INSERT INTO `{table}` ({names}) VALUES " + ", ".join([one] * rows) + _INSERT_TAIL


@lru_cache(maxsize=128)
def insert_sql(rows: int) -> str:
    """The multi-row INSERT for ``rows`` interactions (placeholders only: bound parameters)."""
    return _values_sql("interactions", COLUMNS, rows)


@lru_cache(maxsize=128)
def image_insert_sql(rows: int) -> str:
    return _values_sql("interaction_images", _IMAGE_COLUMNS, rows)


class DatabaseUnavailable(Exception):
    """MySQL cannot take writes now (down, slow, unreachable, not migrated)."""


def error_code(exc: BaseException) -> int | None:
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` says the database is unavailable rather than the data is bad."""
    if isinstance(exc, DBAPIError):
        return (
            exc.connection_invalidated
            or isinstance(exc, InterfaceError)
            or error_code(exc) in OUTAGE_ERRORS
        )
    return isinstance(exc, OSError | TimeoutError | ConnectionError)


def describe(exc: BaseException) -> str:
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    return f"{type(orig).__name__}: {orig}"[:255]
