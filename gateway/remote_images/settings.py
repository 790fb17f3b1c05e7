"""Settings of remote image fetching, read from the environment (``GATEWAY_REMOTE_IMAGES_``).

Off by default: with it on, the gateway makes outbound requests on a caller's behalf, so
the operator names the hosts it may reach. Times are in seconds, sizes in bytes.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class RemoteImageSettings(BaseSettings):
    """Everything remote image fetching can be told (env: GATEWAY_REMOTE_IMAGES_<NAME>)."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_REMOTE_IMAGES_", frozen=True, extra="ignore"
    )

    # Off: http(s) image URLs get 400 remote_image_url_unsupported.
    enabled: bool = False
    # Exact host names ("cdn.example.com") and suffix patterns ("*.example.com", which
    # matches sub-domains but not example.com itself). Empty: nothing is allowed.
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    # Ports an allowed host may be reached on: a host name shared with other services
    # (an admin panel on :8443) stays out of reach. Empty: any port.
    allowed_ports: Annotated[tuple[int, ...], NoDecode] = (80, 443)
    # CIDRs exempted from the address block (an image CDN inside the private network).
    # Cloud metadata addresses stay blocked even inside an exempted network.
    allowed_networks: Annotated[tuple[Network, ...], NoDecode] = ()
    # Largest image accepted; None: the largest a data URL could carry in a request body
    # (GATEWAY_MAX_BODY_BYTES * 3/4), so both ways of sending an image share one limit.
    max_bytes: int | None = Field(default=None, gt=0)
    # The whole fetch of one image (every redirect and the body); connect: each connection.
    timeout_s: float = Field(default=5.0, gt=0)
    connect_timeout_s: float = Field(default=2.0, gt=0)
    max_redirects: int = Field(default=3, ge=0)
    # Connections kept to image hosts, shared by all requests of one gateway process.
    max_connections: int = Field(default=64, gt=0)

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: object) -> object:
        value = _comma_list(value)
        if isinstance(value, list | tuple):
            hosts = tuple(str(host).strip().lower().strip("[]").rstrip(".") for host in value)
            for host in hosts:
                name = host[2:] if host.startswith("*.") else host
                if not name or "*" in name or "/" in name or "@" in name:
                    raise ValueError(
                        f"allowed host {host!r} must be a host name, an IP address or a "
                        "*.suffix pattern"
                    )
            return hosts
        return value

    @field_validator("allowed_ports", "allowed_networks", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return _comma_list(value)

    def effective_max_bytes(self, max_body_bytes: int) -> int:
        return self.max_bytes if self.max_bytes is not None else max_body_bytes * 3 // 4
