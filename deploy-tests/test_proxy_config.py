"""proxy/nginx.conf.template: rendered both ways, checked by nginx itself, and exercised without the api."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from stack_files import DOCKERFILES, ROOT, compose_config, dockerfile_env, load_render_proxy

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
ENVSUBST = shutil.which("envsubst")
SYSTEM_DEPS = "run `make system-deps` (Debian packages nginx and gettext-base)"


@pytest.fixture(scope="module")
def renderer() -> ModuleType:
    return load_render_proxy()


@pytest.fixture(scope="module")
def template(renderer: ModuleType) -> str:
    return renderer.TEMPLATE.read_text(encoding="utf-8")


def nginx_version() -> tuple[int, ...]:
    assert NGINX, SYSTEM_DEPS
    out = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    assert match, out
    return tuple(int(x) for x in match.groups())


def nginx_test(conf: Path) -> subprocess.CompletedProcess[str]:
    assert NGINX, SYSTEM_DEPS
    cmd = [NGINX, "-t", "-p", str(conf.parent), "-c", str(conf), "-e", "stderr"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


RESOLVER_SCRIPT = ROOT / "proxy" / "15-pibloom-resolver.envsh"


def entrypoint_resolver(value: str | None, resolv_conf: str, tmp_path: Path) -> str:
    """PIBLOOM_PROXY_RESOLVER after the image's entrypoint has sourced the resolver script."""
    conf = tmp_path / "resolv.conf"
    conf.write_text(resolv_conf, encoding="utf-8")
    env = {"PATH": os.environ["PATH"], "RESOLV_CONF": str(conf)}
    if value is not None:
        env["PIBLOOM_PROXY_RESOLVER"] = value
    script = f'. "{RESOLVER_SCRIPT}" >/dev/null; printf %s "$PIBLOOM_PROXY_RESOLVER"'
    return subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, check=True).stdout


def test_resolver_auto_takes_the_containers_own_name_servers(tmp_path: Path) -> None:
    assert os.access(RESOLVER_SCRIPT, os.X_OK)  # the entrypoint only sources executable *.envsh files
    docker = "nameserver 127.0.0.11\noptions ndots:0\n"
    # podman: its network's aardvark-dns, then the host's resolvers, which know no service names.
    podman = "search dns.podman\n# generated\nnameserver 10.89.0.1\nnameserver 10.255.255.53\n"
    assert entrypoint_resolver("auto", docker, tmp_path) == "127.0.0.11"
    assert entrypoint_resolver("auto", podman, tmp_path) == "10.89.0.1"
    assert entrypoint_resolver("auto", "nameserver fe80::1%eth0\nnameserver fd00::1\n", tmp_path) == "[fe80::1]"
    assert entrypoint_resolver("auto", "", tmp_path) == "127.0.0.1"
    # An address that is set stays as it is; so does an unset one (the image's default then applies).
    assert entrypoint_resolver("10.0.0.10", podman, tmp_path) == "10.0.0.10"
    assert entrypoint_resolver(None, podman, tmp_path) == ""


def container_values(extra: dict[str, str], runtime_dir: Path) -> dict[str, str]:
    """What the image's envsubst step sees, adapted to this machine where only the host differs."""
    values = {k: v for k, v in dockerfile_env(DOCKERFILES["proxy"]).items() if k.startswith("PIBLOOM_PROXY_")}
    values.update(extra)
    if values["PIBLOOM_PROXY_RESOLVER"] == "auto":
        values["PIBLOOM_PROXY_RESOLVER"] = entrypoint_resolver("auto", "nameserver 127.0.0.11\n", runtime_dir)
    values["PIBLOOM_PROXY_RUNTIME_DIR"] = str(runtime_dir)
    # The compose service names do not resolve here; only the address changes, not the syntax.
    for key in ("PIBLOOM_PROXY_API_UPSTREAM", "PIBLOOM_PROXY_WEB_UPSTREAM"):
        values[key] = "127.0.0.1:" + values[key].rsplit(":", 1)[1]
    # `resolve` on an upstream server exists from nginx 1.27.3 (the image's 1.28); Debian's is older.
    if nginx_version() < (1, 27, 3):
        values["PIBLOOM_PROXY_UPSTREAM_RESOLVE"] = ""
    return values


def test_template_names_only_its_own_variables(renderer: ModuleType, template: str) -> None:
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", template))
    assert names == renderer.template_variables(template)
    assert all(name.startswith("PIBLOOM_PROXY_") for name in names)
    # Every variable has a default in the image.
    assert names <= set(dockerfile_env(DOCKERFILES["proxy"]))


def test_substitution_leaves_nginx_variables_alone(renderer: ModuleType, template: str, tmp_path: Path) -> None:
    values = renderer.local_values(tmp_path, {}, None, None, None)
    text = renderer.substitute(template, values)
    assert "${" not in text
    for nginx_var in ("$binary_remote_addr", "$upstream_http_content_type", "$proxy_add_x_forwarded_for"):
        assert nginx_var in text
    assert f"pid {tmp_path}/nginx.pid;" in text
    assert "server 127.0.0.1:8000 max_fails=3 fail_timeout=10s" in text


def test_a_missing_value_is_an_error(renderer: ModuleType, template: str) -> None:
    with pytest.raises(renderer.TemplateError, match="PIBLOOM_PROXY_LISTEN"):
        renderer.substitute(template, {"PIBLOOM_PROXY_RUNTIME_DIR": "/tmp"})


def test_renderer_matches_the_images_envsubst(renderer: ModuleType, template: str, tmp_path: Path) -> None:
    # The official image runs `envsubst "$defined_envs"` with the names that match NGINX_ENVSUBST_FILTER.
    assert ENVSUBST, SYSTEM_DEPS
    values = container_values({}, tmp_path)
    shell_format = " ".join(f"${{{name}}}" for name in values)
    env = {"PATH": os.environ["PATH"], **values}
    real = subprocess.run(
        [ENVSUBST, shell_format], input=template, env=env, capture_output=True, text=True, check=True
    ).stdout
    assert renderer.substitute(template, values) == real


def test_local_rendering_passes_nginx_t(tmp_path: Path) -> None:
    env = dict(os.environ, PIBLOOM_PROXY_PORT="18080", PIBLOOM_PORT="18000", PIBLOOM_WEB_PORT="13000")
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_proxy.py"), "--out", str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    conf = Path(out)
    text = conf.read_text(encoding="utf-8")
    assert "listen 127.0.0.1:18080;" in text
    assert "server 127.0.0.1:18000 " in text and "server 127.0.0.1:13000 " in text
    result = nginx_test(conf)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("variant", ["image defaults (kubernetes)", "docker compose"])
def test_container_rendering_passes_nginx_t(variant: str, renderer: ModuleType, template: str, tmp_path: Path) -> None:
    extra = compose_config()["services"]["proxy"]["environment"] if variant == "docker compose" else {}
    conf = tmp_path / "nginx.conf"
    conf.write_text(renderer.substitute(template, container_values(extra, tmp_path)), encoding="utf-8")
    result = nginx_test(conf)
    assert result.returncode == 0, result.stderr


# --- nginx running, in front of upstreams that are down ------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def lone_proxy(renderer: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The local rendering with a strict rate limit, its upstreams pointing at closed ports."""
    assert NGINX, SYSTEM_DEPS
    run_dir = tmp_path_factory.mktemp("nginx")
    port = _free_port()
    env = {
        "PIBLOOM_PROXY_RATE_LIMIT": "1r/m",
        "PIBLOOM_PROXY_RATE_BURST": "1",
        "PIBLOOM_PROXY_MAX_BODY": "1k",
        "PIBLOOM_PROXY_METRICS_ALLOW": "10.255.255.1",
    }
    values = renderer.local_values(
        run_dir, env, f"127.0.0.1:{port}", f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"
    )
    conf = renderer.render(run_dir, values)
    log = (run_dir / "nginx.log").open("wb")
    proc = subprocess.Popen(
        [NGINX, "-p", str(run_dir), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (run_dir / "nginx.log").read_text()
            try:
                httpx.get(f"{base}/nginx-health", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def test_own_health_endpoint_and_security_headers(lone_proxy: str) -> None:
    response = httpx.get(f"{lone_proxy}/nginx-health")
    assert response.status_code == 200 and response.text == "ok\n"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["server"] == "nginx"  # no version number


def test_unreachable_upstream_is_a_json_503_with_retry_after(lone_proxy: str) -> None:
    response = httpx.get(f"{lone_proxy}/health/ready")
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert response.headers.get_list("retry-after") == ["5"]
    page = httpx.get(f"{lone_proxy}/")
    assert page.status_code == 503 and page.headers["retry-after"] == "5"


def test_body_size_limit_is_a_json_413(lone_proxy: str) -> None:
    response = httpx.post(f"{lone_proxy}/chat/", content=b"x" * 4096, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_metrics_are_restricted(lone_proxy: str) -> None:
    response = httpx.get(f"{lone_proxy}/metrics")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_inference_routes_are_rate_limited_per_client(lone_proxy: str) -> None:
    url = f"{lone_proxy}/v1/completions"
    statuses = [httpx.post(url, json={"prompt": "hi"}).status_code for _ in range(4)]
    # 1 request per minute plus a burst of 1: the first two reach the (absent) api, the rest are refused.
    assert statuses == [503, 503, 429, 429]
    refused = httpx.post(url, json={"prompt": "hi"})
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.headers.get_list("retry-after") == ["1"]
    # Probes are never rate limited.
    assert httpx.get(f"{lone_proxy}/health/live").status_code == 503
