"""Deployment files agree with the code: Dockerfile, compose.yaml and deploy/kubernetes/.

Docker and a cluster are not available to the tests, so this checks what can be checked
offline: the files parse, Kubernetes objects validate against the API schemas
(kubernetes-validate; KEDA objects structurally), every ``SBCT_*`` variable is a setting with a
valid value, commands exist in the CLI, and ports, probe paths, selectors and references
match each other and the code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sbct_pipeline import cli
from sbct_pipeline.broker import Names
from sbct_pipeline.health import create_health_app
from sbct_pipeline.ingress import create_app
from sbct_pipeline.settings import PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.30"  # the oldest Kubernetes the manifests target (PDB, HPA v2, Job TTL)
DEFAULTS = Settings()
SETTING_NAMES = {PREFIX + f.upper() for f in Settings.__dataclass_fields__}
IMAGE_SERVICES = ("migrate", "ingress", "worker", "callbacks", "clevertap-sim")


def _routes(app: Any) -> set[str]:
    return {r.canonical for r in app.router.resources()}


INGRESS_ROUTES = _routes(create_app(DEFAULTS))
HEALTH_ROUTES = _routes(create_health_app(pool=None, broker=None))  # type: ignore[arg-type]


def _parses_as_command(args: list[str]) -> None:
    """The CLI accepts ``args`` (argparse exits on an unknown command or flag)."""
    ns = cli._parser().parse_args(args)
    assert ns.command in cli.COMMANDS


def _settings_from(env: dict[str, str], what: str) -> Settings:
    unknown = sorted(k for k in env if k.startswith(PREFIX) and k not in SETTING_NAMES)
    assert not unknown, f"{what}: not settings: {unknown}"
    return Settings.from_env(env)


# ------------------------------------------------------------------ compose


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _interpolate(value: Any) -> str:
    # Compose's ${NAME:-default}: the tests see the default.
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    return {k: _interpolate(v) for k, v in (service.get("environment") or {}).items()}


def _grace_seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(s|m)", value)
    assert m, value
    return int(m[1]) * (60 if m[2] == "m" else 1)


def test_compose_has_every_service_with_dependency_order() -> None:
    """compose.yaml starts the stores, a one-shot migrate, then ingress, 2 workers, callbacks."""
    services = _compose()["services"]
    assert set(services) == {"rabbitmq", "postgres", *IMAGE_SERVICES}
    assert "management" in services["rabbitmq"]["image"]
    assert "15672:15672" in services["rabbitmq"]["ports"]
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("ingress", "worker", "callbacks"):
        deps = services[name]["depends_on"]
        assert deps["migrate"] == {"condition": "service_completed_successfully"}, name
        assert deps["rabbitmq"] == {"condition": "service_healthy"}, name
    for name, service in services.items():
        for dep, cond in (service.get("depends_on") or {}).items():
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep}'s health"


def test_compose_commands_settings_and_ports_match_the_code() -> None:
    """Each service runs a real CLI command, with valid SBCT_* settings and matching ports."""
    services = _compose()["services"]
    for name in IMAGE_SERVICES:
        service = services[name]
        assert service["image"] == "sbct-pipeline:dev" and service["build"] == ".", name
        _parses_as_command(service["command"])
        settings = _settings_from(_compose_env(service), f"compose service {name}")
        if name != "clevertap-sim":  # the simulator reads no SBCT_* setting
            assert urlhost(settings.amqp_url) == "rabbitmq", name
            assert urlhost(settings.database_url) == "postgres", name
        if name in ("ingress", "worker", "callbacks"):
            assert _grace_seconds(service["stop_grace_period"]) > settings.drain_timeout_s
            assert settings.http_host == "0.0.0.0", f"{name} must listen beyond localhost"
            port = settings.http_port if name == "ingress" else settings.metrics_port
            routes = INGRESS_ROUTES if name == "ingress" else HEALTH_ROUTES
            check = " ".join(service["healthcheck"]["test"])
            m = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", check)
            assert m and int(m[1]) == port and m[2] in routes, (name, check)
    assert f"{DEFAULTS.http_port}:{DEFAULTS.http_port}" in services["ingress"]["ports"]


def urlhost(url: str) -> str | None:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname


def test_make_dev_brings_up_compose() -> None:
    """`make dev` runs `docker compose up --build` on compose.yaml."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ndev:", 1)[1].split("\n\n", 1)[0]
    assert "docker compose up --build" in recipe


def test_dockerfile_is_multi_stage_non_root_and_runs_the_cli() -> None:
    """The image builds in one stage, runs as a numeric non-root user, exec-form entry point."""
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    assert len(froms) >= 2 and " AS build" in froms[0]
    assert any(ln.startswith("COPY --from=build") for ln in lines)
    (user,) = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) > 0
    assert 'ENTRYPOINT ["sbct-pipeline"]' in lines
    cmd = next(ln for ln in lines if ln.startswith("CMD "))
    _parses_as_command(yaml.safe_load(cmd[4:]))
    exposed = {int(p) for ln in lines if ln.startswith("EXPOSE ") for p in ln.split()[1:]}
    assert {DEFAULTS.http_port, DEFAULTS.metrics_port} <= exposed
    ignore = (ROOT / ".dockerignore").read_text()
    assert "!src/" in ignore and "!pyproject.toml" in ignore


# ------------------------------------------------------------------ kubernetes


def _k8s() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml")
                                    if p.name != "kustomization.yaml")
    docs = []
    for name in listed:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


DOCS = _k8s()
CONFIG = _by_kind(DOCS, "ConfigMap")["sbct-config"]["data"]
SECRET = _by_kind(DOCS, "Secret")["sbct-secrets"]["stringData"]


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("doc", [d for d in DOCS if d["apiVersion"].split("/")[0] != "keda.sh"],
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_kubernetes_object_matches_the_api_schema(doc: dict[str, Any]) -> None:
    """Each built-in object validates against the Kubernetes OpenAPI schema (strict)."""
    assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kubernetes_has_the_objects_operators_need() -> None:
    """Deployments, Service, ConfigMap, Secret, HPA, KEDA ScaledObject, PDBs and the migrate Job."""
    kinds = {(d["kind"], d["metadata"]["name"]) for d in DOCS}
    assert {("Deployment", "sbct-ingress"), ("Deployment", "sbct-worker"),
            ("Deployment", "sbct-callbacks"), ("Service", "sbct-ingress"),
            ("ConfigMap", "sbct-config"), ("Secret", "sbct-secrets"),
            ("HorizontalPodAutoscaler", "sbct-ingress"), ("ScaledObject", "sbct-worker"),
            ("TriggerAuthentication", "sbct-rabbitmq"), ("Job", "sbct-migrate")} <= kinds
    deployments = _by_kind(DOCS, "Deployment")
    pdbs = _by_kind(DOCS, "PodDisruptionBudget").values()
    for name, dep in deployments.items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in pdbs if p["spec"]["selector"]["matchLabels"].items()
                    <= labels.items()]
        assert len(covering) == 1, f"{name} needs exactly one PodDisruptionBudget"
        for other, odep in deployments.items():
            if other != name:
                olabels = odep["spec"]["template"]["metadata"]["labels"]
                assert not covering[0]["spec"]["selector"]["matchLabels"].items() <= \
                    olabels.items(), f"{name}'s PDB also selects {other}"


@pytest.mark.parametrize("kind_name", [("Deployment", "sbct-ingress"),
                                       ("Deployment", "sbct-worker"),
                                       ("Deployment", "sbct-callbacks"),
                                       ("Job", "sbct-migrate")])
def test_kubernetes_workload_agrees_with_the_code(kind_name: tuple[str, str]) -> None:
    """Commands, settings, probe ports and paths, selectors and grace period fit the code."""
    kind, name = kind_name
    doc = _by_kind(DOCS, kind)[name]
    if kind == "Deployment":
        assert doc["spec"]["selector"]["matchLabels"].items() <= \
            doc["spec"]["template"]["metadata"]["labels"].items()
    spec = _pod_spec(doc)
    assert spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    args = container["args"]
    _parses_as_command(args)
    env: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        if "configMapRef" in ref:
            assert ref["configMapRef"]["name"] == "sbct-config"
            env |= CONFIG
        else:
            assert ref["secretRef"]["name"] == "sbct-secrets"
            env |= SECRET
    env |= {e["name"]: e["value"] for e in container.get("env", [])}
    settings = _settings_from(env, f"{kind}/{name}")
    if kind == "Job":
        assert args == ["migrate"]
        return
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    serving = settings.http_port if args == ["ingress"] else settings.metrics_port
    assert list(ports.values()) == [serving]
    routes = INGRESS_ROUTES if args == ["ingress"] else HEALTH_ROUTES
    probes = {k: v for k, v in container.items() if k.endswith("Probe")}
    assert {"readinessProbe", "livenessProbe"} <= set(probes)
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in probes.values():
        assert ports[probe["httpGet"]["port"]] == serving
        assert probe["httpGet"]["path"] in routes
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
    sleep = float(pre_stop["command"][1]) if pre_stop else 0.0
    assert spec["terminationGracePeriodSeconds"] > settings.drain_timeout_s + sleep


def test_kubernetes_service_and_autoscalers_point_at_real_workloads() -> None:
    """The Service selects ingress pods; HPA and ScaledObject target existing Deployments."""
    deployments = _by_kind(DOCS, "Deployment")
    service = _by_kind(DOCS, "Service")["sbct-ingress"]
    ingress = deployments["sbct-ingress"]["spec"]["template"]
    assert service["spec"]["selector"].items() <= ingress["metadata"]["labels"].items()
    port_names = {p["name"] for p in ingress["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    hpa = _by_kind(DOCS, "HorizontalPodAutoscaler")["sbct-ingress"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "sbct-ingress"}


def test_keda_scales_workers_on_the_delivery_queues() -> None:
    """KEDA scales sbct-worker on the ready messages of the queues the worker consumes."""
    scaled = _by_kind(DOCS, "ScaledObject")["sbct-worker"]
    spec = scaled["spec"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert spec["scaleTargetRef"]["name"] in _by_kind(DOCS, "Deployment")
    assert spec["scaleTargetRef"]["name"] == "sbct-worker"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    names = Names(CONFIG.get("SBCT_AMQP_PREFIX", DEFAULTS.amqp_prefix))
    auths = _by_kind(DOCS, "TriggerAuthentication")
    queues = set()
    for trigger in spec["triggers"]:
        assert trigger["type"] == "rabbitmq"
        meta = trigger["metadata"]
        assert meta["mode"] == "QueueLength" and int(meta["value"]) > 0
        assert meta["protocol"] == "amqp"
        queues.add(meta["queueName"])
        auth = auths[trigger["authenticationRef"]["name"]]
        (ref,) = auth["spec"]["secretTargetRef"]
        assert ref["parameter"] == "host" and ref["name"] == "sbct-secrets"
        assert ref["key"] in SECRET
    assert queues == {names.queue(k) for k in ("single", "multi", "chunks")}
    assert queues == {"sbct.single", "sbct.multi", "sbct.chunks"}


def test_every_documented_setting_in_deploy_files_exists() -> None:
    """Any SBCT_* name anywhere in compose, Dockerfile or manifests is a real setting."""
    texts = [(ROOT / "compose.yaml").read_text(), (ROOT / "Dockerfile").read_text()]
    texts += [p.read_text() for p in K8S.glob("*.yaml")]
    used = {m for t in texts for m in re.findall(r"\bSBCT_[A-Z0-9_]+", t)}
    assert used and used <= SETTING_NAMES, sorted(used - SETTING_NAMES)


# ------------------------------------------------------------------ docs


def test_operations_doc_lists_every_setting_and_metric() -> None:
    """docs/operations.md has a row for every SBCT_* setting and every exported series."""
    from sbct_pipeline import metrics

    doc = (ROOT / "docs" / "operations.md").read_text()
    rows = {m for m in re.findall(r"^\| `(SBCT_[A-Z0-9_]+)`", doc, flags=re.M)}
    assert rows == SETTING_NAMES, (sorted(SETTING_NAMES - rows), sorted(rows - SETTING_NAMES))
    series = set(re.findall(r"^\| `(sbct_[a-z_]+)`", doc, flags=re.M))
    exported = set()
    for family in metrics.REGISTRY.collect():
        exported.add(family.name + ("_total" if family.type == "counter" else ""))
    assert series == exported, (sorted(exported - series), sorted(series - exported))
