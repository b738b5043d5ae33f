"""The monitoring profile's files (deploy/monitoring/): Prometheus's configuration and alert
rules pass ``promtool check``, the alerts' unit tests (``alerts_test.yml``) pass ``promtool test
rules``, and every query of the alert rules and of the Grafana dashboard names only metrics the
code exports, read from the code's own registries on real PostgreSQL and Redis.

``promtool`` (Debian's ``prometheus`` package, installed by ``scripts/setup``) is a hard
requirement: its absence is a failure, not a skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from clerk_sync.core.settings import Settings
from ingress.metrics import IngressMetrics
from tests.conftest import REDIS_URL, ROOT
from workers.authentication import MessageCheck
from workers.gauges import PipelineGauges
from workers.metrics import WorkerMetrics

MONITORING = ROOT / "deploy" / "monitoring"
PROMETHEUS = MONITORING / "prometheus"
GRAFANA = MONITORING / "grafana"
BUILT_IN = {"up"}
"""Series Prometheus writes itself for every target."""
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
PROMQL_WORDS |= {"and", "or", "unless", "offset"}


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(
            "promtool is not installed; install it with `apt-get install -y prometheus` "
            "(scripts/setup does)"
        )
    return subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_prometheus_configuration_and_rules_are_valid() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    rules = promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_alert_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {
        test["alertname"]
        for group in yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
        for test in group["alert_rule_test"]
    }
    assert {"ClerkSyncDeadLettersRising", "ClerkSyncOldestUnfinishedEventTooOld"} <= tested


def test_the_alerts_the_issue_asks_for_exist() -> None:
    rules = alert_rules()
    assert set(rules) >= {
        "ClerkSyncDeadLettersRising",
        "ClerkSyncOldestUnfinishedEventTooOld",
        "ClerkSyncBrokerNotDurable",
        "ClerkSyncNoWorker",
        "ClerkSyncTargetDown",
    }


def test_prometheus_scrapes_the_ingress_and_the_workers_metrics_ports() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: (discovery["names"], discovery["port"])
        for job in config["scrape_configs"]
        for discovery in job["dns_sd_configs"]
    }
    assert targets == {
        "clerk-sync-ingress": (["ingress"], Settings().ingress_metrics_port),
        "clerk-sync-worker": (["worker"], Settings().worker_metrics_port),
    }


@pytest.fixture(scope="module")
def exported(postgres_url: str) -> set[str]:
    """Every sample name the ingress and a worker can serve, read from their registries (the
    pipeline gauges from real PostgreSQL and Redis)."""
    gauges = CollectorRegistry()
    gauges.register(PipelineGauges(Settings(database_url=postgres_url, broker_url=REDIS_URL)))
    names = set(BUILT_IN)
    worker = WorkerMetrics()
    assert MessageCheck(Settings(), lambda: worker.registry).forged is not None  # registers it
    for registry in (IngressMetrics().registry, worker.registry, gauges):
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names


def test_the_pipeline_gauges_are_all_exported(exported: set[str]) -> None:
    """The inventory below is read from real sources: a gauge missing here means an unreadable
    database or broker, and every other test of this module would prove nothing."""
    assert {
        "clerk_sync_queue_depth",
        "clerk_sync_ledger_size",
        "clerk_sync_dead_letters",
        "clerk_sync_unfinished_events",
        "clerk_sync_oldest_unfinished_event_age_seconds",
        "clerk_sync_broker_durable",
        "clerk_sync_ingress_requests_total",
        "clerk_sync_worker_lag_seconds_bucket",
    } <= exported


def test_alert_rules_name_only_exported_metrics(exported: set[str]) -> None:
    for name, expr in alert_rules().items():
        named = metric_names(expr)
        assert named, (name, expr)
        assert named <= exported, (name, named - exported)


def test_every_dashboard_panel_queries_exported_metrics(exported: set[str]) -> None:
    datasource = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    dashboards = sorted((GRAFANA / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"], path
        assert dashboard["title"], path
        panels = dashboard["panels"]
        assert panels, path
        for panel in panels:
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                named = metric_names(target["expr"])
                assert named, (panel["title"], target["expr"])
                assert named <= exported, (panel["title"], named - exported)


def test_metric_names_reads_promql() -> None:
    """The reader the two tests above rely on: a misspelt name must surface."""
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(clerk_sync_lag_bucket{job="x"}[5m])))'
    ) == {"clerk_sync_lag_bucket"}
    assert metric_names("max(a) - max(a offset 15m) > 0 or absent(up{job=~'w.*'} == 1)") == {
        "a",
        "up",
    }


def alert_rules() -> dict[str, str]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, label names, label values or durations."""
    expr = re.sub(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'", "''", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\boffset\s+\w+", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group() in PROMQL_WORDS:
            continue
        names.add(match.group())
    return names
