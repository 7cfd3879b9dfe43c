"""Path confinement: real directories and symlinks, inside and outside the data roots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs.paths import PathNotAllowed, confine, default_roots, parse_roots


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "data").mkdir(parents=True)
    outside.mkdir()
    (root / "data" / "a.png").write_bytes(b"x")
    (outside / "secret.png").write_bytes(b"s")
    (root / "escape").symlink_to(outside)
    (root / "escape-file.png").symlink_to(outside / "secret.png")
    (root / "inner-link").symlink_to(root / "data")
    return {"root": root.resolve(), "outside": outside.resolve()}


def test_path_inside_a_root_resolves(tree: dict[str, Path]) -> None:
    path = tree["root"] / "data" / "a.png"
    assert confine(str(path), [tree["root"]]) == path


def test_the_root_itself_is_allowed(tree: dict[str, Path]) -> None:
    assert confine(tree["root"], [tree["root"]]) == tree["root"]


def test_dotdot_is_refused_even_when_it_would_stay_inside(tree: dict[str, Path]) -> None:
    sneaky = f"{tree['root']}/data/../data/a.png"
    with pytest.raises(PathNotAllowed, match=r"contains '\.\.'"):
        confine(sneaky, [tree["root"]], what="source.folder.train")


def test_symlinked_folder_escaping_the_root_is_refused(tree: dict[str, Path]) -> None:
    with pytest.raises(PathNotAllowed, match="outside the data roots") as error:
        confine(tree["root"] / "escape" / "secret.png", [tree["root"]], what="source.folder.train")
    assert "source.folder.train" in str(error.value)
    assert str(tree["outside"]) in str(error.value)


def test_symlinked_file_escaping_the_root_is_refused(tree: dict[str, Path]) -> None:
    with pytest.raises(PathNotAllowed):
        confine(tree["root"] / "escape-file.png", [tree["root"]])


def test_symlink_that_stays_inside_is_allowed(tree: dict[str, Path]) -> None:
    resolved = confine(tree["root"] / "inner-link" / "a.png", [tree["root"]])
    assert resolved == tree["root"] / "data" / "a.png"


def test_relative_path_needs_a_base(tree: dict[str, Path]) -> None:
    with pytest.raises(PathNotAllowed, match="must be an absolute path"):
        confine("data/a.png", [tree["root"]])
    base = tree["root"] / "data"
    assert confine("a.png", [tree["root"]], base=base) == base / "a.png"


def test_relative_path_cannot_climb_out_of_its_base(tree: dict[str, Path]) -> None:
    with pytest.raises(PathNotAllowed):
        confine("../outside/secret.png", [tree["root"]], base=tree["root"])


def test_absolute_path_outside_every_root_is_refused(tree: dict[str, Path]) -> None:
    with pytest.raises(PathNotAllowed, match="outside the data roots"):
        confine("/etc/passwd", [tree["root"]])


def test_no_roots_refuses_everything(tree: dict[str, Path]) -> None:
    with pytest.raises(PathNotAllowed, match="no data roots"):
        confine(tree["root"] / "data" / "a.png", [])


def test_nul_byte_and_empty_path_are_refused(tree: dict[str, Path]) -> None:
    for bad in ("", f"{tree['root']}/a\x00.png"):
        with pytest.raises(PathNotAllowed):
            confine(bad, [tree["root"]])


def test_root_given_through_a_symlink_confines_by_its_target(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "x").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    roots = parse_roots(str(link))
    assert roots == [real.resolve()]
    assert confine(link / "x", roots) == (real / "x").resolve()


def test_parse_roots_splits_resolves_and_dedupes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert parse_roots(f"{a}::{b}:{a}") == [a.resolve(), b.resolve()]
    with pytest.raises(PathNotAllowed, match="absolute"):
        parse_roots("relative/dir")


def test_default_roots_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KDIGITS_DATA_ROOTS", f"{tmp_path}{os.pathsep}{tmp_path / 'other'}")
    assert default_roots() == [tmp_path.resolve(), (tmp_path / "other").resolve()]
    monkeypatch.delenv("KDIGITS_DATA_ROOTS")
    monkeypatch.setenv("KDIGITS_HOME", str(tmp_path / "home"))
    assert default_roots() == [(tmp_path / "home").resolve(), Path.home().resolve()]
