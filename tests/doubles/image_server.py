"""A local image server for the remote-image tests: images, impostors, redirects, slow and
oversized bodies, and a count of every request it received (to show what was never asked).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from tests.support.images import image_bytes

PNG = image_bytes("PNG", (40, 30))
OTHER_PNG = image_bytes("PNG", (24, 24))
BMP = image_bytes("BMP", (40, 30))
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
LARGE_BYTES = 300_000  # the body of /large and /large-chunked

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ImageServer:
    """Serves ``png`` at /image.png; ``hits`` counts requests by path."""

    png: bytes = PNG
    host: str = "127.0.0.1"
    port: int = 0
    hits: Counter[str] = field(default_factory=Counter)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    scheme: str = "http"

    def url(self, path: str, host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._count])
        app.router.add_get("/image.png", self._bytes(self.png))
        app.router.add_get("/bmp-as-png", self._bytes(BMP))
        app.router.add_get("/svg-as-png", self._bytes(SVG))
        app.router.add_get("/text-as-png", self._bytes(b"hello, not an image"))
        app.router.add_get("/large", self._bytes(b"\x00" * LARGE_BYTES))
        app.router.add_get("/large-chunked", self._large_chunked)
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/missing", self._missing)
        app.router.add_get("/hops/{n}", self._hops)
        app.router.add_get("/to", self._redirect_to)
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.hits[request.path] += 1
        response: web.StreamResponse = await handler(request)
        return response

    @staticmethod
    def _bytes(body: bytes) -> Handler:
        async def handler(_: web.Request) -> web.StreamResponse:
            return web.Response(body=body, content_type="image/png")  # whatever the bytes are

        return handler

    async def _large_chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()  # no Content-Length: the cap must count bytes
        await response.prepare(request)
        for _ in range(LARGE_BYTES // 10_000):
            await response.write(b"\x00" * 10_000)
        await response.write_eof()
        return response

    async def _slow(self, _: web.Request) -> web.StreamResponse:
        await self.release.wait()
        return web.Response(body=self.png, content_type="image/png")

    async def _missing(self, _: web.Request) -> web.StreamResponse:
        return web.Response(status=404)

    async def _hops(self, request: web.Request) -> web.StreamResponse:
        """/hops/N redirects N times (relative Locations), then serves the image."""
        n = int(request.match_info["n"])
        location = f"/hops/{n - 1}" if n > 1 else "/image.png"
        raise web.HTTPFound(location)

    async def _redirect_to(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(request.query["location"])


@contextlib.asynccontextmanager
async def running(
    server: ImageServer, tls: ssl.SSLContext | None = None
) -> AsyncIterator[ImageServer]:
    runner = web.AppRunner(server.app(), shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    server.scheme = "https" if tls is not None else "http"
    site = web.TCPSite(runner, server.host, server.port, ssl_context=tls)
    await site.start()
    server.port = runner.addresses[0][1]
    try:
        yield server
    finally:
        server.release.set()
        await runner.cleanup()


def make_certificates(directory: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a certificate for ``name``, client context trusting its CA),
    made with the openssl command line."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=vlm-serve test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign")  # fmt: skip
    openssl("req", *key, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", f"/CN={name}")
    (directory / "leaf.ext").write_text(f"subjectAltName=DNS:{name}\n")
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "leaf.pem", "-days", "2",
            "-extfile", "leaf.ext")  # fmt: skip
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(directory / "leaf.pem", directory / "leaf.key")
    client = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    return server, client
