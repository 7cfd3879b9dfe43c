"""The CLI's request bodies and argument handling (the HTTP side runs in tests/e2e)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller import cli


def parse(*argv: str):  # type: ignore[no-untyped-def]
    return cli.build_parser().parse_args(list(argv))


def test_dataset_flags_to_spec(tmp_path: Path) -> None:
    args = parse(
        "dataset", "create", "mnist", "--train-dir", str(tmp_path), "--channels", "1",
        "--size", "28x28", "--resize-mode", "crop", "--val-percent", "10", "--encoding", "none",
        "--group", "demo",
    )  # fmt: skip
    body = cli.dataset_body(args)
    assert body["metadata"] == {"name": "mnist", "labels": {"kdigits.io/group": "demo"}}
    spec = body["spec"]
    assert spec["source"]["folder"] == {"train": str(tmp_path.resolve())}
    assert spec["image"] == {"channels": 1, "width": 28, "height": 28, "resizeMode": "crop"}
    assert spec["split"] == {"valPercent": 10} and spec["encoding"] == "none"
    with pytest.raises(cli.UsageError, match="WxH"):
        cli.dataset_body(parse("dataset", "create", "x", "--train-dir", "/d", "--size", "28"))
    with pytest.raises(cli.UsageError):
        cli.dataset_body(parse("dataset", "create", "x"))


def test_model_flags_to_spec() -> None:
    args = parse(
        "model", "create", "m", "--dataset", "mnist", "--network", "lenet", "--epochs", "3",
        "--batch-size", "64", "--lr", "0.05", "--solver", "adam", "--wait", "-o", "json",
    )  # fmt: skip
    body = cli.model_body(args)
    assert body["spec"] == {
        "dataset": "mnist",
        "network": {"standard": "lenet"},
        "training": {"epochs": 3, "batchSize": 64},
        "solver": {"baseLr": 0.05, "type": "adam"},
    }
    assert args.wait and args.output == "json"


def test_spec_file(tmp_path: Path) -> None:
    spec = tmp_path / "model.yaml"
    spec.write_text(
        "apiVersion: kdigits.io/v1alpha1\nkind: Model\nmetadata: {name: m}\n"
        "spec: {dataset: d, network: {standard: lenet}}\nstatus: {phase: Running}\n"
    )
    body = cli.model_body(parse("model", "create", "-f", str(spec)))
    assert body["metadata"]["name"] == "m" and "status" not in body
    renamed = cli.model_body(parse("model", "create", "other", "-f", str(spec)))
    assert renamed["metadata"]["name"] == "other"
    with pytest.raises(cli.UsageError, match="expected Dataset"):
        cli.dataset_body(parse("dataset", "create", "-f", str(spec)))


def test_unreachable_server_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dataset", "list", "--url", "http://127.0.0.1:9"]) == 1
    assert "cannot reach kdigits at http://127.0.0.1:9" in capsys.readouterr().err
