"""Uploaded pretrained models: archives and loose files imported, hostile ones refused whole."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from jobs import layout
from jobs.archives import (
    ArchiveLimits,
    ArchiveRejected,
    import_pretrained_archive,
    import_pretrained_files,
)
from jobs.export import export_files, write_archive
from jobs.inference import load_model
from jobs.networks import build_network
from jobs.snapshots import get_snapshot
from jobs.snapshots import load_model as load_snapshot_model
from jobs.specs import ImageSpec, NetworkSpec, ResizeMode
from jobs.storage import LocalStore
from tests.jobs.inference_helpers import HELD_OUT, LABELS, trained_lenet, write_trained

IMAGE = ImageSpec(channels=1, width=28, height=28, resize_mode=ResizeMode.SQUASH)


class Payload:
    """Unpickling this would create a directory: proof that a refused file never ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


@pytest.fixture()
def source(tmp_path):
    return LocalStore(tmp_path / "source")


@pytest.fixture()
def store(tmp_path):
    return LocalStore(tmp_path / "store")


@pytest.fixture()
def trained(mnist_arrays):
    return trained_lenet(mnist_arrays)


@pytest.fixture()
def download(source, trained, tmp_path):
    """The files of a real kdigits download archive."""
    return export_files(source, write_trained(source, trained), "digits")


def _tar(entries: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for entry in entries:
            body = (data or {}).get(entry.name)
            if body is not None:
                entry.size = len(body)
            archive.addfile(entry, io.BytesIO(body) if body is not None else None)
    return buffer.getvalue()


def _file(name: str, body: bytes) -> tuple[tarfile.TarInfo, dict[str, bytes]]:
    return tarfile.TarInfo(name), {name: body}


def _tar_with(files: dict[str, bytes], extra: tarfile.TarInfo, body: bytes = b"") -> bytes:
    entries = [tarfile.TarInfo(name) for name in files]
    data = dict(files)
    if extra.isfile():
        data[extra.name] = body
    return _tar([*entries, extra], data)


def _zip(files: dict[str, bytes], extra: list[zipfile.ZipInfo] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, body in files.items():
            archive.writestr(name, body)
        for info in extra or []:
            archive.writestr(info, b"/etc/passwd")
    return buffer.getvalue()


def _probabilities(store: LocalStore, prefix: str, mnist_arrays) -> np.ndarray:
    images, _ = mnist_arrays
    return load_model(store, prefix, device="cpu").probabilities(images[HELD_OUT][:40][:, None])


def _assert_nothing_written(store: LocalStore, tmp_path: Path) -> None:
    assert store.list("") == []
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/kdigits-evil.txt").exists()


def test_download_archive_round_trip(store, source, download, tmp_path, mnist_arrays) -> None:
    path = write_archive(download, "tar.gz", tmp_path / "digits_epoch_2.tar.gz")
    spec = import_pretrained_archive(store, path, "up1", filename=path.name)
    prefix = layout.pretrained_prefix("up1")
    assert spec.network == "lenet" and spec.labels == LABELS
    assert spec.image == IMAGE
    network, info = load_snapshot_model(get_snapshot(store, prefix))
    assert info.classes == 10
    np.testing.assert_allclose(
        _probabilities(store, prefix, mnist_arrays),
        _probabilities(source, "models/m1/snapshots/epoch-0002/", mnist_arrays),
    )
    assert json.loads(store.get_bytes(f"{prefix}info.json"))["source"]["upload"] == path.name


def test_zip_under_one_folder_with_torch_weights(store, download, trained, mnist_arrays) -> None:
    files = {f"digits/{k}": v for k, v in download.items() if k != "model.safetensors"}
    buffer = io.BytesIO()
    torch.save({"state_dict": trained.weights}, buffer)
    files["digits/model.pt"] = buffer.getvalue()
    spec = import_pretrained_archive(store, _zip(files), "up2")
    prefix = layout.pretrained_prefix("up2")
    converted = load_safetensors(store.get_bytes(f"{prefix}model.safetensors"))
    assert set(converted) == set(trained.weights)
    assert spec.labels == LABELS
    probabilities = _probabilities(store, prefix, mnist_arrays)
    assert probabilities.shape == (40, 10)


def test_loose_files(store, trained, mnist_arrays) -> None:
    weights = save_safetensors(trained.weights)
    mean = io.BytesIO()
    np.save(mean, trained.mean, allow_pickle=False)
    spec = import_pretrained_files(
        store,
        "loose1",
        weights=weights,
        weights_filename="lenet.safetensors",
        network="lenet",
        image=IMAGE,
        labels_text=("\n".join(LABELS) + "\n").encode(),
        mean=mean.getvalue(),
    )
    assert spec.network == "lenet" and spec.labels == LABELS
    model = load_model(store, layout.pretrained_prefix("loose1"), device="cpu")
    assert model.info.mean_subtraction.value == "image"
    images, labels = mnist_arrays
    predicted = model.probabilities(images[HELD_OUT][:200][:, None]).argmax(1)
    assert (predicted == labels[HELD_OUT][:200]).mean() > 0.85


def test_loose_state_dict_without_labels_and_layer_list(store) -> None:
    layers = [
        {"type": "conv", "outChannels": 4, "kernelSize": 3},
        {"type": "relu"},
        {"type": "maxpool", "kernelSize": 2, "stride": 2},
        {"type": "linear"},
    ]
    network = NetworkSpec.model_validate({"custom": {"layers": layers}})
    model = build_network(network, 1, 28, 28, 7)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    spec = import_pretrained_files(
        store,
        "loose2",
        weights=buffer.getvalue(),
        weights_filename="model.pt",
        network=json.dumps(layers),
        image=IMAGE,
    )
    assert spec.labels == [] and spec.layers is not None and len(spec.layers) == 4
    loaded = load_model(store, layout.pretrained_prefix("loose2"), device="cpu")
    assert loaded.info.classes == 7  # read from the weights, since labels.txt was empty
    assert loaded.labels == [str(i) for i in range(7)]
    assert store.get_bytes(f"{layout.pretrained_prefix('loose2')}labels.txt") == b""


def _device_member() -> tarfile.TarInfo:
    member = tarfile.TarInfo("model.safetensors")
    member.type = tarfile.CHRTYPE
    member.devmajor, member.devminor = 1, 3
    return member


def _link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = target
    return member


def _zip_symlink() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("link.txt")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _hostile_archives(download: dict[str, bytes]) -> dict[str, tuple[bytes, str]]:
    files = {k: download[k] for k in ("model.safetensors", "network.json", "labels.txt")}
    evil = tarfile.TarInfo("../evil.txt")
    absolute = tarfile.TarInfo("/tmp/kdigits-evil.txt")
    many = {f"extra/{i:03d}.txt": b"x" for i in range(70)}
    return {
        "tar-slip": (_tar_with(files, evil, b"pwned"), r"'\.\./evil\.txt': contains '\.\.'"),
        "absolute": (_tar_with(files, absolute, b"pwned"), "absolute path"),
        "symlink": (
            _tar_with({}, _link("labels.txt", tarfile.SYMTYPE, "/etc/passwd")),
            "is a symbolic link",
        ),
        "hardlink": (
            _tar_with({}, _link("labels.txt", tarfile.LNKTYPE, "/etc/passwd")),
            "is a hard link",
        ),
        "device": (_tar_with({}, _device_member()), "is a device"),
        "zip-slip": (_zip({**files, "../evil.txt": b"pwned"}), "contains '..'"),
        "zip-symlink": (_zip(files, [_zip_symlink()]), "is a symbolic link"),
        "zip-bomb": (_zip({**files, "mean.npy": bytes(64 * 1024 * 1024)}), "a zip bomb"),
        "gzip-bomb": (
            _tar_with(
                {"network.json": files["network.json"]},
                tarfile.TarInfo("mean.npy"),
                bytes(64 * 1024 * 1024),
            ),
            "a compression bomb",
        ),
        "too-many": (_zip({**files, **many}), "more than 64 members"),
        "duplicate": (
            _tar(
                [tarfile.TarInfo("labels.txt"), tarfile.TarInfo("labels.txt")],
                {"labels.txt": b"a\n"},
            ),
            "appears twice",
        ),  # fmt: skip
        "not-archive": (b"#!/bin/sh\nrm -rf /\n" * 50, "not a tar, tar.gz or zip"),
    }


def test_hostile_archives_refused(store, download, tmp_path) -> None:
    for case, (body, message) in _hostile_archives(download).items():
        with pytest.raises(ArchiveRejected, match=message):
            import_pretrained_archive(store, body, f"bad-{case}")
        _assert_nothing_written(store, tmp_path)


def test_size_caps(store, download, tmp_path) -> None:
    body = _tar([tarfile.TarInfo(k) for k in download], download)
    with pytest.raises(ArchiveRejected, match="more than the 100000 allowed"):
        import_pretrained_archive(
            store, body, "big", limits=ArchiveLimits(max_member_bytes=100_000)
        )
    with pytest.raises(ArchiveRejected, match="uncompressed"):
        import_pretrained_archive(
            store, body, "big", limits=ArchiveLimits(max_total_bytes=2_000_000)
        )
    with pytest.raises(ArchiveRejected, match=r"archive: \d+ bytes, more than the 1000 allowed"):
        import_pretrained_archive(store, body, "big", limits=ArchiveLimits(max_archive_bytes=1000))
    _assert_nothing_written(store, tmp_path)


def test_pickled_objects_refused(store, download, trained, tmp_path) -> None:
    marker = tmp_path / "unpickled"
    buffer = io.BytesIO()
    torch.save({**trained.weights, "payload": Payload(marker)}, buffer)
    with pytest.raises(ArchiveRejected, match=r"model\.pt: refused.*weights_only=True"):
        import_pretrained_files(
            store, "pk1", weights=buffer.getvalue(), weights_filename="model.pt",
            network="lenet", image=IMAGE,
        )  # fmt: skip
    files = {k: download[k] for k in ("network.json", "labels.txt")}
    files["model.pt"] = buffer.getvalue()
    with pytest.raises(ArchiveRejected, match="weights_only=True"):
        import_pretrained_archive(store, _zip(files), "pk2")
    assert not marker.exists()
    _assert_nothing_written(store, tmp_path)


def test_unusable_models_refused(store, download, trained, tmp_path) -> None:
    weights = save_safetensors(trained.weights)
    with pytest.raises(ArchiveRejected, match="labels.txt: 3 labels but the network has 10"):
        import_pretrained_files(
            store, "x1", weights=weights, weights_filename="w.safetensors", network="lenet",
            image=IMAGE, labels_text=b"a\nb\nc\n",
        )  # fmt: skip
    with pytest.raises(ArchiveRejected, match="weights: do not fit the network .*missing"):
        import_pretrained_files(
            store, "x2", weights=weights, weights_filename="w.safetensors", network="alexnet",
            image=ImageSpec(channels=1, width=256, height=256),
        )  # fmt: skip
    with pytest.raises(ArchiveRejected, match="network: .*unknown network 'nonet'"):
        import_pretrained_files(
            store, "x3", weights=weights, weights_filename="w.safetensors", network="nonet",
            image=IMAGE,
        )  # fmt: skip
    with pytest.raises(ArchiveRejected, match="not safetensors or a torch state dict"):
        import_pretrained_files(
            store, "x4", weights=b"garbage" * 10, weights_filename="w.bin", network="lenet",
            image=IMAGE,
        )  # fmt: skip
    network = json.loads(download["network.json"])
    network["network"] = {"custom": {"python": "import os\nos.mkdir('/tmp/kdigits-ran')\n"}}
    files = {**download, "network.json": json.dumps(network).encode()}
    with pytest.raises(ArchiveRejected, match="custom Python networks are disabled"):
        import_pretrained_archive(store, _zip(files), "x5")
    assert not Path("/tmp/kdigits-ran").exists()
    del files["network.json"]
    with pytest.raises(ArchiveRejected, match="has no network.json"):
        import_pretrained_archive(store, _zip(files), "x6")
    _assert_nothing_written(store, tmp_path)
