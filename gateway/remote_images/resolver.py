"""DNS for the image fetcher: every connection's addresses are vetted where they are used.

The fetcher's connector asks this resolver for the addresses of each new connection and
connects to exactly what it returns, so the addresses checked are the addresses dialled:
a name that answers a public address to a check and a private one to the connect (DNS
rebinding) gets no second lookup to exploit. TLS still verifies the real host name.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence

from aiohttp.abc import AbstractResolver, ResolveResult

from gateway.remote_images.policy import is_blocked, parse_address
from gateway.remote_images.settings import Network

# host, port -> the addresses it resolves to (as text). Tests pass their own.
HostLookup = Callable[[str, int], Awaitable[Sequence[str]]]


class AddressBlockedError(Exception):
    """A host resolved to an address the gateway must not connect to.

    Not an OSError on purpose: aiohttp wraps those into a generic DNS error, and this one
    must reach the fetcher as itself."""


async def system_lookup(host: str, port: int) -> list[str]:
    """The system resolver, without blocking the event loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


class VettingResolver(AbstractResolver):
    def __init__(self, lookup: HostLookup, allowed_networks: Sequence[Network]) -> None:
        self._lookup = lookup
        self._allowed_networks = tuple(allowed_networks)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        answers = await self._lookup(host, port)
        results: list[ResolveResult] = []
        for text in dict.fromkeys(answers):  # de-duplicated, order kept
            address = parse_address(text)
            # One bad address refuses the host: connecting to "the others" would leave
            # the choice of target to whoever controls the name's records.
            if address is None or is_blocked(address, self._allowed_networks):
                raise AddressBlockedError(host)
            if family not in (socket.AF_UNSPEC, _family(address.version)):
                continue
            results.append(
                ResolveResult(
                    hostname=host,
                    host=str(address),
                    port=port,
                    family=_family(address.version),
                    proto=socket.IPPROTO_TCP,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        if not results:
            raise OSError(f"no usable address for {host}")
        return results

    async def close(self) -> None:
        pass


def _family(version: int) -> socket.AddressFamily:
    return socket.AF_INET if version == 4 else socket.AF_INET6
