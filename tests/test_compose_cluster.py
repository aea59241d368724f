"""The compose `cluster` profile, checked statically: PostgreSQL, replicas and nginx agree."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import yaml

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


def test_cluster_profile_leaves_the_default_path_alone() -> None:
    """Without the profile only the SQLite service starts, and no ports collide with it."""
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    default = [n for n, s in services.items() if not s.get("profiles")]
    assert default == ["lockstep"]
    taken = {p.split(":")[0] for p in services["lockstep"]["ports"]}
    assert not taken & {p.split(":")[0] for p in cluster()["lb"]["ports"]}
