"""The front door: whoever it is (the chart's Nginx on a load balancer, an Ingress, a
Gateway API route, in-cluster clients), NetworkPolicy lets its traffic in, the gateways'
body limit and deadline reach it, /metrics stays behind it, and the log records the
client's address it passes on."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.interactions.middleware import client_ip
from gateway.interactions.settings import InteractionLogSettings
from localstack.processes import start_nginx
from tests.support.helm import Manifest, container, env_of, one, profile_values, render

PORT_GATEWAY, PORT_NGINX = 8000, 8080


def _namespace(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


INGRESS_NGINX = _namespace("ingress-nginx")
PROMETHEUS = _namespace("monitoring")  # values.yaml's networkPolicy.prometheusFrom
TEST_POD = {"podSelector": {"matchLabels": {
    "app.kubernetes.io/name": "vlm-serve", "app.kubernetes.io/instance": "rel",
    "app.kubernetes.io/component": "test"}}}  # fmt: skip
ROUTE = {"enabled": True, "parentRefs": [{"name": "public", "namespace": "edge"}]}


def _sources(objects: list[Manifest], policy: str, port: int) -> list[dict[str, Any]] | None:
    """Who a NetworkPolicy admits on ``port``: None = every source."""
    spec = one(objects, "NetworkPolicy", policy)["spec"]
    rules = [r for r in spec["ingress"] if any(p["port"] == port for p in r.get("ports", []))]
    assert len(rules) == 1, rules
    sources: list[dict[str, Any]] | None = rules[0].get("from")
    return sources


@pytest.mark.parametrize(
    ("front_door", "values", "policy", "port", "admitted"),
    [
        ("Nginx on a LoadBalancer",
         {"nginx": {"enabled": True, "service": {"type": "LoadBalancer"}}},
         "rel-vlm-serve-nginx", PORT_NGINX, None),
        ("Nginx on a NodePort", {"nginx": {"enabled": True, "service": {"type": "NodePort"}}},
         "rel-vlm-serve-nginx", PORT_NGINX, None),
        ("an HTTPRoute", {"httpRoute": ROUTE}, "rel-vlm-serve-gateway", PORT_GATEWAY, None),
        ("an HTTPRoute to Nginx", {"httpRoute": ROUTE, "nginx": {"enabled": True}},
         "rel-vlm-serve-nginx", PORT_NGINX, None),
        ("an ALB Ingress", {"ingress": {"enabled": True, "className": "alb"}},
         "rel-vlm-serve-gateway", PORT_GATEWAY, None),
        ("in-cluster clients", {}, "rel-vlm-serve-gateway", PORT_GATEWAY, None),
        ("ingress-nginx", {"ingress": {"enabled": True, "className": "nginx"}},
         "rel-vlm-serve-gateway", PORT_GATEWAY, [INGRESS_NGINX, TEST_POD, PROMETHEUS]),
        ("AKS application routing",
         {"ingress": {"enabled": True, "className": "webapprouting.kubernetes.azure.com"}},
         "rel-vlm-serve-gateway", PORT_GATEWAY,
         [_namespace("app-routing-system"), TEST_POD, PROMETHEUS]),
        ("ingress-nginx to Nginx",
         {"ingress": {"enabled": True, "className": "nginx"}, "nginx": {"enabled": True}},
         "rel-vlm-serve-nginx", PORT_NGINX, [INGRESS_NGINX, TEST_POD]),
        ("peers you name",
         {"httpRoute": ROUTE, "networkPolicy": {"frontDoorFrom": [_namespace("edge")]}},
         "rel-vlm-serve-gateway", PORT_GATEWAY, [_namespace("edge"), TEST_POD, PROMETHEUS]),
    ],
)  # fmt: skip
def test_network_policy_admits_the_front_door_you_chose(
    front_door: str, values: dict[str, Any], policy: str, port: int, admitted: list[Any] | None
) -> None:
    objects = render(profile_values("gpu-bf16", values))
    sources = _sources(objects, policy, port)
    if admitted is None:
        assert sources is None, f"{front_door}: only {sources} may connect"
        return
    assert sources == admitted, front_door


def test_behind_the_charts_nginx_gateways_admit_only_it() -> None:
    values = {"nginx": {"enabled": True, "service": {"type": "LoadBalancer"}}}
    sources = _sources(render(profile_values("gpu-bf16", values)), "rel-vlm-serve-gateway", 8000)
    assert sources is not None
    components = [s.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
                  for s in sources]  # fmt: skip
    assert components[:2] == ["nginx", "test"]
    assert sources[2:] == [PROMETHEUS]  # and Prometheus: no ingress controller around Nginx


@pytest.mark.parametrize(("body", "timeout"), [(16 * 1024 * 1024, 600), (40 * 1024 * 1024, 900)])
def test_body_limit_and_timeouts_reach_every_front_door(body: int, timeout: int) -> None:
    gateway = {"maxBodyBytes": body, "totalTimeoutSeconds": timeout}
    values = {
        "gateway": gateway,
        "nginx": {"enabled": True, "service": {"type": "LoadBalancer"}},
        "ingress": {"enabled": True, "className": "nginx"},
        "httpRoute": ROUTE,
    }
    objects = render(profile_values("gpu-bf16", values))
    front = timeout + 10
    conf = one(objects, "ConfigMap", "rel-vlm-serve-nginx")["data"]["nginx.conf"]
    assert f"client_max_body_size {body};" in conf
    assert f"proxy_read_timeout {front}s;" in conf
    annotations = one(objects, "Ingress")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == str(body)
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == str(front)
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"  # SSE
    timeouts = one(objects, "HTTPRoute")["spec"]["rules"][0]["timeouts"]
    assert timeouts == {"request": f"{front}s", "backendRequest": f"{front}s"}
    service = one(objects, "Service", "rel-vlm-serve-nginx")["metadata"]["annotations"]
    assert service["service.beta.kubernetes.io/aws-load-balancer-connection-idle-timeout"] == (
        str(front)
    )
    minutes = int(service["service.beta.kubernetes.io/azure-load-balancer-tcp-idle-timeout"])
    assert minutes * 60 >= front
    # The ALB's idle timeout, and your own annotations win over the chart's.
    mine = {"nginx.ingress.kubernetes.io/proxy-body-size": "1m"}
    alb = {"ingress": {"enabled": True, "className": "alb", "annotations": mine}}
    annotations = one(render(profile_values("gpu-bf16", alb)), "Ingress")["metadata"]["annotations"]
    assert annotations["alb.ingress.kubernetes.io/load-balancer-attributes"] == (
        "idle_timeout.timeout_seconds=610"
    )
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "1m"


def test_a_changed_nginx_config_restarts_nginx() -> None:
    def checksum(gateway: dict[str, Any]) -> str:
        values = profile_values("gpu-bf16", {"nginx": {"enabled": True}, "gateway": gateway})
        deployment = one(render(values), "Deployment", "rel-vlm-serve-nginx")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    base = checksum({})
    assert checksum({"maxBodyBytes": 8 * 1024 * 1024}) != base
    assert checksum({"totalTimeoutSeconds": 300}) != base
    assert checksum({}) == base


def _served(rules: list[tuple[str, str]], path: str) -> bool:
    """Kubernetes' path matching: Prefix by whole segments, Exact exactly."""
    for prefix, kind in rules:
        if kind == "Exact" and path == prefix:
            return True
        if kind in ("Prefix", "PathPrefix") and (
            prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/")
        ):
            return True
    return False


def test_ingress_and_httproute_expose_the_api_but_not_metrics() -> None:
    values = {"ingress": {"enabled": True, "className": "nginx"}, "httpRoute": ROUTE}
    objects = render(profile_values("gpu-bf16", values))
    ingress = [
        (p["path"], p["pathType"])
        for p in one(objects, "Ingress")["spec"]["rules"][0]["http"]["paths"]
    ]
    route = [
        (m["path"]["value"], m["path"]["type"])
        for m in one(objects, "HTTPRoute")["spec"]["rules"][0]["matches"]
    ]
    for rules in (ingress, route):
        for path in ("/v1/chat/completions", "/v1/vqa", "/v1/models", "/readyz", "/healthz"):
            assert _served(rules, path), (rules, path)
        for path in ("/metrics", "/metrics/", "/docs", "/v1metrics"):
            assert not _served(rules, path), (rules, path)


async def test_nginx_keeps_metrics_off_the_front_door(fake_gateway: str, tmp_path: Path) -> None:
    """The project's nginx.conf.template (the chart's copy is the same file) with the real
    Nginx, in front of a real gateway."""
    # In a thread: its readiness wait goes through Nginx to this loop's gateway.
    nginx = await asyncio.to_thread(start_nginx, [fake_gateway.removeprefix("http://")], tmp_path)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for path in ("/metrics", "/metrics?name[]=x", "//metrics", "/%6detrics"):
                refused = await client.get(nginx.url + path)
                assert refused.status_code == 404, path
                assert refused.json()["error"]["code"] == "not_found"
                assert "gateway_" not in refused.text
            assert (await client.get(nginx.url + "/readyz")).status_code == 200
            # Prometheus scrapes the gateway itself.
            assert "gateway_requests_total" in (await client.get(fake_gateway + "/metrics")).text
    finally:
        nginx.stop()


def _trusted(values: dict[str, Any]) -> InteractionLogSettings:
    gateway = container(one(render(profile_values("gpu-bf16", values)), "Deployment",
                            "rel-vlm-serve-gateway"))  # fmt: skip
    return InteractionLogSettings(trusted_proxies=env_of(gateway)["GATEWAY_LOG_TRUSTED_PROXIES"])


def _logged(settings: InteractionLogSettings, peer: str) -> str | None:
    scope = {"client": (peer, 40000), "headers": [(b"x-real-ip", b"198.51.100.9")]}
    return client_ip(scope, settings.trusted_proxies)


def test_the_log_records_the_client_behind_a_proxy_in_another_pod() -> None:
    """The rendered GATEWAY_LOG_TRUSTED_PROXIES, parsed by the gateway's own settings and
    applied by its own client_ip(): a pod-network peer's X-Real-IP is the client."""
    settings = _trusted({"nginx": {"enabled": True}})
    for pod in ("10.244.3.17", "172.20.1.5", "192.168.7.9", "100.64.2.3", "fd00:10:244::5"):
        assert _logged(settings, pod) == "198.51.100.9", pod
    # A peer from the internet is not believed: its own address is logged.
    assert _logged(settings, "203.0.113.7") == "203.0.113.7"
    narrowed = _trusted({"gateway": {"trustedProxies": ["10.244.0.0/16"]}})
    assert _logged(narrowed, "10.244.3.17") == "198.51.100.9"
    assert _logged(narrowed, "10.8.0.1") == "10.8.0.1"
