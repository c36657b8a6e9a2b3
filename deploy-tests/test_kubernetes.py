"""kubernetes/: schema validation offline, the kustomization, and agreement with docker-compose.yml."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate.utils import all_versions

from stack_files import (
    DOCKERFILES,
    KUBE_DIR,
    ROOT,
    compose_config,
    duration_seconds,
    find,
    kustomization,
    load_docs,
    manifest_files,
    memory_bytes,
    pod_containers,
    render_kustomization,
    render_kustomization_python,
)

# microk8s publishes a snap track per Kubernetes minor version and keeps the recent ones maintained;
# validate against every schema set from 1.30 up to the newest kubernetes-validate bundles, so a
# manifest that an older or newer track would reject cannot slip through.
VERSIONS = sorted({v for v in all_versions() if tuple(map(int, v.split(".")[:2])) >= (1, 30)})
SERVICES = ("api", "web", "proxy")
# Deliberate differences between the two deployments, each with its reason.
ENV_ONLY_IN_COMPOSE = {
    # The engine's DNS (read from resolv.conf) lets nginx pick up replicas added by `--scale`; in
    # Kubernetes the api Service's stable ClusterIP balances over replicas instead.
    "proxy": {"PIBLOOM_PROXY_RESOLVER", "PIBLOOM_PROXY_UPSTREAM_RESOLVE"},
}
ENV_ONLY_IN_KUBERNETES = {
    # Requests come through the ingress controller; its X-Forwarded-For is trusted so the rate limit
    # counts real clients. In compose nothing sits in front of the proxy.
    "proxy": {"PIBLOOM_PROXY_TRUSTED_PROXY"},
}

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def compose() -> Doc:
    return compose_config()


@pytest.fixture(scope="module")
def rendered() -> list[Doc]:
    return render_kustomization()[1]


def _validation_error(doc: Doc, version: str) -> str | None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{doc['kind']}/{doc['metadata']['name']} on {version}: {getattr(exc, 'message', exc)}"
    return None


def test_versions_cover_current_microk8s_tracks() -> None:
    assert "1.32.0" in VERSIONS and len(VERSIONS) >= 4, VERSIONS


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_validates_strictly(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path.name} is empty"
    errors = [e for doc in docs for v in VERSIONS if (e := _validation_error(doc, v))]
    assert not errors, "\n".join(errors)


def test_strict_validation_catches_a_misspelt_field() -> None:
    doc = copy.deepcopy(load_docs(KUBE_DIR / "api-deployment.yaml")[0])
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    assert _validation_error(doc, VERSIONS[-1]) is not None


def test_kustomization_lists_every_manifest() -> None:
    listed = kustomization()["resources"]
    assert len(listed) == len(set(listed))
    assert set(listed) == {p.name for p in manifest_files()}


def test_kustomization_renders_and_validates(rendered: list[Doc]) -> None:
    how, docs = render_kustomization()
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    if how == "kubectl":
        # The fallback used where kubectl is absent must agree with the real kustomize.
        assert sorted(render_kustomization_python(), key=key) == sorted(docs, key=key)
    assert {key(d) for d in docs} == {key(d) for p in manifest_files() for d in load_docs(p)}
    errors = [e for doc in docs for v in VERSIONS if (e := _validation_error(doc, v))]
    assert not errors, "\n".join(errors)
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "pibloom", key(doc)


def test_images_are_set_in_one_place(rendered: list[Doc], compose: Doc) -> None:
    images = {entry["name"]: entry for entry in kustomization()["images"]}
    pyproject = (ROOT / "api" / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^version = "([^"]+)"$', pyproject, flags=re.MULTILINE)
    assert match, "no version in api/pyproject.toml"
    version = match.group(1)
    for name in SERVICES:
        entry = images[f"pibloom/{name}"]
        assert entry["newTag"] == version
        expected = f"{entry['newName']}:{entry['newTag']}"
        # Same image as docker compose builds and runs by default.
        assert compose["services"][name]["image"] == expected
        for container in pod_containers(find(rendered, "Deployment", name)):
            assert container["image"] == expected, container["name"]


def test_labels_follow_the_recommended_convention(rendered: list[Doc]) -> None:
    for doc in rendered:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "pibloom"
        assert labels["app.kubernetes.io/part-of"] == "pibloom"
        assert labels["app.kubernetes.io/managed-by"] == "kustomize"
        namespace_wide = doc["kind"] == "NetworkPolicy" and doc["spec"]["podSelector"] == {}
        if doc["kind"] not in ("Namespace",) and not namespace_wide:
            # redis: the rate-limit store, from an upstream image (no Dockerfile, not in compose's builds).
            assert labels["app.kubernetes.io/component"] in (*SERVICES, "redis")
    for name in SERVICES:
        deployment = find(rendered, "Deployment", name)
        selector = deployment["spec"]["selector"]["matchLabels"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector == {"app.kubernetes.io/name": "pibloom", "app.kubernetes.io/component": name}
        assert selector.items() <= pod_labels.items()
        assert find(rendered, "Service", name)["spec"]["selector"] == selector


def test_containers_are_unprivileged_and_bounded(rendered: list[Doc]) -> None:
    for name in SERVICES:
        pod = find(rendered, "Deployment", name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        user = re.search(r"^USER (\d+):(\d+)$", DOCKERFILES[name].read_text(encoding="utf-8"), re.MULTILINE)
        assert user, f"{name}/Dockerfile needs a numeric USER"
        assert pod["securityContext"]["runAsUser"] == int(user.group(1))
        for container in pod_containers(find(rendered, "Deployment", name)):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= container["resources"][kind].keys(), container["name"]


def test_memory_fits_a_4gb_raspberry_pi(rendered: list[Doc]) -> None:
    def limit(name: str) -> int:
        container = find(rendered, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        return memory_bytes(container["resources"]["limits"]["memory"])

    # microk8s itself takes ~0.7 GiB of a 4 GiB board.
    assert sum(limit(name) for name in SERVICES) <= 2.6 * 2**30


def test_api_probes_drain_and_storage(rendered: list[Doc], compose: Doc) -> None:
    deployment = find(rendered, "Deployment", "api")
    pod = deployment["spec"]["template"]["spec"]
    api = pod["containers"][0]
    startup = api["startupProbe"]
    assert startup["httpGet"]["path"] == "/health/ready"
    # Long enough for a Raspberry Pi to load the model: compose's start_period, in probe terms.
    start_period = duration_seconds(compose["services"]["api"]["healthcheck"]["start_period"])
    assert startup["periodSeconds"] * startup["failureThreshold"] == start_period >= 300
    graceful = int(next(e["value"] for e in api["env"] if e["name"] == "PIBLOOM_GRACEFUL_TIMEOUT"))
    pre_stop = int(api["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > graceful + pre_stop
    assert "replicas" not in deployment["spec"]  # owned by the autoscaler
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    volumes = {v["name"]: v for v in pod["volumes"]}
    # Per pod, on every node: seeded from the image, sized as compose's label says.
    labels = compose["services"]["api"]["labels"]
    assert volumes["models"]["emptyDir"]["sizeLimit"] == labels["kompose.volume.size"]
    seed = pod["initContainers"][0]
    assert {m["mountPath"] for m in seed["volumeMounts"]} == {"/cache"}
    assert "cp -R" in seed["command"][-1] and "/cache" in seed["command"][-1]


def test_no_replicated_workload_shares_a_read_write_once_claim(rendered: list[Doc]) -> None:
    """A ReadWriteOnce claim mounts on one node only: a Deployment whose replicas (or autoscaler) can
    exceed one would leave every replica on another node unable to start."""
    claims = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "PersistentVolumeClaim"}
    scaled = {
        d["spec"]["scaleTargetRef"]["name"]: d["spec"]["maxReplicas"]
        for d in rendered
        if d["kind"] == "HorizontalPodAutoscaler"
    }
    workloads = [d for d in rendered if d["kind"] in ("Deployment", "ReplicaSet", "StatefulSet")]
    assert workloads
    for workload in workloads:
        name = workload["metadata"]["name"]
        replicas = max(workload["spec"].get("replicas", 1), scaled.get(name, 1))
        for volume in workload["spec"]["template"]["spec"].get("volumes", []):
            claim_name = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim_name is None or replicas <= 1:
                continue
            modes = claims[claim_name]["spec"]["accessModes"]
            assert modes != ["ReadWriteOnce"] and "ReadWriteOncePod" not in modes, (
                f"{workload['kind']} {name} ({replicas} replicas) shares the ReadWriteOnce claim {claim_name}"
            )


def test_autoscaler_targets_the_api(rendered: list[Doc]) -> None:
    hpa = find(rendered, "HorizontalPodAutoscaler", "api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    api = find(rendered, "Deployment", "api")["spec"]["template"]["spec"]["containers"][0]
    assert "cpu" in api["resources"]["requests"]  # utilisation is measured against the request


def test_ingress_matches_compose_labels(rendered: list[Doc], compose: Doc) -> None:
    labels = compose["services"]["proxy"]["labels"]
    ingress = find(rendered, "Ingress", "proxy")
    assert ingress["spec"]["ingressClassName"] == labels["kompose.service.expose.ingress-class-name"] == "public"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == labels["kompose.service.expose"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "proxy", "port": {"number": 8080}}
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    read_timeout = compose["services"]["proxy"]["environment"]["PIBLOOM_PROXY_READ_TIMEOUT"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == str(duration_seconds(read_timeout))
    assert (
        annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
        == (compose["services"]["proxy"]["environment"]["PIBLOOM_PROXY_MAX_BODY"])
    )


# --- agreement with docker-compose.yml, service by service ------------------------------------


def _compose_ports(service: Doc) -> set[int]:
    return {int(p) for p in service.get("expose", [])} | {int(p["target"]) for p in service.get("ports", [])}


@pytest.mark.parametrize("name", SERVICES)
def test_ports_agree(name: str, rendered: list[Doc], compose: Doc) -> None:
    container = find(rendered, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(container_ports.values()) == _compose_ports(compose["services"][name])
    service = find(rendered, "Service", name)
    assert service["spec"]["type"] == "ClusterIP"
    assert compose["services"][name]["labels"]["kompose.service.type"] == "clusterip"
    for port in service["spec"]["ports"]:
        assert container_ports[port["targetPort"]] == port["port"]


@pytest.mark.parametrize("name", SERVICES)
def test_environment_agrees(name: str, rendered: list[Doc], compose: Doc) -> None:
    container = find(rendered, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
    in_compose = dict(compose["services"][name]["environment"])
    in_kube = {e["name"]: e for e in container["env"]}
    assert set(in_compose) - set(in_kube) == ENV_ONLY_IN_COMPOSE.get(name, set())
    assert set(in_kube) - set(in_compose) == ENV_ONLY_IN_KUBERNETES.get(name, set())
    for key in set(in_compose) & set(in_kube):
        entry = in_kube[key]
        if "valueFrom" in entry:
            # Secrets stay out of manifests: an optional Secret whose absence equals compose's default.
            assert entry["valueFrom"]["secretKeyRef"]["optional"] is True
            assert in_compose[key] == "", key
        else:
            assert entry["value"] == in_compose[key], key


@pytest.mark.parametrize("name", SERVICES)
def test_probes_agree(name: str, rendered: list[Doc], compose: Doc) -> None:
    service = compose["services"][name]
    labels = service["labels"]
    container = find(rendered, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
    port_numbers = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("readiness", "liveness"):
        spec = container[f"{probe}Probe"]["httpGet"]
        assert spec["path"] == labels[f"kompose.service.healthcheck.{probe}.http_get_path"]
        assert port_numbers[spec["port"]] == int(labels[f"kompose.service.healthcheck.{probe}.http_get_port"])
    # compose's healthcheck is the readiness check, and kompose turns its timings into the liveness probe.
    healthcheck = service["healthcheck"]
    assert container["readinessProbe"]["httpGet"]["path"] in " ".join(healthcheck["test"])
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] == duration_seconds(healthcheck["interval"])
    assert liveness["timeoutSeconds"] == duration_seconds(healthcheck["timeout"])
    assert liveness["failureThreshold"] == healthcheck["retries"]
    readiness = container["readinessProbe"]
    timing = {
        "interval": "periodSeconds",
        "timeout": "timeoutSeconds",
    }
    for label, field in timing.items():
        value = labels.get(f"kompose.service.healthcheck.readiness.{label}")
        if value is not None:
            assert readiness[field] == duration_seconds(value)
    retries = labels.get("kompose.service.healthcheck.readiness.retries")
    if retries is not None:
        assert readiness["failureThreshold"] == int(retries)


@pytest.mark.parametrize("name", SERVICES)
def test_runtime_settings_agree(name: str, rendered: list[Doc], compose: Doc) -> None:
    service = compose["services"][name]
    pod = find(rendered, "Deployment", name)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["terminationGracePeriodSeconds"] == duration_seconds(service["stop_grace_period"])
    assert container["imagePullPolicy"] == service["labels"]["kompose.image-pull-policy"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is service["read_only"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in service["tmpfs"]:
        assert "emptyDir" in volumes[mounts[path]]
    # compose's named volumes are per pod here (see test_no_replicated_workload_shares_a_read_write_once_claim).
    for volume in service.get("volumes", []):
        assert "emptyDir" in volumes[mounts[volume["target"]]]
    resources = service["deploy"]["resources"]
    assert memory_bytes(container["resources"]["limits"]["memory"]) == memory_bytes(resources["limits"]["memory"])
    assert memory_bytes(container["resources"]["requests"]["memory"]) == memory_bytes(
        resources["reservations"]["memory"]
    )
    if "cpus" in resources["limits"]:
        cpu = container["resources"]["limits"]["cpu"]
        millis = int(cpu[:-1]) if cpu.endswith("m") else int(float(cpu) * 1000)
        assert millis == int(float(resources["limits"]["cpus"]) * 1000)
