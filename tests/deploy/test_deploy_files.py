"""The deploy files (ops/deploy/) checked against the code they deploy: the settings they
set exist, Kubernetes gives gateways time to drain, the YAML parses, every metric the
Grafana dashboard queries is one livefeed exports, and compose validates its file."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import metrics as prom_metrics
from prometheus_client.parser import text_string_to_metric_families

from livefeed.core import metrics as lf_metrics
from livefeed.core import settings as settings_mod
from livefeed.core.settings import Settings
from tests.gateway.livehelp import app_client

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "ops" / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
DOCS = ROOT / "docs" / "deploy.md"
YAML_FILES = sorted([COMPOSE, *K8S.glob("*.yaml")])
SETTING_NAME = re.compile(r"\bLIVEFEED_[A-Z0-9_]+\b")


def k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for doc in k8s_docs():
        if doc["kind"] in ("Deployment", "Job"):
            out.append((doc["metadata"]["name"], doc["spec"]["template"]["spec"]))
    return out


def test_the_deploy_yaml_files_parse() -> None:
    assert len(YAML_FILES) >= 6
    for path in YAML_FILES:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert docs, path
        if path.parent == K8S:
            for d in docs:
                assert {"apiVersion", "kind", "metadata"} <= set(d), (path, d)
    json.loads(DASHBOARD.read_text())


def test_every_livefeed_name_in_the_deploy_files_and_docs_is_a_real_setting() -> None:
    real = {settings_mod.env_name(f) for f in settings_mod.field_names()}
    files = [p for p in DEPLOY.rglob("*") if p.is_file()] + [DOCS]
    used: dict[str, set[str]] = {}
    for path in files:
        for name in SETTING_NAME.findall(path.read_text()):
            used.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    unknown = {name: sorted(where) for name, where in used.items() if name not in real}
    assert not unknown, f"not settings (core/settings.py): {unknown}"
    # And the files do set the essentials.
    assert {"LIVEFEED_REDIS_URL", "LIVEFEED_SECRET", "LIVEFEED_DRAIN_TIMEOUT"} <= set(used)


def test_every_k8s_env_var_and_config_key_is_a_real_setting_or_a_known_extra() -> None:
    real = {settings_mod.env_name(f) for f in settings_mod.field_names()}
    extra = {"POD_NAME", "FORWARDED_ALLOW_IPS"}  # a pod field; uvicorn's proxy trust
    names: set[str] = set()
    for doc in k8s_docs():
        if doc["kind"] == "ConfigMap":
            names |= set(doc["data"])
    for _, spec in pod_specs():
        for c in spec["containers"]:
            names |= {e["name"] for e in c.get("env", [])}
    assert names - real - extra == set()


def drain_timeout(env: list[dict[str, Any]]) -> float:
    for e in env:
        if e["name"] == settings_mod.env_name("drain_timeout_s"):
            return float(e["value"])
    return Settings().drain_timeout_s


def test_k8s_gives_every_role_more_time_than_its_drain() -> None:
    specs = dict(pod_specs())
    roles = {doc["metadata"]["name"] for doc in k8s_docs() if doc["kind"] == "Deployment"}
    assert roles == {"livefeed-gateway", "livefeed-persist", "livefeed-fanout"}
    for name in roles:
        spec = specs[name]
        (container,) = spec["containers"]
        drain = drain_timeout(container.get("env", []))
        pre_stop = container.get("lifecycle", {}).get("preStop", {})
        # The grace period counts from the start of preStop.
        sleep = float(pre_stop["exec"]["command"][-1]) if pre_stop else 0.0
        grace = spec["terminationGracePeriodSeconds"]
        assert grace > sleep + drain, (name, grace, sleep, drain)


def test_k8s_gateways_are_ready_on_readyz_alive_on_healthz_and_behind_a_service() -> None:
    (gateway,) = pod_specs()[[n for n, _ in pod_specs()].index("livefeed-gateway")][1][
        "containers"]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["args"][0] == "gateway" and "0.0.0.0" in gateway["args"]
    services = [d for d in k8s_docs() if d["kind"] == "Service"]
    assert any(s["spec"]["selector"]["app.kubernetes.io/component"] == "gateway"
               for s in services)
    jobs = [d for d in k8s_docs() if d["kind"] == "Job"]
    assert [j["spec"]["template"]["spec"]["containers"][0]["args"] for j in jobs] == [
        ["migrate"]]


def test_compose_runs_every_role_and_drains_gateways() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    commands = {name: s.get("command", [None])[0] for name, s in services.items()}
    assert sorted(n for n, c in commands.items() if c == "gateway") == ["gateway-1", "gateway-2"]
    assert {"migrate", "consumer"} <= set(commands.values())
    assert {"redis", "postgres", "nginx"} <= set(services)
    for name, service in services.items():
        env = service.get("environment", {})
        if commands[name] == "gateway":
            drain = float(env.get(settings_mod.env_name("drain_timeout_s"),
                                  Settings().drain_timeout_s))
            grace = service["stop_grace_period"]
            assert grace.endswith("s") and float(grace[:-1]) > drain, (name, grace)
        if commands[name] in ("gateway", "consumer"):
            assert services[name]["depends_on"]["migrate"]["condition"] == (
                "service_completed_successfully")


def compose_client() -> list[str] | None:
    """`docker compose` (the plugin), else the standalone `docker-compose`."""
    if shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_accepts_the_compose_file() -> None:
    client = compose_client()
    if client is None:
        pytest.skip("no docker compose client here (neither the plugin nor docker-compose)")
    env = {**os.environ, "LIVEFEED_SECRET": "s" * 32, "LIVEFEED_WEBHOOK_SECRET": "w" * 32}
    done = subprocess.run([*client, "-f", str(COMPOSE), "config", "-q"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # Without the secrets the file refuses to render, rather than run with none.
    env.pop("LIVEFEED_SECRET")
    refused = subprocess.run([*client, "-f", str(COMPOSE), "config", "-q"], env=env,
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "LIVEFEED_SECRET" in refused.stderr + refused.stdout


# The Grafana dashboard against what the processes export.

SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
            "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("", "_count", "_sum", "_created"), "info": ("_info",)}
PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "by", "without", "on", "ignoring",
                "group_left", "group_right", "and", "or", "unless", "rate", "irate",
                "increase", "histogram_quantile", "bool", "offset"}
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def sample_names(family_name: str, kind: str) -> set[str]:
    base = family_name.removesuffix("_total") if kind == "counter" else family_name
    return {base + s for s in SUFFIXES.get(kind, ("",))}


def core_metric_labels() -> dict[str, set[str]]:
    """Sample name -> label names, for every metric object of livefeed.core.metrics: the
    consumers export these too (their --metrics-port), some of them only there."""
    out: dict[str, set[str]] = {}
    for obj in vars(lf_metrics).values():
        if isinstance(obj, prom_metrics.MetricWrapperBase):
            for fam in obj.describe():
                for name in sample_names(fam.name, fam.type):
                    out[name] = set(obj._labelnames) | ({"le"} if fam.type == "histogram"
                                                        else set())
        elif isinstance(obj, lf_metrics.TallyCounter):
            for fam in obj.describe():
                for name in sample_names(fam.name, fam.type):
                    out[name] = {obj.label}
    return out


async def scraped_names(settings_factory: Any) -> set[str]:
    """Sample names on a real gateway app's /metrics (families without a sample yet, such
    as labelled ones nobody touched, count with their exposition names)."""
    settings = settings_factory(metrics_token="dashboard-test-scrape-token")
    async with app_client(settings) as (client, _app):
        response = await client.get(
            "/metrics", headers={"authorization": "Bearer dashboard-test-scrape-token"})
    assert response.status_code == 200
    names: set[str] = set()
    for fam in text_string_to_metric_families(response.text):
        names |= {s.name for s in fam.samples} | sample_names(fam.name, fam.type)
    return names


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel["targets"]:
            out.append((panel["title"], target["expr"]))
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression (not functions, keywords, labels, strings,
    ranges)."""
    stripped = re.sub(r'"[^"]*"', '""', expr)
    stripped = re.sub(r"\{[^}]*\}", "", stripped)  # label matchers
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)  # range selectors
    stripped = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", stripped)
    return {n for n in NAME.findall(stripped) if n not in PROMQL_WORDS and not n[0].isdigit()}


def test_metric_name_extraction_from_promql() -> None:
    assert metric_names('histogram_quantile(0.99, sum by (le) (rate(a_bucket{group="p"}'
                        '[$__rate_interval])))') == {"a_bucket"}
    assert metric_names("max by (instance) (x and on (instance) y) / sum(z)") == {"x", "y", "z"}


async def test_every_dashboard_query_names_metrics_livefeed_exports(
    settings_factory: Any,
) -> None:
    gateway = await scraped_names(settings_factory)
    core = core_metric_labels()
    exported = gateway | set(core)
    queries = dashboard_queries()
    assert len(queries) >= 10
    used: set[str] = set()
    for title, expr in queries:
        names = metric_names(expr)
        assert names, (title, expr)
        unknown = names - exported
        assert not unknown, f"{title}: {sorted(unknown)} not exported ({expr})"
        used |= names
        # Label matchers and groupings name labels those metrics have.
        labels = set().union(*(core.get(n, set()) for n in names)) | {"instance", "job"}
        for label in re.findall(r"([a-z_]+)\s*=~?\"", expr):
            assert label in labels, (title, label, expr)
        for group in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
            for label in filter(None, (g.strip() for g in group.split(","))):
                assert label in labels, (title, label, expr)
    # The panels the deployment relies on are there.
    for needed in ("livefeed_ingest_events_total", "livefeed_frames_sent_total",
                   "livefeed_clients", "livefeed_group_lag", "livefeed_group_pending",
                   "livefeed_dead_letters_total", "livefeed_batch_seconds_bucket"):
        assert needed in used, needed
    # Gateway metrics really come from the gateway's /metrics, not only from the module.
    for name in ("livefeed_clients", "livefeed_frames_sent_total", "livefeed_group_lag",
                 "process_resident_memory_bytes"):
        assert name in gateway, name
