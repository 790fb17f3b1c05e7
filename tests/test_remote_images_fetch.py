"""The remote image fetcher against a local image server: allow-list, address block (after
DNS, on every redirect, against rebinding), redirects, byte cap, timeout.

Host names like ``images.test`` resolve through an injected lookup, so each test says
which address a name has; ``allowed_networks`` exempts loopback only where a test needs
the fetch to succeed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ErrorCode, GatewayError
from gateway.metrics import Metrics
from gateway.remote_images import RemoteImageFetcher, RemoteImageSettings, open_fetcher
from gateway.remote_images.fetcher import create_fetch_session
from gateway.remote_images.policy import host_allowed, is_blocked
from tests.doubles.image_server import OTHER_PNG, PNG, ImageServer, make_certificates, running

PARAM = "messages[0].content[0].image_url.url"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[ImageServer]:
    async with running(ImageServer()) as server:
        yield server


class Lookup:
    """Names to addresses, recording every lookup the fetcher makes."""

    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        if host not in self.table:
            raise OSError("unknown host")
        return self.table[host]


@asynccontextmanager
async def fetcher(
    server: ImageServer, lookup: Lookup | None = None, **overrides: Any
) -> AsyncIterator[tuple[RemoteImageFetcher, Metrics]]:
    values: dict[str, Any] = {
        "enabled": True,
        "allowed_hosts": ("images.test", "*.cdn.test", "evil.test", "127.0.0.1"),
        "allowed_ports": (server.port,),
        "allowed_networks": LOOPBACK,
        "max_bytes": 100_000,
        **overrides,
    }
    metrics = Metrics()
    table = {"images.test": ["127.0.0.1"], "a.cdn.test": ["127.0.0.1"]}
    async with AsyncExitStack() as stack:
        made = open_fetcher(
            RemoteImageSettings(**values), 1 << 20, metrics, stack, lookup or Lookup(table)
        )
        assert made is not None
        yield made, metrics


async def refusal(fetcher: RemoteImageFetcher, url: str) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        await fetcher.fetch(url, PARAM)
    assert caught.value.param == PARAM
    assert caught.value.status == 400
    return caught.value


async def test_allowed_host_is_fetched(server: ImageServer) -> None:
    async with fetcher(server) as (fetch, metrics):
        assert await fetch.fetch(server.url("/image.png", "images.test"), PARAM) == PNG
        assert await fetch.fetch(server.url("/image.png", "a.cdn.test"), PARAM) == PNG
        samples = metrics.registry.get_sample_value
        assert samples("gateway_remote_image_fetches_total", {"outcome": "ok"}) == 2
        assert samples("gateway_remote_image_bytes_sum") == 2 * len(PNG)


async def test_disabled_opens_nothing() -> None:
    async with AsyncExitStack() as stack:
        assert open_fetcher(RemoteImageSettings(), 1 << 20, Metrics(), stack) is None


@pytest.mark.parametrize("host", ["other.test", "cdn.test", "images.test.evil.test2"])
async def test_host_not_on_the_allow_list(server: ImageServer, host: str) -> None:
    lookup = Lookup({host: ["127.0.0.1"]})
    async with fetcher(server, lookup) as (fetch, metrics):
        error = await refusal(fetch, server.url("/image.png", host))
    assert error.code is ErrorCode.REMOTE_IMAGE_HOST_NOT_ALLOWED
    assert lookup.calls == []  # refused before any DNS
    assert metrics.registry.get_sample_value(
        "gateway_remote_image_fetches_total", {"outcome": "host_not_allowed"}
    )


def test_host_patterns() -> None:
    allowed = ("images.test", "*.cdn.test")
    assert host_allowed("IMAGES.test.", allowed)
    assert host_allowed("a.b.cdn.test", allowed)
    assert not host_allowed("cdn.test", allowed)  # the pattern means sub-domains only
    assert not host_allowed("xcdn.test", allowed)
    assert not host_allowed("metadata.google.internal", ("metadata.google.internal",))
    assert not host_allowed("anything.test", ())  # empty list: nothing, even when enabled


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.1.1",
        "172.16.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.100.100.200",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fd00:ec2::254",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    ],
)
async def test_host_resolving_to_a_blocked_address(server: ImageServer, address: str) -> None:
    lookup = Lookup({"images.test": [address]})
    before = server.hits["/image.png"]
    async with fetcher(server, lookup, allowed_networks=()) as (fetch, _):
        error = await refusal(fetch, server.url("/image.png", "images.test"))
    assert error.code is ErrorCode.REMOTE_IMAGE_ADDRESS_BLOCKED
    assert server.hits["/image.png"] == before


async def test_one_blocked_address_among_public_ones_refuses_the_host(
    server: ImageServer,
) -> None:
    lookup = Lookup({"images.test": ["93.184.215.14", "127.0.0.1"]})
    async with fetcher(server, lookup, allowed_networks=()) as (fetch, _):
        error = await refusal(fetch, server.url("/image.png", "images.test"))
    assert error.code is ErrorCode.REMOTE_IMAGE_ADDRESS_BLOCKED


def test_address_policy() -> None:
    public = ipaddress.ip_address("93.184.215.14")
    metadata = ipaddress.ip_address("169.254.169.254")
    assert not is_blocked(public)
    assert not is_blocked(ipaddress.ip_address("2606:2800:21f:cb07:6820:80da:af6b:8b2c"))
    assert is_blocked(ipaddress.ip_address("127.0.0.1"))
    assert not is_blocked(ipaddress.ip_address("127.0.0.1"), LOOPBACK)
    # The exemption never opens the metadata service, in any spelling.
    everything = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
    assert is_blocked(metadata, everything)
    assert is_blocked(ipaddress.ip_address("::ffff:169.254.169.254"), everything)


async def test_ip_literal_urls_are_checked_too(server: ImageServer) -> None:
    url = server.url("/image.png", "127.0.0.1")
    before = server.hits["/image.png"]
    async with fetcher(server, allowed_networks=()) as (fetch, _):
        error = await refusal(fetch, url)
        assert error.code is ErrorCode.REMOTE_IMAGE_ADDRESS_BLOCKED
        assert server.hits["/image.png"] == before
    async with fetcher(server) as (fetch, _):  # loopback exempted
        assert await fetch.fetch(url, PARAM) == PNG


async def test_redirect_to_a_blocked_address(server: ImageServer) -> None:
    lookup = Lookup({"images.test": ["127.0.0.1"], "evil.test": ["169.254.169.254"]})
    target = server.url("/image.png", "evil.test")
    async with fetcher(server, lookup) as (fetch, _):
        error = await refusal(fetch, server.url(f"/to?location={target}", "images.test"))
    assert error.code is ErrorCode.REMOTE_IMAGE_ADDRESS_BLOCKED
    assert lookup.calls == ["images.test", "evil.test"]


async def test_redirect_to_a_host_not_allowed(server: ImageServer) -> None:
    target = server.url("/image.png", "elsewhere.test")
    async with fetcher(server) as (fetch, _):
        error = await refusal(fetch, server.url(f"/to?location={target}", "images.test"))
    assert error.code is ErrorCode.REMOTE_IMAGE_HOST_NOT_ALLOWED


async def test_redirects_are_followed_up_to_the_limit(server: ImageServer) -> None:
    async with fetcher(server, max_redirects=3) as (fetch, _):
        assert await fetch.fetch(server.url("/hops/3", "images.test"), PARAM) == PNG
        error = await refusal(fetch, server.url("/hops/4", "images.test"))
    assert error.code is ErrorCode.REMOTE_IMAGE_TOO_MANY_REDIRECTS


@pytest.mark.parametrize("path", ["/large", "/large-chunked"])
async def test_body_over_the_cap(server: ImageServer, path: str) -> None:
    async with fetcher(server) as (fetch, _):
        error = await refusal(fetch, server.url(path, "images.test"))
    assert error.code is ErrorCode.REMOTE_IMAGE_TOO_LARGE
    assert "100000 bytes" in error.message


async def test_slow_server_times_out(server: ImageServer) -> None:
    async with fetcher(server, timeout_s=0.2) as (fetch, metrics):
        error = await refusal(fetch, server.url("/slow", "images.test"))
    assert error.code is ErrorCode.REMOTE_IMAGE_TIMEOUT
    assert metrics.registry.get_sample_value(
        "gateway_remote_image_fetches_total", {"outcome": "timeout"}
    )


async def test_server_errors_and_refused_connections(server: ImageServer) -> None:
    async with fetcher(server) as (fetch, _):
        error = await refusal(fetch, server.url("/missing", "images.test"))
        assert error.code is ErrorCode.REMOTE_IMAGE_FETCH_FAILED
        assert "404" in error.message
    async with fetcher(server, allowed_ports=()) as (fetch, _):
        closed = server.url("/image.png", "images.test").replace(str(server.port), "9")
        error = await refusal(fetch, closed)  # port 9 (discard): nothing listens
        assert error.code is ErrorCode.REMOTE_IMAGE_FETCH_FAILED


async def test_url_checks_before_any_connection(server: ImageServer) -> None:
    lookup = Lookup({"images.test": ["127.0.0.1"]})
    async with fetcher(server, lookup) as (fetch, _):
        secret = server.url("/image.png", "user:s3cret@images.test")
        error = await refusal(fetch, secret)
        assert error.code is ErrorCode.INVALID_IMAGE_URL
        assert "s3cret" not in error.message
        assert "images.test" not in error.message
        other_port = f"http://images.test:{server.port + 1}/image.png"
        error = await refusal(fetch, other_port)
        assert error.code is ErrorCode.REMOTE_IMAGE_HOST_NOT_ALLOWED
    assert lookup.calls == []


async def test_dns_rebinding_connects_to_the_vetted_address() -> None:
    """The name answers an allowed address first and loopback after. The fetch must dial
    the address that was vetted: a second lookup at connect time would reach 127.0.0.1."""
    vetted = ImageServer(png=PNG, host="127.0.0.2")
    async with running(vetted):
        loopback = ImageServer(png=OTHER_PNG, host="127.0.0.1", port=vetted.port)
        async with running(loopback):
            answers = iter([["127.0.0.2"], ["127.0.0.1"], ["127.0.0.1"]])

            class Rebinding(Lookup):
                async def __call__(self, host: str, port: int) -> Sequence[str]:
                    self.calls.append(host)
                    return next(answers)

            lookup = Rebinding({})
            exempt = (ipaddress.ip_network("127.0.0.2/32"),)
            async with fetcher(vetted, lookup, allowed_networks=exempt) as (fetch, _):
                data = await fetch.fetch(vetted.url("/image.png", "images.test"), PARAM)
            assert data == PNG
            assert lookup.calls == ["images.test"]
            assert loopback.hits["/image.png"] == 0
            assert vetted.hits["/image.png"] == 1


async def test_several_images_are_fetched_concurrently_and_in_order(server: ImageServer) -> None:
    async with fetcher(server) as (fetch, _):
        urls = [(server.url("/image.png", "images.test"), "a"), (server.url("/hops/1"), "b")]
        assert await fetch.fetch_all(urls) == [PNG, PNG]
        with pytest.raises(GatewayError) as caught:
            await fetch.fetch_all([(server.url("/missing"), "a"), (server.url("/slow"), "b")])
        assert caught.value.param == "a"


async def test_https_verifies_the_real_host_name(tmp_path: Path) -> None:
    """The connection goes to a vetted IP, but TLS still checks the certificate against the
    URL's host name (and the system's trust store unless told otherwise)."""
    server_tls, client_tls = make_certificates(tmp_path, "images.test")
    async with running(ImageServer(), server_tls) as server:
        settings = RemoteImageSettings(
            enabled=True,
            allowed_hosts=("images.test", "other.test"),
            allowed_ports=(server.port,),
            allowed_networks=LOOPBACK,
        )
        lookup = Lookup({"images.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
        for context, host, expected in (
            (client_tls, "images.test", PNG),
            (client_tls, "other.test", None),  # same address, certificate for another name
            (None, "images.test", None),  # a CA the system does not trust
        ):
            session = create_fetch_session(settings, lookup, context)
            async with session:
                fetch = RemoteImageFetcher(session, settings, 100_000, Metrics())
                url = server.url("/image.png", host)
                if expected is not None:
                    assert await fetch.fetch(url, PARAM) == expected
                else:
                    error = await refusal(fetch, url)
                    assert error.code is ErrorCode.REMOTE_IMAGE_FETCH_FAILED
        assert server.hits["/image.png"] == 1
