"""The CLI's request bodies and argument handling (the HTTP side runs in tests/e2e)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
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


def test_top_n_request_and_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`model top-n` posts the list to /top-n with top_n, epoch and the folder, and prints each
    class with its images (the HTTP side against a real model runs in tests/e2e)."""
    answer = {
        "topN": [
            {"label": "0", "images": [{"path": "/d/0/a.png", "probability": 0.875}]},
            {"label": "1", "images": [{"path": "/d/1/b.png", "probability": 0.5}]},
        ],
        "count": 3,
        "errors": {"/d/x.png": "not an image"},
    }
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json=answer)

    real_client = httpx.Client
    monkeypatch.setattr(
        httpx, "Client", lambda **kw: real_client(transport=httpx.MockTransport(handler), **kw)
    )
    (tmp_path / "list.txt").write_text("0/a.png 0\n1/b.png 1\nx.png\n")
    argv = ["model", "top-n", "m", str(tmp_path / "list.txt"), "--folder", str(tmp_path),
            "--top-n", "3", "--epoch", "2", "--url", "http://kdigits.test"]  # fmt: skip
    assert cli.main(argv) == 0
    request = requests[0]
    assert request.method == "POST" and request.url.path == "/api/v1/models/m/top-n"
    form = request.content.decode()
    for field, value in (("top_n", "3"), ("epoch", "2"), ("image_folder", str(tmp_path))):
        assert f'name="{field}"\r\n\r\n{value}\r\n' in form
    assert 'name="image_list"; filename="list.txt"' in form and "top_k" not in form
    assert capsys.readouterr().out.splitlines() == [
        "0",
        "  /d/0/a.png\t87.50%",
        "1",
        "  /d/1/b.png\t50.00%",
        "/d/x.png\terror: not an image",
    ]
    assert cli.main([*argv, "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == answer
    assert parse("model", "top-n", "m", "l.txt").top_n == 9  # DIGITS' default
