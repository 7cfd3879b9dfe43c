"""The download archive run outside kdigits (plain torch, onnxruntime, the README's own code),
and publishing a snapshot as a pretrained model that jobs.snapshots reads."""

from __future__ import annotations

import json
import re
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from safetensors.torch import load_file

from jobs import layout
from jobs.export import ExportError, export_archive, publish_pretrained
from jobs.inference import load_model
from jobs.networks import build_network, load_matching
from jobs.snapshots import get_snapshot
from jobs.snapshots import load_model as load_snapshot_model
from jobs.specs import NetworkSpec, ResizeMode
from jobs.storage import LocalStore
from tests.jobs.inference_helpers import (
    HELD_OUT,
    LABELS,
    png_bytes,
    trained_lenet,
    write_trained,
)

ARCHIVE_FILES = {
    "model.safetensors",
    "network.json",
    "labels.txt",
    "mean.npy",
    "mean.png",
    "info.json",
    "model.onnx",
    "README.md",
}


@pytest.fixture()
def store(tmp_path):
    return LocalStore(tmp_path / "store")


@pytest.fixture()
def prefix(store, mnist_arrays):
    return write_trained(store, trained_lenet(mnist_arrays))


def _prepared(folder: Path, pixels: np.ndarray) -> np.ndarray:
    """What any user would do with the archive: pixels minus mean.npy, NCHW float32."""
    mean = np.load(folder / "mean.npy", allow_pickle=False)
    return (pixels[:, :, :, None].astype(np.float32) - mean).transpose(0, 3, 1, 2).copy()


def _readme_blocks(folder: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S)


def test_tar_gz_runs_in_plain_torch_and_onnxruntime(store, prefix, mnist_arrays, tmp_path) -> None:
    images, labels = mnist_arrays
    path = export_archive(store, prefix, "digits", "tar.gz", out_dir=tmp_path)
    assert path.name == "digits_epoch_2.tar.gz"
    folder = tmp_path / "unpacked"
    with tarfile.open(path) as archive:
        assert {m.name for m in archive.getmembers()} == ARCHIVE_FILES
        assert all(m.isfile() for m in archive.getmembers())
        archive.extractall(folder, filter="data")

    pixels = images[HELD_OUT][:200]
    model = load_model(store, prefix, device="cpu")
    answers = model.classify([png_bytes(p) for p in pixels], top_k=1)
    api_top1 = np.array([LABELS.index(a[0][0]) for a in answers])
    x = _prepared(folder, pixels)

    network = json.loads((folder / "network.json").read_text())
    torch_model = build_network(
        NetworkSpec.model_validate(network["network"]),
        network["channels"], network["height"], network["width"], network["classes"],
    )  # fmt: skip
    torch_model.load_state_dict(load_file(folder / "model.safetensors"))
    torch_model.eval()
    with torch.no_grad():
        torch_top1 = torch_model(torch.from_numpy(x)).argmax(1).numpy()
    np.testing.assert_array_equal(torch_top1, api_top1)

    session = onnxruntime.InferenceSession(
        str(folder / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    onnx_top1 = session.run(None, {"input": x})[0].argmax(1)
    np.testing.assert_array_equal(onnx_top1, api_top1)
    assert (api_top1 == labels[HELD_OUT][:200]).mean() > 0.85

    assert (folder / "labels.txt").read_text().splitlines() == LABELS
    info = json.loads((folder / "info.json").read_text())
    assert info["name"] == "digits" and info["epoch"] == 2
    assert info["spec"]["network"] == {"standard": "lenet"}
    assert info["image"] == {"channels": 1, "width": 28, "height": 28, "resizeMode": "squash"}
    assert info["input"]["meanSubtraction"] == "image"
    assert info["dataset"]["stats"]["images"] == {"train": 3000, "val": 1000}
    assert "files" not in info["dataset"]["stats"]["skipped"]
    assert info["metrics"]["trainLoss"] == pytest.approx(0.25)  # the last value up to epoch 2
    assert set(info["versions"]) >= {"python", "torch", "onnx", "kdigits"}
    assert info["parameters"] == sum(p.numel() for p in torch_model.parameters())
    assert info["onnx"]["file"] == "model.onnx"


def test_readme_code_runs(store, prefix, mnist_arrays, tmp_path) -> None:
    images, labels = mnist_arrays
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(export_archive(store, prefix, "digits", "zip", out_dir=tmp_path)) as z:
        assert set(z.namelist()) == ARCHIVE_FILES
        z.extractall(folder)  # noqa: S202 - our own archive, just listed
    model = load_model(store, prefix, device="cpu")
    prepare, onnx_code, torch_code = _readme_blocks(folder)
    for index in HELD_OUT[:5]:
        image = tmp_path / f"digit-{index}.png"
        image.write_bytes(png_bytes(images[index]))
        shared = prepare.replace('ARCHIVE_DIR = "."', f"ARCHIVE_DIR = {str(folder)!r}")
        shared = shared.replace('IMAGE = "image.png"', f"IMAGE = {str(image)!r}")
        expected = model.classify_one(image.read_bytes(), top_k=1)[0]
        for code in (onnx_code, torch_code):
            namespace: dict[str, object] = {}
            exec(compile(shared + "\n" + code, "README.md", "exec"), namespace)  # noqa: S102
            assert namespace["top1"] == expected[0]
            assert float(namespace["probabilities"].max()) == pytest.approx(  # type: ignore[attr-defined]
                expected[1], abs=1e-4
            )


def test_publish_pretrained_reads_as_a_snapshot(store, prefix, mnist_arrays) -> None:
    images, _ = mnist_arrays
    spec = publish_pretrained(store, prefix, "p1", model_name="digits")
    target = layout.pretrained_prefix("p1")
    assert sorted(k[len(target) :] for k in store.list(target)) == [
        "info.json", "labels.txt", "mean.npy", "model.safetensors", "network.json",
    ]  # fmt: skip
    assert spec.network == "lenet" and spec.labels == LABELS
    assert spec.image.resize_mode == ResizeMode.SQUASH and spec.image.channels == 1
    assert spec.from_model is not None and spec.from_model.epoch == 2

    files = get_snapshot(store, target)  # what `jobs.train --init-from pretrained/p1/` reads
    network, info = load_snapshot_model(files)
    assert info.classes == 10 and info.labels == LABELS
    source = load_model(store, prefix, device="cpu")
    published = load_model(store, target, device="cpu")
    batch = images[HELD_OUT][:50][:, None]
    np.testing.assert_allclose(published.probabilities(batch), source.probabilities(batch))
    assert published.image == source.image

    fine_tune = build_network(info.network, 1, 28, 28, 5)  # five classes: last layer replaced
    fresh = load_matching(fine_tune, dict(network.state_dict()))
    assert fresh == ["classifier.3.bias", "classifier.3.weight"]

    with pytest.raises(ExportError, match="already exists"):
        publish_pretrained(store, prefix, "p1")
    with pytest.raises(ExportError, match="not a snapshot"):
        publish_pretrained(store, "models/m1/snapshots/epoch-0009/", "p2")
    assert not store.list(layout.pretrained_prefix("p2"))
