"""Worker discovery through DNS: a Kubernetes headless service (or any name with one
address per worker) becomes one worker URL per address.

``GATEWAY_WORKER_DNS=http://vllm-workers.serving.svc.cluster.local:8000`` is resolved every
``discovery_interval_s``; each A/AAAA record gives ``http://<address>:8000``. Static
``GATEWAY_WORKER_URLS`` and discovered workers together make the pool.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

log = logging.getLogger("gateway.upstream.discovery")

# (host, port) -> the addresses the name has now.
Resolve = Callable[[str, int], Awaitable[list[str]]]


async def resolve_addresses(host: str, port: int) -> list[str]:
    """Every address of ``host`` (IPv4 and IPv6), through the loop's resolver thread."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return sorted({str(info[4][0]) for info in infos})


def _url(scheme: str, address: str, port: int) -> str:
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return f"{scheme}://{host}:{port}"


class DnsDiscovery:
    """The worker URLs behind the configured names, as of the last successful lookups."""

    def __init__(self, names: Iterable[str], resolve: Resolve = resolve_addresses) -> None:
        self._targets = []
        for name in names:
            parts = urlsplit(name)
            default = 443 if parts.scheme == "https" else 80
            self._targets.append((parts.scheme, parts.hostname or "", parts.port or default))
        self._resolve = resolve
        # Per name: its last good answer. A failed or empty lookup keeps it, so a DNS
        # blip never empties the pool; health checks still judge every worker.
        self._known: dict[tuple[str, str, int], list[str]] = {}

    async def urls(self) -> list[str]:
        answers = await asyncio.gather(
            *(self._lookup(target) for target in self._targets), return_exceptions=False
        )
        return sorted({url for urls in answers for url in urls})

    async def _lookup(self, target: tuple[str, str, int]) -> list[str]:
        scheme, host, port = target
        try:
            addresses = await self._resolve(host, port)
        except (OSError, UnicodeError) as exc:
            log.warning(
                "worker discovery: %s did not resolve (%s); keeping its last answer", host, exc
            )
            addresses = []
        if addresses:
            self._known[target] = [_url(scheme, a, port) for a in addresses]
        return self._known.get(target, [])
