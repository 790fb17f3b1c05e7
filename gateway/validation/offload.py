"""Bodies of many values are parsed and validated in a separate process.

A thread does not keep the event loop free here: ``json.loads`` and pydantic's validation
hold the GIL for as long as they run, and 10 MB of empty messages took ``json.loads``
about 0.3 s on this project's 2-core machine, during which the replica answered nothing,
health checks included; 1 MB of empty arrays (350,000 values) took 0.6 s. A child process
parses a body of more than ``PROCESS_BODY_VALUES`` JSON values (bounds.py), whatever its
size, checks the message and part counts, validates it, and sends back the typed request
or our 400: only a body within the limits comes back. A large body of few values (a
shopper's 3 MB photo: one long base64 string, no commas) parses in about 5 ms and stays in
a thread: through the child it would be pickled both ways and queue behind every other
large photo. Smaller bodies take a thread or stay on the loop (bounds.body_place). Every
endpoint that reads a body parses it here, so none can take the loop for itself.

One child, started with the replica (``GATEWAY_PARSE_PROCESS_WARM``; else at the first
such body), so these bodies queue for it instead of taking every core; it is replaced
when it dies, and it dies with the replica (gateway/children.py).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import AsyncExitStack
from typing import TypeVar

from pydantic import BaseModel

from gateway.children import end_with_parent
from gateway.config import Settings
from gateway.errors import ErrorCode, GatewayError
from gateway.protocol import ChatCompletionRequest, VQARequest
from gateway.validation.bounds import body_place, off_loop_if
from gateway.validation.parse import BodyShape, parse_body_sync

log = logging.getLogger("gateway.validation")

_Parsed = ChatCompletionRequest | VQARequest
_Outcome = tuple[BaseModel | None, tuple[str, str, str | None] | None]
_B = TypeVar("_B", bound=BaseModel)


def _ready() -> bool:
    return True


def _parse_in_child(raw: bytes, settings: Settings, shape: BodyShape | type[BaseModel]) -> _Outcome:
    try:
        return parse_body_sync(raw, settings, shape), None
    except GatewayError as error:
        return None, (error.code.value, error.message, error.param)


class BodyParser:
    """Every endpoint's body parser: on the loop, in a thread or in the child process, by
    the body's values and size."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._executor: ProcessPoolExecutor | None = None
        self._warming: asyncio.Future[bool] | None = None

    async def parse_chat(self, raw: bytes) -> _Parsed:
        """/v1/chat/completions: OpenAI's format, or the simple shape without messages."""
        parsed = await self.parse(raw, "chat")
        assert isinstance(parsed, ChatCompletionRequest | VQARequest)
        return parsed

    async def parse_vqa(self, raw: bytes) -> VQARequest:
        return await self.parse_model(raw, VQARequest)

    async def parse_model(self, raw: bytes, model: type[_B]) -> _B:
        """Another endpoint's body as its strict model (/v1/match, /v1/batches): the model
        is sent to the child by reference, so a body of many values comes back only as a
        request within the model's limits, or as our 400."""
        parsed = await self.parse(raw, "vqa" if model is VQARequest else model)
        assert isinstance(parsed, model)
        return parsed

    async def parse(self, raw: bytes, shape: BodyShape | type[BaseModel]) -> BaseModel:
        place = body_place(raw)
        if place != "process":
            work = lambda: parse_body_sync(raw, self._settings, shape)  # noqa: E731
            return await off_loop_if(place == "thread", work)
        loop = asyncio.get_running_loop()
        try:
            parsed, error = await loop.run_in_executor(
                self._child(), _parse_in_child, raw, self._settings, shape
            )
        except BrokenProcessPool:  # the child died (OOM?): a new one for the next body
            log.warning("the body parser process died; starting another")
            self._executor = None
            return await asyncio.to_thread(parse_body_sync, raw, self._settings, shape)
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
            self._executor = ProcessPoolExecutor(
                max_workers=1,
                mp_context=context,
                initializer=end_with_parent,
                initargs=(os.getpid(),),
            )
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
