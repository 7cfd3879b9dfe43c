"""The chart's PrometheusRule, checked and unit-tested by promtool (Prometheus' own code).

`promtool check rules` parses every expression and template; `promtool test rules` feeds
input series through the rules and asserts which alerts fire, with which labels and text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.k8s import promtool
from tests.k8s.chart import NAMESPACE, RELEASE, SCENARIOS, one, render

SELECTOR = f'job="{RELEASE}",namespace="{NAMESPACE}"'
ALERT_LABELS = SCENARIOS["monitoring"]["metrics"]["prometheusRule"]["alertLabels"]


def _groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = one(render(SCENARIOS["monitoring"]), "PrometheusRule")["spec"][
        "groups"
    ]
    return groups


@pytest.fixture()
def rules_file(tmp_path: Path) -> Path:
    return promtool.write_yaml(tmp_path / "rules.yaml", {"groups": _groups()})


def _unit_test(tmp_path: Path, tests: list[dict[str, Any]]) -> None:
    promtool.write_yaml(tmp_path / "rules.yaml", {"groups": _groups()})
    spec = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}
    result = promtool.test_rules(promtool.write_yaml(tmp_path / "test.yaml", spec))
    assert result.returncode == 0, result.stdout + result.stderr


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    matchers = ",".join(
        [SELECTOR, 'instance="10.0.0.7:5000"'] + [f'{k}="{v}"' for k, v in labels.items()]
    )
    return {"series": f"{name}{{{matchers}}}", "values": values}


def test_promtool_checks_the_rules(rules_file: Path) -> None:
    result = promtool.check_rules(rules_file)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout


def test_promtool_catches_a_broken_rule(tmp_path: Path) -> None:
    groups = _groups()
    groups[0]["rules"][0]["expr"] = "sum by (kind (kdigits_jobs)"
    broken = promtool.write_yaml(tmp_path / "broken.yaml", {"groups": groups})
    assert promtool.check_rules(broken).returncode != 0


def test_rules_use_our_metrics_and_selector() -> None:
    for group in _groups():
        for rule in group["rules"]:
            assert SELECTOR in rule["expr"].replace(" ", ""), rule["alert"]
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["labels"]["team"] == "ml"
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_job_failed_fires_when_a_job_fails(tmp_path: Path) -> None:
    failed = {
        "summary": "A kdigits model job failed",
        "description": "More model jobs are Failed than 15m ago; their status.message says why "
        "(kubectl get models --all-namespaces).",
    }
    _unit_test(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": [
                    _series("kdigits_jobs", "0 0 0 1 1 1 1 1 1 1", kind="model", phase="Failed"),
                    _series("kdigits_jobs", "0x30", kind="dataset", phase="Failed"),
                    _series("kdigits_jobs", "2 2 2 1 1 1 1 1 1 1", kind="model", phase="Running"),
                ],
                "alert_rule_test": [
                    {"eval_time": "2m", "alertname": "KdigitsJobFailed", "exp_alerts": []},
                    {
                        "eval_time": "5m",
                        "alertname": "KdigitsJobFailed",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "namespace": NAMESPACE,
                                    "kind": "model",
                                    **ALERT_LABELS,
                                },
                                "exp_annotations": failed,
                            }
                        ],
                    },
                    {"eval_time": "25m", "alertname": "KdigitsJobFailed", "exp_alerts": []},
                ],
            }
        ],
    )


def test_stuck_queue_fires_only_without_submissions(tmp_path: Path) -> None:
    _unit_test(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": [
                    _series("kdigits_jobs", "1x90", kind="model", phase="Queued"),
                    _series("kdigits_job_submissions_total", "3x90", kind="model"),
                    _series("kdigits_jobs", "1x90", kind="dataset", phase="Queued"),
                    _series("kdigits_job_submissions_total", "0+1x90", kind="dataset"),
                ],
                "alert_rule_test": [
                    {"eval_time": "20m", "alertname": "KdigitsJobStuckQueued", "exp_alerts": []},
                    {
                        "eval_time": "60m",
                        "alertname": "KdigitsJobStuckQueued",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "namespace": NAMESPACE,
                                    "kind": "model",
                                    **ALERT_LABELS,
                                },
                                "exp_annotations": {
                                    "summary": "kdigits model jobs are stuck in the queue",
                                    "description": "1 model jobs are Queued and none was "
                                    "submitted to Ray for 30m. Check status.waitingFor, the Ray "
                                    "cluster's capacity (GPU nodes) and KDIGITS_MAX_RUNNING_JOBS.",
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    )


def test_controller_down_fires_when_unscraped_or_down(tmp_path: Path) -> None:
    labels = {"severity": "critical", "job": RELEASE, "namespace": NAMESPACE, **ALERT_LABELS}
    description = (
        f"Prometheus has not scraped the kdigits controller {NAMESPACE}/{RELEASE} for 5m; "
        "no jobs are reconciled and the REST API is unavailable."
    )
    expected = {"summary": "The kdigits controller is down", "description": description}
    _unit_test(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": [_series("up", "1 1 1 0 0 0 0 0 0 0 0 0")],
                "alert_rule_test": [
                    {"eval_time": "3m", "alertname": "KdigitsControllerDown", "exp_alerts": []},
                    {
                        "eval_time": "9m",
                        "alertname": "KdigitsControllerDown",
                        "exp_alerts": [
                            {
                                "exp_labels": {**labels, "instance": "10.0.0.7:5000"},
                                "exp_annotations": expected,
                            }
                        ],
                    },
                ],
            },
            {
                "interval": "1m",
                "input_series": [
                    {"series": 'up{job="other",namespace="x"}', "values": "1x20"},
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "10m",
                        "alertname": "KdigitsControllerDown",
                        "exp_alerts": [{"exp_labels": labels, "exp_annotations": expected}],
                    },
                ],
            },
        ],
    )


def test_reconcile_errors_fire_when_they_persist(tmp_path: Path) -> None:
    _unit_test(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": [_series("kdigits_reconcile_errors_total", "0x10 1+1x30")],
                "alert_rule_test": [
                    {"eval_time": "9m", "alertname": "KdigitsReconcileErrors", "exp_alerts": []},
                    {
                        "eval_time": "30m",
                        "alertname": "KdigitsReconcileErrors",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "namespace": NAMESPACE,
                                    **ALERT_LABELS,
                                },
                                "exp_annotations": {
                                    "summary": "The kdigits controller keeps failing to reconcile",
                                    "description": f"Reconcile passes in {NAMESPACE} have been "
                                    "failing for 10m (16.67m errors/s). See the controller's logs.",
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    )
