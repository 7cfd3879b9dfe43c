"""Using a trained model over HTTP against `kdigits serve` on a real Ray head (issue 5):
classify one and many, the confusion matrix, top-N, downloads run outside kdigits, pretrained
models and a fine-tune from one, hostile inputs refused with nothing written, and the CLI.

One LeNet is trained once for the module (2 epochs on the shared 300-digit dataset)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.e2e.conftest import REPO, Server, lenet

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MODEL = "infer"
LABELS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def trained(server: Server, digits_dataset: dict[str, Any]) -> dict[str, Any]:
    r = server.post("/api/v1/models", json=lenet(MODEL, epochs=2))
    assert r.status_code == 201, r.text
    done = server.wait_finished(f"/api/v1/models/{MODEL}", timeout=240)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    return done


@pytest.fixture(scope="module")
def image_list(digits_dir: Path) -> tuple[str, list[tuple[str, int]]]:
    """DIGITS' list of the 300 digits, relative to the train folder, with their labels."""
    items = sorted(
        (f"{p.parent.name}/{p.name}", int(p.parent.name))
        for p in (digits_dir / "train").glob("*/*.png")
    )
    return "".join(f"{path} {label}\n" for path, label in items), items


def snapshot(server: Server, under: str = "") -> set[str]:
    """The files of the object store (under a prefix), to show that a refusal wrote nothing."""
    root = server.home / "store"
    return {str(p.relative_to(root)) for p in (root / under).rglob("*") if p.is_file()}


def pretrained_names(server: Server) -> list[str]:
    items = server.get("/api/v1/pretrained-models").json()["items"]
    return sorted(i["metadata"]["name"] for i in items)


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


# --------------------------------------------------------------------------- classify one


def test_classify_one(server: Server, trained: dict[str, Any], digits_dir: Path) -> None:
    image = digits_dir / "train" / "3" / "000.png"
    url = f"/api/v1/models/{MODEL}/classify"
    up = server.post(url, files={"image_file": ("d.png", png_bytes(image), "image/png")})
    assert up.status_code == 200, up.text
    predictions = up.json()["predictions"]
    assert len(predictions) == 5 and up.json()["epoch"] == 2
    assert [p[0] for p in predictions] != [] and set(p[0] for p in predictions) <= set(LABELS)
    probs = [p[1] for p in predictions]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001

    by_path = server.post(url, data={"image_path": str(image), "top_k": "3", "epoch": "1"})
    assert by_path.status_code == 200, by_path.text
    assert len(by_path.json()["predictions"]) == 3 and by_path.json()["epoch"] == 1

    shown = server.post(url, data={"image_path": str(image), "visualize": "true"}).json()
    assert shown["predictions"] == predictions
    assert shown["totalParameters"] == sum(
        (layer["weights"] or {}).get("parameters", 0) for layer in shown["layers"]
    )
    conv = next(layer for layer in shown["layers"] if layer["type"] == "Conv2d")
    assert {"shape", "mean", "std", "histogram"} <= set(conv["weights"])
    assert len(conv["activations"]["histogram"]["counts"]) == 20

    missing = server.post(url, data={"image_path": str(image), "epoch": "9"})
    assert missing.status_code == 404 and missing.json()["field"] == "epoch"
    none = server.post("/api/v1/models/none-such/classify", data={"image_path": "/x"})
    assert none.status_code == 404
    text = server.get("/metrics").text
    assert re.search(rf'kdigits_inference_latency_seconds_count{{model="{MODEL}"}} [1-9]', text)


def test_classify_before_any_snapshot_is_409(server: Server, trained: dict[str, Any]) -> None:
    r = server.post("/api/v1/models", json=lenet("infer-early", epochs=50))
    assert r.status_code == 201
    try:
        early = server.post(
            "/api/v1/models/infer-early/classify", data={"image_path": "/nowhere.png"}
        )
        assert early.status_code == 409, early.text
        assert "no snapshot" in early.json()["reason"]
    finally:
        server.delete("/api/v1/models/infer-early")


# --------------------------------------------------------------------------- classify many


def test_classify_many_confusion_matrix(
    server: Server, trained: dict[str, Any], digits_dir: Path, image_list: Any
) -> None:
    text, items = image_list
    folder = digits_dir / "train"
    r = server.post(
        f"/api/v1/models/{MODEL}/classify-many",
        data={"image_folder": str(folder)},
        files={"image_list": ("list.txt", text.encode())},
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    classifications = answer["classifications"]
    assert len(classifications) == 300 and answer["errors"] == {}
    # the confusion matrix, computed from the predictions themselves
    expected = np.zeros((10, 10), dtype=int)
    top5_hits = 0
    for path, label in items:
        predictions = classifications[str(folder / path)]
        assert len(predictions) == 5
        expected[label, LABELS.index(predictions[0][0])] += 1
        top5_hits += str(label) in [p[0] for p in predictions]
    assert answer["confusionMatrix"] == expected.tolist()
    assert answer["top1Accuracy"] == pytest.approx(np.trace(expected) / 300)
    assert answer["top5Accuracy"] == pytest.approx(top5_hits / 300)
    assert answer["perClassAccuracy"] == pytest.approx(
        list(np.diag(expected) / expected.sum(axis=1))
    )
    assert answer["top1Accuracy"] > 0.5  # a real, if tiny, model

    # several uploads: keyed by file name, no scores
    files = [
        ("image_files", (f"{d}.png", png_bytes(folder / str(d) / "001.png"), "image/png"))
        for d in (1, 7)
    ]
    uploads = server.post(f"/api/v1/models/{MODEL}/classify-many", files=files).json()
    assert sorted(uploads["classifications"]) == ["1.png", "7.png"]
    assert "confusionMatrix" not in uploads
    listed = classifications[str(folder / "7/001.png")]
    assert [p[0] for p in uploads["classifications"]["7.png"]] == [p[0] for p in listed]
    assert [p[1] for p in uploads["classifications"]["7.png"]] == pytest.approx(
        [p[1] for p in listed], abs=1e-5
    )

    top = server.post(
        f"/api/v1/models/{MODEL}/top-n",
        data={"image_folder": str(folder)},
        files={"image_list": ("list.txt", text.encode())},
    )
    assert top.status_code == 200, top.text
    categories = top.json()["topN"]
    assert [c["label"] for c in categories] == LABELS
    assert all(len(c["images"]) == 9 for c in categories)
    first = categories[4]["images"]
    assert [i["probability"] for i in first] == sorted(
        (i["probability"] for i in first), reverse=True
    )


def test_long_list_runs_as_a_ray_job(
    server: Server, trained: dict[str, Any], digits_dir: Path, image_list: Any
) -> None:
    """Over IN_PROCESS_MAX_IMAGES images: jobs.classify_job on Ray, the same answer."""
    from jobs.evaluation import IN_PROCESS_MAX_IMAGES

    text, _ = image_list
    repeats = IN_PROCESS_MAX_IMAGES // 300 + 1
    r = server.post(
        f"/api/v1/models/{MODEL}/classify-many",
        data={"image_folder": str(digits_dir / "train")},
        files={"image_list": ("list.txt", (text * repeats).encode())},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["count"] == 300 * repeats > IN_PROCESS_MAX_IMAGES
    assert np.asarray(answer["confusionMatrix"]).sum() == 300 * repeats
    in_process = server.post(
        f"/api/v1/models/{MODEL}/classify-many",
        data={"image_folder": str(digits_dir / "train")},
        files={"image_list": ("list.txt", text.encode())},
    ).json()
    assert answer["top1Accuracy"] == pytest.approx(in_process["top1Accuracy"])
    assert not [p for p in snapshot(server) if "/classify/" in p]  # list and answer removed


# --------------------------------------------------------------------------- download


def _python_blocks(readme: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", readme, re.DOTALL)


def test_download_runs_in_torch_and_onnxruntime(
    server: Server, trained: dict[str, Any], digits_dir: Path, tmp_path: Path
) -> None:
    r = server.get(f"/api/v1/models/{MODEL}/download", params={"epoch": 2})
    assert r.status_code == 200, r.text
    assert f'filename="{MODEL}_epoch_2.tar.gz"' in r.headers["content-disposition"]
    folder = tmp_path / "archive"
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as archive:
        archive.extractall(folder, filter="data")
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "network.json", "labels.txt", "mean.npy", "info.json",
            "model.onnx", "README.md"} <= names  # fmt: skip
    zipped = server.get(f"/api/v1/models/{MODEL}/download", params={"format": "zip"})
    assert (
        zipped.status_code == 200 and zipfile.ZipFile(io.BytesIO(zipped.content)).testzip() is None
    )
    assert f"{MODEL}_epoch_2.zip" in zipped.headers["content-disposition"]
    bad = server.get(f"/api/v1/models/{MODEL}/download", params={"format": "rar"})
    assert bad.status_code == 422

    image = digits_dir / "train" / "5" / "002.png"
    (folder / "image.png").write_bytes(image.read_bytes())
    api_top1 = server.post(
        f"/api/v1/models/{MODEL}/classify", data={"image_path": str(image)}
    ).json()["predictions"][0]
    prepare, onnx, torch_code = _python_blocks((folder / "README.md").read_text())
    for code in (onnx, torch_code):  # the README's own code, in a fresh interpreter
        run = subprocess.run(
            [sys.executable, "-c", prepare + "\n" + code],
            cwd=folder,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        label, probability = run.stdout.split()
        assert label == api_top1[0]
        assert float(probability) == pytest.approx(api_top1[1], abs=1e-3)


# --------------------------------------------------------------------------- pretrained


def test_pretrained_publish_upload_finetune_delete(
    server: Server, trained: dict[str, Any], tmp_path: Path
) -> None:
    made = server.post(f"/api/v1/models/{MODEL}/pretrained", json={"name": "infer-pre"})
    assert made.status_code == 201, made.text
    obj = made.json()
    assert obj["kind"] == "PretrainedModel" and obj["status"]["phase"] == "Succeeded"
    assert obj["spec"]["fromModel"] == {"model": MODEL, "epoch": 2.0}
    assert obj["spec"]["network"] == "lenet" and obj["spec"]["labels"] == LABELS
    uid = obj["metadata"]["uid"]
    assert (server.home / "store" / "pretrained" / uid / "model.safetensors").exists()
    again = server.post(f"/api/v1/models/{MODEL}/pretrained", json={"name": "infer-pre"})
    assert again.status_code == 409
    assert server.get("/api/v1/pretrained-models/infer-pre").json()["metadata"]["uid"] == uid

    # upload: the download archive, and loose files (weights + network name + empty labels)
    archive = server.get(f"/api/v1/models/{MODEL}/download").content
    up = server.post(
        "/api/v1/pretrained-models",
        data={"name": "infer-up"},
        files={"archive": ("infer.tar.gz", archive)},
    )
    assert up.status_code == 201, up.text
    assert up.json()["status"]["phase"] == "Succeeded"
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        member = tar.extractfile("model.safetensors")
        assert member is not None
        weights = member.read()
    loose = server.post(
        "/api/v1/pretrained-models",
        data={
            "name": "infer-loose",
            "network": "lenet",
            "channels": "1",
            "width": "28",
            "height": "28",
            "resize_mode": "squash",
        },  # fmt: skip
        files={"weights": ("model.safetensors", weights), "labels": ("labels.txt", b"")},
    )
    assert loose.status_code == 201, loose.text
    assert loose.json()["spec"]["labels"] == [] and loose.json()["spec"]["image"]["width"] == 28

    # fine-tune from the published one
    body = lenet("infer-tuned", epochs=1)
    body["spec"]["network"] = {"pretrained": {"name": "infer-pre"}}
    assert server.post("/api/v1/models", json=body).status_code == 201
    tuned = server.wait_finished("/api/v1/models/infer-tuned", timeout=240)
    assert tuned["status"]["phase"] == "Succeeded", tuned["status"]
    assert tuned["status"]["metrics"]["valAccuracy"] > 0.5  # starts from trained weights

    for name in ("infer-up", "infer-loose", "infer-pre"):
        gone_uid = server.get(f"/api/v1/pretrained-models/{name}").json()["metadata"]["uid"]
        assert server.delete(f"/api/v1/pretrained-models/{name}").status_code == 200
        server.wait_for(
            f"/api/v1/pretrained-models/{name}", lambda o: "metadata" not in o, timeout=30
        )
        assert not (server.home / "store" / "pretrained" / gone_uid).exists()
    server.delete("/api/v1/models/infer-tuned")


# --------------------------------------------------------------------------- hostile input


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _bomb() -> bytes:
    """A small PNG that claims 20,000 x 20,000 pixels (400 M: over the decode cap)."""
    buffer = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_hostile_inputs_refused_nothing_written(
    server: Server, trained: dict[str, Any], digits_dir: Path
) -> None:
    classify = f"/api/v1/models/{MODEL}/classify"
    model_files = f"models/{trained['metadata']['uid']}"
    before = snapshot(server, "pretrained"), snapshot(server, model_files)
    before_pretrained = pretrained_names(server)
    cases: list[tuple[str, dict[str, Any], int, str, str]] = [
        (classify, {"data": {"image_path": "/etc/passwd"}}, 403, "image_path", "outside"),
        (classify, {"data": {"image_path": f"{digits_dir}/../../etc/hosts"}}, 403, "image_path",
         ".."),
        (classify, {"data": {"image_url": "http://169.254.169.254/latest"}}, 403, "image_url",
         "host"),
        (classify, {"files": {"image_file": ("x.png", b"#!/bin/sh\nrm -rf /\n")}}, 422,
         "image_file", "not an image"),
        (classify, {"files": {"image_file": ("bomb.png", _bomb())}}, 422, "image_file",
         "decompression bomb"),
        (f"/api/v1/models/{MODEL}/classify-many",
         {"files": {"image_list": ("l.txt", b"/etc/passwd 1\n")}}, 422, "image_list", "outside"),
        ("/api/v1/pretrained-models",
         {"data": {"name": "evil"}, "files": {"archive": ("a.tar.gz", _tar({
             "../../escape.txt": b"x", "network.json": b"{}"}))}}, 422, "archive", "traversal"),
        ("/api/v1/pretrained-models",
         {"data": {"name": "evil"}, "files": {"archive": ("a.tar.gz", b"not an archive")}}, 422,
         "archive", ""),
        ("/api/v1/pretrained-models",
         {"data": {"name": "evil", "network": "lenet"},
          "files": {"weights": ("model.pt", b"\x80\x04cos\nsystem\n")}}, 422, "weights", ""),
    ]  # fmt: skip
    for path, kwargs, status, field, words in cases:
        r = server.post(path, **kwargs)
        assert r.status_code == status, (field, r.status_code, r.text)
        body = r.json()
        assert body["field"] == field, body
        assert words in body["reason"], body
    assert (snapshot(server, "pretrained"), snapshot(server, model_files)) == before
    assert pretrained_names(server) == before_pretrained
    assert not [p for p in server.home.rglob("escape.txt")] and not Path("/escape.txt").exists()


# --------------------------------------------------------------------------- CLI


def test_cli_classify_download_pretrained(
    server: Server, trained: dict[str, Any], digits_dir: Path, tmp_path: Path, image_list: Any
) -> None:
    env = {**server.env, "KDIGITS_URL": server.url}

    def kdigits(*argv: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [sys.executable, "-m", "controller", *argv],
            env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out

    image = digits_dir / "train" / "8" / "004.png"
    api = server.post(
        f"/api/v1/models/{MODEL}/classify", data={"image_path": str(image), "top_k": "2"}
    ).json()
    cli = json.loads(kdigits("model", "classify", MODEL, str(image), "--top-k", "2",
                             "--output", "json").stdout)  # fmt: skip
    assert [p[0] for p in cli["predictions"]] == [p[0] for p in api["predictions"]]
    assert [p[1] for p in cli["predictions"]] == pytest.approx([p[1] for p in api["predictions"]])
    table = kdigits("model", "classify", MODEL, str(image), "--epoch", "2").stdout
    assert table.splitlines()[0].split("\t")[0] == api["predictions"][0][0]

    (tmp_path / "list.txt").write_text(image_list[0])
    many = json.loads(kdigits("model", "classify-many", MODEL, "list.txt", "--folder",
                              str(digits_dir / "train"), "--output", "json").stdout)  # fmt: skip
    assert many["count"] == 300 and len(many["confusionMatrix"]) == 10

    saved = kdigits("model", "download", MODEL, "--epoch", "1", "-o", "m.tar.gz").stdout.strip()
    assert Path(tmp_path / saved).name == "m.tar.gz" and tarfile.is_tarfile(tmp_path / "m.tar.gz")

    made = json.loads(kdigits("model", "make-pretrained", MODEL, "--name", "infer-cli",
                              "--output", "json").stdout)  # fmt: skip
    assert made["status"]["phase"] == "Succeeded"
    up = json.loads(kdigits("pretrained", "upload", "infer-cli-up", "--archive", "m.tar.gz",
                            "--output", "json").stdout)  # fmt: skip
    assert up["spec"]["network"] == "lenet"
    listed = json.loads(kdigits("pretrained", "list", "--output", "json").stdout)
    assert {"infer-cli", "infer-cli-up"} <= {p["metadata"]["name"] for p in listed}
    assert json.loads(kdigits("pretrained", "get", "infer-cli", "--output", "json").stdout)[
        "metadata"]["name"] == "infer-cli"  # fmt: skip
    for name in ("infer-cli", "infer-cli-up"):
        kdigits("pretrained", "delete", name)


def run_cli(server: Server, cwd: Path, *argv: str) -> str:
    """`python -m controller ARGV` as a user runs it against the server; its stdout."""
    env = {**server.env, "KDIGITS_URL": server.url}
    command = [sys.executable, "-m", "controller", *argv]
    out = subprocess.run(command, env=env, capture_output=True, text=True, cwd=cwd, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_cli_top_n(
    server: Server, trained: dict[str, Any], digits_dir: Path, tmp_path: Path, image_list: Any
) -> None:
    """`kdigits model top-n`: the /top-n answer as JSON, and per class N paths as a table."""
    text, _ = image_list
    folder = str(digits_dir / "train")
    (tmp_path / "list.txt").write_text(text)
    api = server.post(
        f"/api/v1/models/{MODEL}/top-n",
        data={"image_folder": folder, "top_n": "3"},
        files={"image_list": ("list.txt", text.encode())},
    ).json()
    cli = json.loads(run_cli(server, tmp_path, "model", "top-n", MODEL, "list.txt", "--folder",
                             folder, "--top-n", "3", "--output", "json"))  # fmt: skip
    assert [c["label"] for c in cli["topN"]] == LABELS and cli["count"] == 300
    for ours, theirs in zip(cli["topN"], api["topN"], strict=True):
        assert len(ours["images"]) == 3
        assert [i["path"] for i in ours["images"]] == [i["path"] for i in theirs["images"]]
        assert [i["probability"] for i in ours["images"]] == pytest.approx(
            [i["probability"] for i in theirs["images"]], abs=1e-5
        )
    table = run_cli(server, tmp_path, "model", "top-n", MODEL, "list.txt", "--folder", folder,
                    "--epoch", "2").splitlines()  # fmt: skip
    assert len(table) == 10 * (1 + 9)  # DIGITS' default N = 9
    assert table[0] == "0" and table[10] == "1"
    path, probability = table[1].strip().split("\t")
    assert path.startswith(f"{folder}/") and probability.endswith("%")
