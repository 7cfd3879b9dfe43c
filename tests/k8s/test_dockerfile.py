"""The Dockerfile (no Docker engine here to build it): its promises, read from the file.

Multi-stage, non-root, the package installed from pyproject.toml with the pinned torch and
torchvision, `kdigits serve --host 0.0.0.0` by default, the Ray version the chart's RayCluster
declares, and a .dockerignore that keeps the venv and VCS out of the build context.
"""

from __future__ import annotations

import re
import tomllib

import yaml

from tests.k8s.openapi import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text(encoding="utf-8")


def _instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_multi_stage_and_non_root() -> None:
    steps = _instructions()
    stages = [arg for op, arg in steps if op == "FROM"]
    assert len(stages) == 2 and " AS build" in stages[0]
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(op == "COPY" and "--from=build" in arg for op, arg in steps)


def test_installs_the_package_with_pinned_torch() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps
    install = " ".join(arg for op, arg in _instructions() if op == "RUN" and "pip install" in arg)
    assert re.search(r"pip install [^&]* \.(\s|$)", install), "installs the project itself"
    assert "2.14.1" in install and "0.29.1" in install, "checks the pinned versions"
    copied = " ".join(arg for op, arg in _instructions() if op == "COPY")
    for path in ("pyproject.toml", "jobs", "controller"):
        assert path in copied


def test_default_command_serves_the_controller() -> None:
    (cmd,) = [arg for op, arg in _instructions() if op == "CMD"]
    assert yaml.safe_load(cmd) == ["kdigits", "serve", "--host", "0.0.0.0"]
    assert not [op for op, _ in _instructions() if op == "ENTRYPOINT"], "KubeRay sets the command"


def test_ray_version_matches_the_chart() -> None:
    match = re.search(r"^ARG RAY_VERSION=(\S+)$", DOCKERFILE, re.M)
    values = yaml.safe_load((REPO / "charts/kdigits/values.yaml").read_text())
    assert match and match.group(1) == values["ray"]["version"]


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "tests"):
        assert entry in ignored
    for needed in ("jobs", "controller", "pyproject.toml", "README.md"):
        assert needed not in ignored
