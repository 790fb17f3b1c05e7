"""Which hosts, ports and addresses a remote image may come from.

Host names are checked against the operator's allow-list; addresses (after DNS, for every
connection) against a block-list of everything that is not the public internet: a URL
must never make the gateway reach itself, the private network or a cloud metadata
service (server-side request forgery).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

from gateway.remote_images.settings import Network

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud instance metadata services: blocked even inside an operator-exempted network.
METADATA_ADDRESSES: Final[frozenset[Address]] = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
        ipaddress.ip_address("fd00:ec2::254"),  # AWS, over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
METADATA_HOSTS: Final = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data",
     "instance-data.ec2.internal", "metadata.azure.internal"}
)  # fmt: skip

_CGNAT: Final = ipaddress.ip_network("100.64.0.0/10")
_NAT64: Final = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), which is where a
    connection to it ends up."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in network for network in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _not_public(address: Address) -> bool:
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
        or (isinstance(address, ipaddress.IPv4Address) and address in _CGNAT)
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )


def is_blocked(address: Address, allowed_networks: Iterable[Network] = ()) -> bool:
    """True when a connection to ``address`` must not be made."""
    targets: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            targets.append(inner)
    if any(target in METADATA_ADDRESSES for target in targets):
        return True
    exempt = tuple(allowed_networks)
    for target in targets:
        if any(target.version == net.version and target in net for net in exempt):
            continue
        if _not_public(target):
            return True
    return False


def parse_address(host: str) -> Address | None:
    """The address when ``host`` is an IP literal (canonical forms only), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def host_allowed(host: str, allowed_hosts: Iterable[str]) -> bool:
    """Exact names, or ``*.suffix`` patterns matching sub-domains of the suffix."""
    host = host.lower().rstrip(".")
    if not host or host in METADATA_HOSTS:
        return False
    for pattern in allowed_hosts:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False
