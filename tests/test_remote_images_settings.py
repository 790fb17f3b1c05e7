"""GATEWAY_REMOTE_IMAGES_* settings: parsed from the environment, refused at start-up when
wrong, and off unless enabled."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from gateway.config import Settings


def test_off_with_nothing_allowed_by_default() -> None:
    remote = Settings().remote_images
    assert not remote.enabled
    assert remote.allowed_hosts == ()
    assert remote.allowed_networks == ()
    assert remote.allowed_ports == (80, 443)
    # The byte cap follows the largest image a data URL could carry in a request body.
    assert remote.effective_max_bytes(16 * 1024 * 1024) == 12 * 1024 * 1024


def test_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_REMOTE_IMAGES_ENABLED", "true")
    monkeypatch.setenv(
        "GATEWAY_REMOTE_IMAGES_ALLOWED_HOSTS", " Img.Example.com., *.cdn.example.com "
    )
    monkeypatch.setenv("GATEWAY_REMOTE_IMAGES_ALLOWED_PORTS", "443,8443")
    monkeypatch.setenv("GATEWAY_REMOTE_IMAGES_ALLOWED_NETWORKS", "10.20.0.0/16,fd12::/64")
    monkeypatch.setenv("GATEWAY_REMOTE_IMAGES_MAX_BYTES", "1000")
    remote = Settings().remote_images
    assert remote.enabled
    assert remote.allowed_hosts == ("img.example.com", "*.cdn.example.com")
    assert remote.allowed_ports == (443, 8443)
    assert remote.allowed_networks == (
        ipaddress.ip_network("10.20.0.0/16"),
        ipaddress.ip_network("fd12::/64"),
    )
    assert remote.effective_max_bytes(16 * 1024 * 1024) == 1000


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ALLOWED_HOSTS", "*"),
        ("ALLOWED_HOSTS", "a.*.example.com"),
        ("ALLOWED_HOSTS", "https://example.com/"),
        ("ALLOWED_NETWORKS", "10.0.0.1/8"),  # host bits set: probably a typo
        ("ALLOWED_NETWORKS", "not-a-network"),
        ("ALLOWED_PORTS", "http"),
        ("MAX_BYTES", "0"),
        ("TIMEOUT_S", "0"),
        ("MAX_REDIRECTS", "-1"),
    ],
)
def test_bad_values_stop_the_start(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(f"GATEWAY_REMOTE_IMAGES_{name}", value)
    with pytest.raises(ValidationError):
        Settings()
