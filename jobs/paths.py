"""Path confinement: user-supplied paths may only name files inside configured data roots.

Dataset specs, list files and requests carry paths chosen by users. Every such path goes
through `confine()` before anything opens it: `..` components are refused outright, symlinks
are resolved, and the resolved path must lie inside one of the data roots (the roots are
resolved too, so a root that is itself a symlink works). The dataset build job and the
controller both use this module, so the rule is written once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

ROOTS_SEPARATOR = ":"


class PathNotAllowed(ValueError):
    """The path is malformed or resolves outside every data root."""


def parse_roots(value: str | Iterable[str | Path]) -> list[Path]:
    """Data roots from a `DIR:DIR` string (or an iterable), resolved, empty entries dropped."""
    items = value.split(ROOTS_SEPARATOR) if isinstance(value, str) else list(value)
    roots: list[Path] = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        path = Path(os.path.expanduser(text))
        if not path.is_absolute():
            raise PathNotAllowed(f"data root {text!r} must be an absolute path")
        resolved = path.resolve()
        if resolved not in roots:
            roots.append(resolved)
    return roots


def default_roots() -> list[Path]:
    """`KDIGITS_DATA_ROOTS`, else `KDIGITS_HOME` (default ~/.kdigits) and the home directory."""
    configured = os.environ.get("KDIGITS_DATA_ROOTS", "")
    if configured.strip():
        return parse_roots(configured)
    home = os.environ.get("KDIGITS_HOME") or str(Path.home() / ".kdigits")
    return parse_roots([home, str(Path.home())])


def is_within(path: Path, root: Path) -> bool:
    """True when the (already resolved) `path` is `root` or lies below it."""
    return path == root or root in path.parents


def confine(
    path: str | Path,
    roots: Sequence[Path],
    *,
    base: Path | None = None,
    what: str = "path",
) -> Path:
    """The resolved absolute path, if it lies inside one of `roots`; else PathNotAllowed.

    A relative `path` is joined to `base` (which must itself be confined already); without a
    base it is refused. `what` names the field in error messages.
    """
    text = str(path)
    if not text or "\x00" in text:
        raise PathNotAllowed(f"{what}: empty path or NUL byte")
    if ".." in PurePosixPath(text).parts:
        raise PathNotAllowed(f"{what}: {text!r} contains '..'")
    candidate = Path(os.path.expanduser(text)) if text.startswith("~") else Path(text)
    if not candidate.is_absolute():
        if base is None:
            raise PathNotAllowed(f"{what}: {text!r} must be an absolute path")
        candidate = base / candidate
    if not roots:
        raise PathNotAllowed(f"{what}: no data roots are configured, so {text!r} is refused")
    resolved = candidate.resolve()
    if not any(is_within(resolved, root) for root in roots):
        allowed = ", ".join(str(root) for root in roots)
        shown = text if str(resolved) == text else f"{text} (resolves to {resolved})"
        raise PathNotAllowed(f"{what}: {shown} is outside the data roots ({allowed})")
    return resolved
