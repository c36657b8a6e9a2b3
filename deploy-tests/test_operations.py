"""Operating the stack: the monitoring profile, scrape configuration, disruption budgets, network
policies, and the observability overlay (ServiceMonitor, KEDA ScaledObject) of kubernetes/."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from stack_files import KUBE_DIR, ROOT, compose_config, find, load_docs, render_kustomization, run_compose

MONITORING = ROOT / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus" / "prometheus.yml"
OVERLAY = KUBE_DIR / "observability"
SCHEMAS = Path(__file__).parent / "schemas"
METRICS_SOURCE = ROOT / "api" / "pibloom" / "metrics.py"

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def rendered() -> list[Doc]:
    return render_kustomization()[1]


@pytest.fixture(scope="module")
def monitoring() -> Doc:
    result = run_compose(
        "-f", str(ROOT / "docker-compose.yml"), "--profile", "monitoring", "config", "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool missing: run `make system-deps` (Debian package prometheus)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)


# --- compose's monitoring profile ----------------------------------------------------------------


def test_promtool_accepts_the_scrape_configuration() -> None:
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_one(tmp_path: Path) -> None:
    broken = tmp_path / "prometheus.yml"
    broken.write_text(PROMETHEUS_CONFIG.read_text(encoding="utf-8").replace("scrape_interval", "scrape_intervall"))
    assert promtool("check", "config", str(broken)).returncode != 0


def test_the_profile_is_optional_and_scrapes_api_and_nginx(monitoring: Doc) -> None:
    plain = compose_config()["services"]
    extra = {"prometheus", "grafana", "nginx-exporter"}
    assert not extra & set(plain)
    services = monitoring["services"]
    for name in extra:
        assert services[name]["profiles"] == ["monitoring"]
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # Every api replica, on the port the api serves /metrics on.
    (api_sd,) = jobs["pibloom-api"]["dns_sd_configs"]
    metrics_port = services["api"]["environment"]["PIBLOOM_METRICS_PORT"]
    assert api_sd["names"] == ["api"] and str(api_sd["port"]) == metrics_port
    assert metrics_port in services["api"]["expose"]
    # nginx through the exporter, which lives in the proxy's network namespace and reads stub_status.
    assert jobs["pibloom-proxy"]["static_configs"][0]["targets"] == ["proxy:9113"]
    exporter = services["nginx-exporter"]
    assert exporter["network_mode"] == "service:proxy"
    scrape_uri = next(a for a in exporter["command"] if a.startswith("--nginx.scrape-uri="))
    path = scrape_uri.rsplit(":8080", 1)[1]
    template = (ROOT / "proxy" / "nginx.conf.template").read_text(encoding="utf-8")
    assert re.search(rf"location = {re.escape(path)} \{{(?:(?!location).)*?stub_status;", template, re.DOTALL)


def test_grafana_is_provisioned_with_the_dashboard(monitoring: Doc) -> None:
    grafana = monitoring["services"]["grafana"]
    mounts = {m["target"]: Path(m["source"]) for m in grafana["volumes"] if m["type"] == "bind"}
    provisioning = mounts["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "pibloom.yml").read_text())["providers"]
    dashboards = mounts[provider["options"]["path"]]
    dashboard = json.loads((dashboards / "pibloom.json").read_text(encoding="utf-8"))
    assert dashboard["uid"] == "pibloom" and len(dashboard["panels"]) >= 8
    # Panels take their data source from the dashboard's variable, so the JSON works in any Grafana.
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


# --- disruption budgets and network policies --------------------------------------------------------


def test_every_deployment_has_a_disruption_budget(rendered: list[Doc]) -> None:
    deployments = [d for d in rendered if d["kind"] == "Deployment"]
    budgets = [d for d in rendered if d["kind"] == "PodDisruptionBudget"]
    assert len(budgets) == len(deployments)
    for deployment in deployments:
        selector = deployment["spec"]["selector"]["matchLabels"]
        (budget,) = [b for b in budgets if b["spec"]["selector"]["matchLabels"] == selector]
        # One pod at a time, and a drain of a one-replica Deployment is never blocked.
        assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"]


def _matches(selector: Doc, labels: dict[str, str]) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items()


def _pod_labels(rendered: list[Doc], component: str) -> dict[str, str]:
    return find(rendered, "Deployment", component)["spec"]["template"]["metadata"]["labels"]


def _port_number(rendered: list[Doc], component: str, port: str | int) -> int:
    container = find(rendered, "Deployment", component)["spec"]["template"]["spec"]["containers"][0]
    return next(p["containerPort"] for p in container["ports"] if port in (p["name"], p["containerPort"]))


def reachable(rendered: list[Doc], source: tuple[str, dict[str, str]], component: str, port: str) -> bool:
    """Whether a pod with `source` = (namespace, labels) may open `port` of `component`'s pods."""
    namespace, labels = source
    target = _pod_labels(rendered, component)
    number = _port_number(rendered, component, port)
    policies = [p for p in rendered if p["kind"] == "NetworkPolicy" and _matches(p["spec"]["podSelector"], target)]
    assert any(p["spec"]["podSelector"] == {} for p in policies), "no default deny"
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            if not any(_port_number(rendered, component, p["port"]) == number for p in rule["ports"]):
                continue
            for peer in rule["from"]:
                ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
                same_namespace = ns_sel is None and namespace == "pibloom"
                ns_ok = same_namespace or (
                    ns_sel is not None and _matches(ns_sel, {"kubernetes.io/metadata.name": namespace})
                )
                if ns_ok and (pod_sel is None or _matches(pod_sel, labels)):
                    return True
    return False


def test_network_policies_isolate_the_services(rendered: list[Doc]) -> None:
    def pod(component: str) -> tuple[str, dict[str, str]]:
        return "pibloom", _pod_labels(rendered, component)

    ingress = ("ingress", {"name": "nginx-ingress-microk8s"})
    prometheus = ("observability", {"app.kubernetes.io/name": "prometheus"})
    stranger = ("default", {"app": "anything"})
    allowed = [
        (ingress, "proxy", "http"),
        (pod("proxy"), "web", "http"),
        (pod("proxy"), "api", "http"),
        (pod("web"), "api", "http"),
        (prometheus, "api", "metrics"),
        (pod("api"), "redis", "redis"),
    ]
    sources = [ingress, prometheus, stranger, *(pod(c) for c in ("proxy", "web", "api", "redis"))]
    targets = [("proxy", "http"), ("web", "http"), ("api", "http"), ("api", "metrics"), ("redis", "redis")]
    for source in sources:
        for component, port in targets:
            expected = any(source == s and (component, port) == (c, p) for s, c, p in allowed)
            assert reachable(rendered, source, component, port) is expected, (source, component, port)


def test_metrics_have_a_port_of_their_own(rendered: list[Doc]) -> None:
    """A NetworkPolicy works on ports: /metrics must not also be on the port the proxy and web reach."""
    api = find(rendered, "Deployment", "api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    metrics = _port_number(rendered, "api", "metrics")
    assert env["PIBLOOM_METRICS_PORT"] == str(metrics) != str(_port_number(rendered, "api", "http"))
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(metrics)
    assert annotations["prometheus.io/path"] == "/metrics"
    service_ports = {p["name"]: p for p in find(rendered, "Service", "api")["spec"]["ports"]}
    assert service_ports["metrics"]["targetPort"] == "metrics"


# --- kubernetes/observability: ServiceMonitor and KEDA --------------------------------------------


def overlay_docs() -> dict[str, Doc]:
    spec = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text(encoding="utf-8"))
    assert spec["resources"][0] == "../"
    docs = [d for name in spec["resources"][1:] for d in load_docs(OVERLAY / name)]
    assert {p.name for p in OVERLAY.glob("*.yaml")} == {*spec["resources"][1:], "kustomization.yaml"} | {
        p["path"] for p in spec["patches"]
    }
    return {d["kind"]: d for d in docs}


def schema_errors(doc: Doc) -> list[str]:
    name = {"ScaledObject": "scaledobject", "ServiceMonitor": "servicemonitor"}[doc["kind"]]
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("kind", ["ScaledObject", "ServiceMonitor"])
def test_custom_resources_match_their_schema(kind: str) -> None:
    doc = overlay_docs()[kind]
    assert not schema_errors(doc)
    misspelt = copy.deepcopy(doc)
    misspelt["spec"]["endpoint" if kind == "ServiceMonitor" else "minReplicas"] = 1
    assert schema_errors(misspelt)


def test_service_monitor_scrapes_the_metrics_port(rendered: list[Doc]) -> None:
    monitor = overlay_docs()["ServiceMonitor"]
    service = find(rendered, "Service", "api")
    assert _matches(monitor["spec"]["selector"], service["metadata"]["labels"])
    # Only the api Service matches, not web's or proxy's.
    assert [
        s["metadata"]["name"]
        for s in rendered
        if s["kind"] == "Service" and _matches(monitor["spec"]["selector"], s["metadata"]["labels"])
    ] == ["api"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["port"] == "metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prom-stack"


def test_keda_scales_on_waiting_requests_with_cpu_as_fallback(rendered: list[Doc]) -> None:
    scaled = overlay_docs()["ScaledObject"]["spec"]
    hpa = find(rendered, "HorizontalPodAutoscaler", "api")["spec"]
    assert scaled["scaleTargetRef"] == hpa["scaleTargetRef"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (hpa["minReplicas"], hpa["maxReplicas"])
    assert scaled["minReplicaCount"] >= 1  # never to zero: a model takes minutes to load
    assert scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["behavior"]
    triggers = {t["type"]: t for t in scaled["triggers"]}
    assert set(triggers) == {"prometheus", "cpu"}
    queue = triggers["prometheus"]
    assert queue["metricType"] == "AverageValue" and float(queue["metadata"]["threshold"]) > 0
    (metric,) = re.findall(r"\b(pibloom_[a-z_]+)\b", queue["metadata"]["query"])
    assert metric == "pibloom_num_requests_waiting"
    assert f'"{metric}"' in METRICS_SOURCE.read_text(encoding="utf-8")
    # Series from the ServiceMonitor carry job=<Service name>.
    assert 'job="api"' in queue["metadata"]["query"] and 'namespace="pibloom"' in queue["metadata"]["query"]
    cpu = hpa["metrics"][0]["resource"]["target"]["averageUtilization"]
    assert triggers["cpu"]["metricType"] == "Utilization" and triggers["cpu"]["metadata"]["value"] == str(cpu)


def test_the_overlay_removes_the_cpu_only_autoscaler() -> None:
    spec = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text(encoding="utf-8"))
    (patch,) = [load_docs(OVERLAY / p["path"])[0] for p in spec["patches"]]
    assert patch["$patch"] == "delete"
    assert (patch["kind"], patch["metadata"]["name"]) == ("HorizontalPodAutoscaler", "api")
