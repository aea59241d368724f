"""The compose `cluster` profile, checked statically: PostgreSQL, replicas and nginx agree."""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

import yaml

from app.limits import parser_limits
from app.settings import Settings
from tests.support import ROOT

COMPOSE = ROOT / "docker-compose.yml"
NGINX = ROOT / "config" / "nginx.conf"


def cluster() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text())["services"]
    return {n: s for n, s in services.items() if "cluster" in s.get("profiles", [])}


def test_cluster_profile_has_postgres_replicas_and_balancer() -> None:
    """The profile holds PostgreSQL, an app with two or more replicas, and an nginx balancer."""
    services = cluster()
    assert set(services) == {"postgres", "app", "lb"}
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["app"]["deploy"]["replicas"] >= 2
    assert services["lb"]["image"].startswith("nginx:")


def test_app_url_names_the_postgres_service_and_its_credentials() -> None:
    """The replicas' LOCKSTEP_DATABASE_URL points at the postgres service with its own user."""
    services = cluster()
    env = services["app"]["environment"]
    url = urlsplit(env["LOCKSTEP_DATABASE_URL"])
    pg = services["postgres"]["environment"]
    assert url.scheme == "postgresql"
    assert (url.hostname, url.port) == ("postgres", 5432)
    assert (url.username, url.password) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"])
    assert url.path == "/" + pg["POSTGRES_DB"]
    settings = Settings(
        **{
            k.removeprefix("LOCKSTEP_").lower(): v
            for k, v in env.items()
            if k.startswith("LOCKSTEP_")
        }
    )
    assert settings.uses_postgres


def test_replicas_believe_x_forwarded_for_from_the_balancer_only() -> None:
    """The replicas publish no port, so only the compose network (nginx) reaches them; the
    trusted proxies cover Docker's default address pools, so the access log names the client
    nginx forwards, not nginx."""
    services = cluster()
    assert "ports" not in services["app"]
    trusted = Settings(trusted_proxies=services["app"]["environment"]["LOCKSTEP_TRUSTED_PROXIES"])
    docker_pools = ["172.17.0.0/16", "172.31.0.0/16", "192.168.0.0/20", "10.89.0.0/24"]
    for pool in docker_pools:
        assert any(
            ipaddress.ip_network(pool).subnet_of(net)  # type: ignore[arg-type]
            for net in trusted.trusted_proxies
        ), pool
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in NGINX.read_text()


def test_startup_order_waits_for_health() -> None:
    """Replicas wait for a healthy PostgreSQL, the balancer for healthy replicas."""
    services = cluster()
    assert services["app"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["lb"]["depends_on"]["app"]["condition"] == "service_healthy"
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert "/readyz" in " ".join(services["app"]["healthcheck"]["test"])


def test_nginx_balances_the_app_service_without_replaying_requests() -> None:
    """nginx's upstream is the app service's port, its config is mounted, and it never retries."""
    services = cluster()
    conf = NGINX.read_text()
    mounts = services["lb"]["volumes"]
    assert "./config/nginx.conf:/etc/nginx/conf.d/default.conf:ro" in mounts
    upstream = re.search(r"upstream\s+(\w+)\s*\{[^}]*server\s+([\w.-]+):(\d+)", conf)
    assert upstream is not None
    name, host, port = upstream.groups()
    assert (host, port) == ("app", "8080")  # the image's LOCKSTEP_BIND port
    assert re.search(rf"proxy_pass\s+http://{name};", conf)
    assert re.search(r"proxy_next_upstream\s+off;", conf)
    listen = re.search(r"listen\s+(\d+);", conf)
    assert listen is not None
    assert any(p.endswith(f":{listen.group(1)}") for p in services["lb"]["ports"])
    assert conf.count("{") == conf.count("}")


def _size(value: str) -> int:
    """An nginx size (``512``, ``32k``, ``2m``) in bytes."""
    units = {"k": 1024, "m": 1024 * 1024}
    return int(value[:-1]) * units[value[-1]] if value[-1] in units else int(value)


def test_nginx_lets_through_what_the_app_refuses_itself() -> None:
    """nginx's body cap is above the app's default and a header line may be as long as the
    app's parser takes, so the app's problem bodies answer (413, 431), not nginx's HTML."""
    conf = NGINX.read_text()
    body = re.search(r"client_max_body_size\s+(\w+);", conf)
    buffers = re.search(r"large_client_header_buffers\s+(\d+)\s+(\w+);", conf)
    assert body is not None and buffers is not None
    defaults = Settings.model_fields
    max_body, max_headers = defaults["max_body_bytes"].default, defaults["max_header_bytes"].default
    assert _size(body.group(1)) > max_body
    count, line = int(buffers.group(1)), _size(buffers.group(2))
    assert line >= parser_limits(max_headers)["max_field_size"]
    assert count * line > max_headers


def test_nginx_looks_the_replicas_up_again_on_dockers_dns() -> None:
    """`app` is re-resolved through Docker's embedded DNS: a resolver, a zone, `resolve` on the
    server, and an nginx image new enough for it (1.27.3)."""
    conf = NGINX.read_text()
    assert re.search(r"^resolver\s+127\.0\.0\.11\b", conf, re.M)
    assert re.search(
        r"upstream\s+\w+\s*\{[^}]*\bzone\s+\w+\s+\w+;[^}]*\bserver\s+app:8080\s+resolve\b", conf
    )
    tag = re.match(r"nginx:(\d+)\.(\d+)(?:\.(\d+))?", cluster()["lb"]["image"])
    assert tag is not None
    assert tuple(int(part or 0) for part in tag.groups()) >= (1, 27, 3)


def test_cluster_profile_leaves_the_default_path_alone() -> None:
    """Without the profile only the SQLite service starts, and no ports collide with it."""
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    default = [n for n, s in services.items() if not s.get("profiles")]
    assert default == ["lockstep"]
    taken = {p.split(":")[0] for p in services["lockstep"]["ports"]}
    assert not taken & {p.split(":")[0] for p in cluster()["lb"]["ports"]}
