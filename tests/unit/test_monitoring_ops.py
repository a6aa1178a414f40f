"""The operations kit under monitoring/ops: Prometheus config, alert rules, Grafana dashboard.

Every metric the rules and the dashboard query must be one the exporter exposes.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import fakeredis
import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitoring.prometheus import render
from monitoring.recorder import CALLBACK_DELIVERIES, MetricsRecorder
from monitoring.webhooks import DELIVERIES_METRIC
from monitoring.workers import WorkerRegistry

OPS = Path(__file__).resolve().parents[2] / "monitoring" / "ops"
METRIC_RE = re.compile(r"\b((?:tts|celery)_[a-z0-9_]+)\b")


def exposed_names() -> set[str]:
    """Sample names of a scrape in which every counter and histogram has a series."""
    client = fakeredis.FakeRedis()
    rec = MetricsRecorder(client)
    rec.job_submitted("heart", "synthesis", cache_hit=True)
    rec.job_started("heart", "synthesis", 0.1)
    rec.job_succeeded("heart", "synthesis", 0.1, 0.2, 1, 1.0)
    for method in (rec.job_retried, rec.job_failed, rec.job_dead_lettered, rec.job_cancelled):
        method("heart", "synthesis")
    rec.cache_lookup(True)
    rec.cache_lookup(False)
    rec.task_succeeded("t", "q")
    rec.task_failed("t", "q")
    rec.task_retried("t", "q")
    rec.count(DELIVERIES_METRIC, 1.0, event="job.failed", outcome="delivered")
    rec.count(CALLBACK_DELIVERIES, 1.0, event="job.succeeded", outcome="delivered")
    WorkerRegistry(client).heartbeat("w", 0, 1)
    body, _ = render(client, ["synthesis"])
    names = set()
    for family in text_string_to_metric_families(body.decode()):
        names.add(family.name)
        names.update(s.name for s in family.samples)
    return names


def referenced(text: str) -> set[str]:
    return set(METRIC_RE.findall(text)) - {"tts_batch"}


def test_dashboard_and_rules_only_use_exposed_metrics() -> None:
    names = exposed_names()
    assert {"tts_webhook_deliveries_total", "tts_callback_deliveries_total"} <= names
    dashboard = json.loads((OPS / "grafana" / "tts-batch-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs
    used = referenced("\n".join(exprs)) | referenced((OPS / "alert_rules.yml").read_text())
    assert used, "no metric found in the kit"
    assert used <= names, sorted(used - names)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alert_rules.yml"],
        ["test", "rules", "alert_rules_test.yml"],
    ],
    ids=["config", "rules", "rule-tests"],
)
def test_promtool(args: list[str], promtool: str) -> None:
    result = subprocess.run([promtool, *args], cwd=OPS, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
