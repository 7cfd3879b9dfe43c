"""Read the shipped Grafana dashboards' PromQL, so tests can check and evaluate every panel.

The dashboards in `charts/kdigits/dashboards/` promise that every panel returns data after one
training run (DESIGN.md). This module lists each panel's queries, replaces Grafana's template
variables (`$job`, `$model`, `$__rate_interval`, ...) with values a plain Prometheus accepts, and
names the metrics each query reads, so that a test can lint the queries with promtool and an
end-to-end test can run them against a real Prometheus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARD_DIR = Path(__file__).resolve().parents[1] / "charts" / "kdigits" / "dashboards"

DEFAULT_VARIABLES: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "1h",
    "job": ".*",
    "model": ".*",
}
"""Values for Grafana's variables: the `All` choice (regex `.*`) and windows for a short run."""

OPTIONAL_METRIC_PREFIXES = ("DCGM_",)
"""Metrics of exporters that may be absent (NVIDIA's DCGM exporter): no data is no failure."""

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_METRIC = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{")


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str

    @property
    def metrics(self) -> set[str]:
        return metric_names(self.expr)

    @property
    def optional(self) -> bool:
        """True when it reads only metrics of an optional exporter (e.g. DCGM)."""
        names = self.metrics
        return bool(names) and all(n.startswith(OPTIONAL_METRIC_PREFIXES) for n in names)

    def resolved(self, variables: Mapping[str, str] | None = None) -> str:
        """The expression with Grafana's variables replaced (DEFAULT_VARIABLES by default)."""
        return substitute(self.expr, variables)


def load(path: Path) -> dict[str, Any]:
    """One dashboard's JSON model."""
    with path.open(encoding="utf-8") as stream:
        dashboard: dict[str, Any] = json.load(stream)
    return dashboard


def dashboard_files(directory: Path = DASHBOARD_DIR) -> list[Path]:
    return sorted(directory.glob("*.json"))


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that shows data, including those inside collapsed rows; rows themselves not."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panels(panel)
        else:
            yield panel


def panel_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    """Every (non-hidden) PromQL target of every panel of one dashboard."""
    uid = str(dashboard.get("uid", dashboard.get("title", "")))
    return [
        PanelQuery(uid, str(panel.get("title", "")), str(target.get("refId", "")), target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        if "expr" in target and not target.get("hide", False)
    ]


def all_queries(directory: Path = DASHBOARD_DIR) -> list[PanelQuery]:
    """Every panel query of every shipped dashboard."""
    return [q for path in dashboard_files(directory) for q in panel_queries(load(path))]


def substitute(expr: str, variables: Mapping[str, str] | None = None) -> str:
    """Replace `$var`, `${var}`, `${var:fmt}` and `[[var]]`; unknown variables are an error."""
    values = {**DEFAULT_VARIABLES, **(variables or {})}

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def metric_names(expr: str) -> set[str]:
    """Metric names the expression selects (each written as `name{...}` in our dashboards)."""
    return {match.group(1) for match in _METRIC.finditer(expr)}
