"""Fetch remote images for the caller: allow-listed hosts, vetted addresses, capped bytes.

Every URL, the first and each redirect's, is checked before a connection is made: http(s)
only, no credentials, an allowed port, an allowed host name, and (IP literals here, names
in the resolver) an address that is not loopback, private, link-local or metadata.
Redirects are followed by hand so that each hop passes the same checks. The caller gets
bytes; the format is verified later by the same checks as data URLs.

Error messages name the request field, never the URL: it may hold credentials or tokens.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from typing import Final

import aiohttp
from yarl import URL

from gateway import __version__
from gateway.errors import ErrorCode, GatewayError
from gateway.images import is_remote_url, remote_url_unsupported
from gateway.metrics import Metrics
from gateway.remote_images.policy import host_allowed, is_blocked, parse_address
from gateway.remote_images.resolver import (
    AddressBlockedError,
    HostLookup,
    VettingResolver,
    system_lookup,
)
from gateway.remote_images.settings import RemoteImageSettings

_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_CHUNK_BYTES: Final = 64 * 1024
USER_AGENT: Final = f"vlm-serve-gateway/{__version__} (image fetcher)"

# Outcome label of gateway_remote_image_fetches for each refusal.
_OUTCOMES: Final = {
    ErrorCode.REMOTE_IMAGE_HOST_NOT_ALLOWED: "host_not_allowed",
    ErrorCode.REMOTE_IMAGE_ADDRESS_BLOCKED: "address_blocked",
    ErrorCode.REMOTE_IMAGE_FETCH_FAILED: "fetch_failed",
    ErrorCode.REMOTE_IMAGE_TOO_MANY_REDIRECTS: "too_many_redirects",
    ErrorCode.REMOTE_IMAGE_TOO_LARGE: "too_large",
    ErrorCode.REMOTE_IMAGE_TIMEOUT: "timeout",
    ErrorCode.INVALID_IMAGE_URL: "invalid_url",
}


def create_fetch_session(
    settings: RemoteImageSettings,
    lookup: HostLookup | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> aiohttp.ClientSession:
    """The fetcher's own session: never the workers' pool, cookies or proxy settings.

    ``lookup`` and ``ssl_context`` (default: the system's DNS and CA store) are for tests."""
    connector = aiohttp.TCPConnector(
        resolver=VettingResolver(lookup or system_lookup, settings.allowed_networks),
        ssl=ssl_context if ssl_context is not None else True,
        # Every new connection resolves (and vets) afresh; nothing outlives a DNS answer.
        use_dns_cache=False,
        limit=settings.max_connections,
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,  # no HTTP(S)_PROXY detour around the address checks
        # Images are compressed already; refusing content codings rules out gzip bombs.
        auto_decompress=False,
        headers={
            "User-Agent": USER_AGENT,
            "Accept": "image/jpeg, image/png, image/webp, image/gif",
            "Accept-Encoding": "identity",
        },
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout_s),
    )


def _refused(code: ErrorCode, message: str, param: str) -> GatewayError:
    return GatewayError(code, f"'{param}': {message}", param=param)


class RemoteImageFetcher:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: RemoteImageSettings,
        max_bytes: int,
        metrics: Metrics,
    ) -> None:
        self._session = session
        self._settings = settings
        self._max_bytes = max_bytes
        self._metrics = metrics

    async def fetch_all(self, urls: Sequence[tuple[str, str]]) -> list[bytes]:
        """Fetch (url, param) pairs concurrently; the first refusal cancels the rest."""
        if len(urls) == 1:
            return [await self.fetch(*urls[0])]
        tasks = [asyncio.ensure_future(self.fetch(url, param)) for url, param in urls]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def fetch(self, url: str, param: str) -> bytes:
        started = time.perf_counter()
        outcome = "cancelled"  # kept only when the caller goes away mid-fetch
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                data = await self._follow(url, param)
            outcome = "ok"
        except TimeoutError:
            outcome = "timeout"
            raise _refused(
                ErrorCode.REMOTE_IMAGE_TIMEOUT,
                f"the image server did not deliver the image within "
                f"{self._settings.timeout_s:g} s.",
                param,
            ) from None
        except GatewayError as exc:
            outcome = _OUTCOMES.get(exc.code, "fetch_failed")
            raise
        except Exception:
            outcome = "error"
            raise
        finally:
            self._metrics.remote_image_fetches.labels(outcome).inc()
            self._metrics.remote_image_fetch_duration.observe(time.perf_counter() - started)
        self._metrics.remote_image_bytes.observe(len(data))
        return data

    async def _follow(self, url: str, param: str) -> bytes:
        current = self._checked(url, None, param)
        for _ in range(self._settings.max_redirects + 1):
            try:
                async with self._session.get(current, allow_redirects=False) as response:
                    location = response.headers.get("Location")
                    if response.status in _REDIRECTS and location is not None:
                        current = self._checked(location, current, param)
                        continue
                    if response.status != 200:
                        raise _refused(
                            ErrorCode.REMOTE_IMAGE_FETCH_FAILED,
                            f"the image server answered with status {response.status}.",
                            param,
                        )
                    return await self._read(response, param)
            except AddressBlockedError:
                raise _blocked(param) from None
            except TimeoutError:
                raise  # a connect timeout is reported as the fetch's timeout
            except (aiohttp.ClientError, OSError, ValueError):
                # ValueError: aiohttp's refusals of odd responses (bad Content-Length, ...)
                raise _refused(
                    ErrorCode.REMOTE_IMAGE_FETCH_FAILED,
                    "the image could not be downloaded.",
                    param,
                ) from None
        raise _refused(
            ErrorCode.REMOTE_IMAGE_TOO_MANY_REDIRECTS,
            f"more than {self._settings.max_redirects} redirects.",
            param,
        )

    async def _read(self, response: aiohttp.ClientResponse, param: str) -> bytes:
        length = response.content_length
        if length is not None and length > self._max_bytes:
            raise self._too_large(param)
        body = bytearray()
        async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
            body += chunk
            if len(body) > self._max_bytes:
                raise self._too_large(param)
        return bytes(body)

    def _too_large(self, param: str) -> GatewayError:
        return _refused(
            ErrorCode.REMOTE_IMAGE_TOO_LARGE,
            f"the image is larger than the limit of {self._max_bytes} bytes.",
            param,
        )

    def _checked(self, location: str, base: URL | None, param: str) -> URL:
        """Parse ``location`` (relative to ``base`` for redirects) and check it all but
        the resolved addresses, which the resolver checks on connect."""
        try:
            url = URL(location)
            if base is not None:
                url = base.join(url)
            host, port = url.raw_host, url.port
        except (ValueError, TypeError):
            raise _refused(
                ErrorCode.INVALID_IMAGE_URL, "the image URL is malformed.", param
            ) from None
        if url.scheme not in ("http", "https") or not host or port is None:
            raise _refused(
                ErrorCode.INVALID_IMAGE_URL, "image URLs must be http(s)://host/... .", param
            )
        if url.raw_user is not None or url.raw_password is not None:
            raise _refused(
                ErrorCode.INVALID_IMAGE_URL, "image URLs must not carry credentials.", param
            )
        allowed_ports = self._settings.allowed_ports
        if allowed_ports and port not in allowed_ports:
            raise _refused(
                ErrorCode.REMOTE_IMAGE_HOST_NOT_ALLOWED,
                "the image URL's port is not allowed on this server.",
                param,
            )
        if not host_allowed(host, self._settings.allowed_hosts):
            raise _refused(
                ErrorCode.REMOTE_IMAGE_HOST_NOT_ALLOWED,
                "the image host is not on this server's allow-list.",
                param,
            )
        # IP literals never reach the resolver: aiohttp dials them as they are.
        address = parse_address(host)
        if address is not None and is_blocked(address, self._settings.allowed_networks):
            raise _blocked(param)
        return url


async def fetch_remote_references(
    references: Sequence[tuple[str, str]], fetcher: RemoteImageFetcher | None
) -> list[bytes | None]:
    """The bytes of each (reference, param) that is an http(s) URL, fetched concurrently;
    None for the others (data URIs, base64). Without a fetcher, remote images are off."""
    remote = [(ref, param) for ref, param in references if is_remote_url(ref)]
    if not remote:
        return [None] * len(references)
    if fetcher is None:
        raise remote_url_unsupported(remote[0][1])
    fetched = iter(await fetcher.fetch_all(remote))
    return [next(fetched) if is_remote_url(ref) else None for ref, _ in references]


def _blocked(param: str) -> GatewayError:
    return _refused(
        ErrorCode.REMOTE_IMAGE_ADDRESS_BLOCKED,
        "the image host resolves to an address this server does not fetch from "
        "(private, loopback, link-local or metadata).",
        param,
    )
