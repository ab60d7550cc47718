"""The shipped deployment files say what Tender does: every metric an alert rule or the
Grafana dashboard names is one Tender exports, every compose service has a health check,
and the settings compose cannot run without stop it with a message naming them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import Counter, Histogram

from surfaces.http.metrics import LedgerCollector
from workers.core import metrics

ROOT = Path(__file__).resolve().parents[2]
NAMED = re.compile(r"\btender_[a-z_]+")


def exported_names(sqlite_url: str) -> set[str]:
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            names |= {f"{value._name}_total"}
        elif isinstance(value, Histogram):
            names |= {f"{value._name}_{suffix}" for suffix in ("bucket", "count", "sum")}
    names |= {family.name for family in LedgerCollector().collect()}
    return names


def test_alert_rules_and_the_dashboard_name_only_metrics_tender_exports(sqlite_url: str) -> None:
    exported = exported_names(sqlite_url)
    assert "tender_instance_health" in exported  # the collector read the database
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/tender.json").read_text())
    expressions += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    named = {name for expr in expressions for name in NAMED.findall(expr)}
    assert named and named <= exported, named - exported
    titles = {panel["title"] for panel in dashboard["panels"]}
    for wanted in ("Payments by outcome", "latency", "Health", "Circuit", "Stuck", "Outbox"):
        assert any(wanted in title for title in titles), wanted


def test_every_compose_service_has_a_health_check() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"prometheus", "grafana", "flower", "api", "worker", "beat"} <= set(services)
    for name, service in services.items():
        if name == "migrate":  # a one-shot job: the others wait for it to complete
            continue
        assert "healthcheck" in service, name
    environment = (ROOT / "compose.yaml").read_text()
    assert "TENDER_API_TOKEN: ${TENDER_API_TOKEN:?" in environment
    assert "PAYSTACK_PUBLIC_KEY: ${PAYSTACK_PUBLIC_KEY" in environment
    assert "COPY surfaces surfaces" in (ROOT / "Dockerfile").read_text()  # the CLI's home


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="CI installs docker-compose")
def test_compose_validates_and_names_the_settings_it_needs() -> None:
    required = {"TENDER_SECRETS_KEY": "k", "TENDER_API_TOKEN": "t", "GRAFANA_ADMIN_PASSWORD": "g"}
    base = {"PATH": "/usr/bin:/bin"}
    ok = subprocess.run(
        ["docker-compose", "config", "-q"], cwd=ROOT, env=base | required, capture_output=True
    )
    assert ok.returncode == 0, ok.stderr.decode()
    for missing in required:
        env = base | {k: v for k, v in required.items() if k != missing}
        refused = subprocess.run(
            ["docker-compose", "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert refused.returncode != 0 and f"set {missing}" in refused.stderr
