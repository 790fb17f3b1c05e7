"""A fault-injecting TCP proxy for tests and drills: put it between the gateway and a worker.

    async with FaultProxy("127.0.0.1", worker_port) as proxy:
        proxy.delay_s = 0.2     # every chunk, both ways, waits this long
        proxy.refuse = True     # new connections are closed at once
        ... use proxy.url ...

Settings change live; connections already open see the new delay on their next chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self


class FaultProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.delay_s = 0.0
        self.refuse = False
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        await self._server.wait_closed()

    def cut(self) -> None:
        """Break every open connection (a worker dying mid-answer)."""
        for task in list(self._tasks):
            task.cancel()

    async def stop_listening(self) -> None:
        """Close the port: new connections are refused, as by a dead worker."""
        assert self._server is not None
        self._server.close()
        self.cut()
        await self._server.wait_closed()

    async def listen(self) -> None:
        """Open the same port again (the worker came back)."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.close()
            return
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        for task in pumps:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for w in (writer, up_writer):
            w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(chunk)
                await writer.drain()
