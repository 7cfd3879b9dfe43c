"""The Grafana dashboards: well formed, every panel's PromQL parses and reads known metrics.

promtool has no bare "parse this PromQL" command, so each panel query (with Grafana's variables
replaced) becomes a recording rule and `promtool check rules` parses them all.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from controller import dashboards
from tests.k8s import promtool

FILES = dashboards.dashboard_files()
QUERIES = dashboards.all_queries()

HISTOGRAMS = {
    "kdigits_job_duration_seconds",
    "kdigits_reconcile_duration_seconds",
    "kdigits_inference_latency_seconds",
    "kdigits_http_request_duration_seconds",
}
KNOWN_METRICS = {
    "kdigits_jobs",
    "kdigits_job_submissions_total",
    "kdigits_training_loss",
    "kdigits_training_accuracy",
    "kdigits_training_learning_rate",
    "kdigits_training_epoch",
    "kdigits_training_images_per_second",
    "kdigits_dataset_images",
    "kdigits_http_requests_total",
    "kdigits_reconcile_errors_total",
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_POWER_USAGE",
} | {f"{h}_{suffix}" for h in HISTOGRAMS for suffix in ("bucket", "sum", "count")}
"""DESIGN.md's kdigits_ metrics (histograms by their series), the HTTP and reconcile-error
metrics the controller exports, and NVIDIA DCGM exporter gauges."""

BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range"}


def _ids(path: Path) -> str:
    return path.stem


def test_two_dashboards_with_queries() -> None:
    assert {p.stem for p in FILES} == {"training", "operations"}
    assert len(QUERIES) >= 20


@pytest.mark.parametrize("path", FILES, ids=_ids)
def test_dashboard_is_well_formed(path: Path) -> None:
    board = dashboards.load(path)
    assert board["uid"].startswith("kdigits-") and board["title"].startswith("kdigits / ")
    assert "kdigits" in board["tags"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [p["id"] for p in board["panels"]] + [
        p["id"] for row in board["panels"] for p in row.get("panels", [])
    ]
    assert len(ids) == len(set(ids))
    for panel in dashboards.panels(board):
        assert panel["title"] and panel["description"], panel["id"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            used = {m for m in re.findall(r"\$\{?(\w+)", target["expr"])}
            assert used <= set(variables) | BUILTIN_VARIABLES, panel["title"]


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: f"{q.dashboard}:{q.panel}:{q.ref_id}")
def test_query_reads_known_metrics_only(query: dashboards.PanelQuery) -> None:
    assert query.metrics, f"no metric selector in {query.expr!r}"
    assert query.metrics <= KNOWN_METRICS, query.metrics - KNOWN_METRICS
    resolved = query.resolved()
    assert "$" not in resolved and "[[" not in resolved


def test_dashboards_cover_the_design() -> None:
    """Every metric DESIGN.md names (and the HTTP, reconcile-error and GPU ones) has a panel."""
    used = set().union(*(q.metrics for q in QUERIES))
    summaries = {f"{h}_{suffix}" for h in HISTOGRAMS for suffix in ("sum", "count")}
    assert KNOWN_METRICS - summaries <= used, (KNOWN_METRICS - summaries) - used


def test_gpu_panels_are_optional_and_in_their_own_row() -> None:
    board = dashboards.load(next(p for p in FILES if p.stem == "training"))
    (row,) = [p for p in board["panels"] if p["type"] == "row" and "DCGM" in p["title"]]
    inside = [t["expr"] for p in row["panels"] for t in p["targets"]]
    assert inside and all("DCGM_" in e for e in inside)
    gpu = [q for q in QUERIES if q.optional]
    assert sorted(q.expr for q in gpu) == sorted(inside)
    outside = [q for q in QUERIES if not q.optional]
    assert all(not any(m.startswith("DCGM_") for m in q.metrics) for q in outside)


def test_substitute_handles_grafana_syntax() -> None:
    expr = 'rate(x{a=~"$model",b=~"${job}",c="[[model]]",d="${job:regex}"}[$__rate_interval])'
    assert dashboards.substitute(expr, {"model": "m", "job": "j"}) == (
        'rate(x{a=~"m",b=~"j",c="m",d="j"}[1m])'
    )
    with pytest.raises(KeyError, match="nope"):
        dashboards.substitute('x{a="$nope"}')


def test_every_panel_query_parses_with_promtool(tmp_path: Path) -> None:
    rules: list[dict[str, Any]] = [
        {"record": f"kdigits_dashboard:panel_{i}", "expr": q.resolved()}
        for i, q in enumerate(QUERIES)
    ]
    path = promtool.write_yaml(
        tmp_path / "panels.yaml", {"groups": [{"name": "panels", "rules": rules}]}
    )
    result = promtool.check_rules(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promtool_parse_can_fail(tmp_path: Path) -> None:
    rules = [{"record": "kdigits_dashboard:bad", "expr": "histogram_quantile(0.5, sum by (le) (x"}]
    path = promtool.write_yaml(tmp_path / "bad.yaml", {"groups": [{"name": "bad", "rules": rules}]})
    assert promtool.check_rules(path).returncode != 0
