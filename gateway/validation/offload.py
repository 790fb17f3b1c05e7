"""Very large bodies are parsed and validated in a separate process.

A thread does not keep the event loop free here: ``json.loads`` and pydantic's validation
hold the GIL for as long as they run, and 10 MB of empty messages took ``json.loads``
about 0.3 s on this project's 2-core machine, during which the replica answered nothing,
health checks included. A child process parses a body over ``PROCESS_BODY_BYTES`` that
holds more than ``PROCESS_BODY_VALUES`` JSON values (counted by their commas), checks the
message and part counts, validates it, and sends back the typed request or our 400: only
a body within the limits comes back. A large body of few values (a shopper's 3 MB photo:
one long base64 string, no commas) parses in about 5 ms and stays in a thread: through
the child it would be pickled both ways and queue behind every other large photo. Smaller
bodies take a thread or stay on the loop (parse.py).

One child, started with the replica (``GATEWAY_PARSE_PROCESS_WARM``; else at the first
large body), so these bodies queue for it instead of taking every core; it is replaced
when it dies.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import AsyncExitStack
from typing import Final

from gateway.config import Settings
from gateway.errors import ErrorCode, GatewayError
from gateway.protocol import ChatCompletionRequest, VQARequest
from gateway.validation.parse import parse_chat_request, parse_chat_sync

log = logging.getLogger("gateway.validation")

PROCESS_BODY_BYTES: Final = 1024 * 1024
# Arrays and objects cost json.loads per value: 300,000 empty messages take 0.3 s, a 3 MB
# photo 5 ms. A 2,048-message conversation (the limit) has about 12,000 commas.
PROCESS_BODY_VALUES: Final = 4096

_Parsed = ChatCompletionRequest | VQARequest
_Outcome = tuple[_Parsed | None, tuple[str, str, str | None] | None]


def _ready() -> bool:
    return True


def _parse_in_child(raw: bytes, settings: Settings) -> _Outcome:
    try:
        return parse_chat_sync(raw, settings), None
    except GatewayError as error:
        return None, (error.code.value, error.message, error.param)


class BodyParser:
    """The chat endpoint's body parser: on the loop, in a thread or in the child process,
    by size."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._executor: ProcessPoolExecutor | None = None
        self._warming: asyncio.Future[bool] | None = None

    async def parse_chat(self, raw: bytes) -> _Parsed:
        if len(raw) <= PROCESS_BODY_BYTES or raw.count(b",") <= PROCESS_BODY_VALUES:
            return await parse_chat_request(raw, self._settings)
        loop = asyncio.get_running_loop()
        try:
            parsed, error = await loop.run_in_executor(
                self._child(), _parse_in_child, raw, self._settings
            )
        except BrokenProcessPool:  # the child died (OOM?): a new one for the next body
            log.warning("the body parser process died; starting another")
            self._executor = None
            return await parse_chat_request(raw, self._settings)
        if error is not None:
            code, message, param = error
            raise GatewayError(ErrorCode(code), message, param=param)
        assert parsed is not None
        return parsed

    def warm(self) -> None:
        """Start the child now, in the background (its imports take seconds of CPU)."""
        self._warming = asyncio.get_running_loop().run_in_executor(self._child(), _ready)
        self._warming.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _child(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # spawn: a fork would copy the event loop's threads and sockets into the child.
            context = multiprocessing.get_context("spawn")
            self._executor = ProcessPoolExecutor(max_workers=1, mp_context=context)
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def open_body_parser(settings: Settings, stack: AsyncExitStack) -> BodyParser:
    """The replica's body parser; its child process (if one started) ends with ``stack``."""
    parser = BodyParser(settings)
    stack.callback(parser.close)
    if settings.parse_process_warm:
        parser.warm()
    return parser
