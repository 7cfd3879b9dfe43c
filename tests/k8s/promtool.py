"""Run the real `promtool` (Prometheus' own PromQL parser and rule evaluator) from tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import require


def promtool() -> str:
    path = shutil.which("promtool")
    require(path is not None, "promtool not installed (Debian package prometheus)")
    assert path is not None
    return path


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def check_rules(path: Path) -> subprocess.CompletedProcess[str]:
    return run("check", "rules", path)


def test_rules(path: Path) -> subprocess.CompletedProcess[str]:
    return run("test", "rules", path, cwd=path.parent)


test_rules.__test__ = False  # type: ignore[attr-defined]
