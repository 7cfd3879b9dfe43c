"""MNIST folders: the idx parser, a real HTTP download, redirects, and the offline fallback."""

from __future__ import annotations

import gzip
import http.server
import socket
import struct
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.mnist import (
    IDX_FILES,
    SHIPPED_NPZ,
    DownloadError,
    IdxError,
    fetch,
    gunzip_capped,
    load_mnist,
    main,
    parse_idx,
    write_mnist_folders,
)

Digits = tuple[np.ndarray, np.ndarray]


def idx_bytes(array: np.ndarray) -> bytes:
    """LeCun's idx format for uint8 arrays, written independently of the parser."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the mirror folder; `/redirect/...` answers 302 to a host that is not allowed."""

    def do_GET(self) -> None:
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", "http://evil.example.invalid/" + self.path[10:])
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def mirror(tmp_path: Path, mnist_arrays: Digits) -> Iterator[tuple[str, Digits, Digits]]:
    """A real HTTP mirror on loopback holding idx.gz files made from 600 + 100 real digits."""
    images, labels = mnist_arrays
    order = np.random.default_rng(0).permutation(len(images))
    train = (images[order[:600]], labels[order[:600]])
    test = (images[order[600:700]], labels[order[600:700]])
    folder = tmp_path / "mirror"
    folder.mkdir()
    for phase, (image_name, label_name) in IDX_FILES.items():
        phase_images, phase_labels = train if phase == "train" else test
        (folder / image_name).write_bytes(gzip.compress(idx_bytes(phase_images)))
        (folder / label_name).write_bytes(gzip.compress(idx_bytes(phase_labels)))
    handler = partial(_Handler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", train, test
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- idx format


def test_parse_idx_reads_images_and_labels(mnist_arrays: Digits) -> None:
    images, labels = mnist_arrays
    parsed = parse_idx(idx_bytes(images[:50]))
    assert parsed.shape == (50, 28, 28) and parsed.dtype == np.uint8
    np.testing.assert_array_equal(parsed, images[:50])
    np.testing.assert_array_equal(parse_idx(idx_bytes(labels[:50])), labels[:50])


def test_parse_idx_reads_big_endian_wider_types() -> None:
    values = np.array([[1, -2], [300, 70000]], dtype=">i4")
    data = bytes([0, 0, 0x0C, 2]) + struct.pack(">2I", 2, 2) + values.tobytes()
    assert parse_idx(data).tolist() == [[1, -2], [300, 70000]]


def test_parse_idx_refuses_malformed_files(mnist_arrays: Digits) -> None:
    good = idx_bytes(mnist_arrays[0][:3])
    with pytest.raises(IdxError, match="magic"):
        parse_idx(b"\x01" + good[1:])
    with pytest.raises(IdxError, match="element type"):
        parse_idx(good[:2] + b"\x42" + good[3:])
    with pytest.raises(IdxError, match="need 2352"):
        parse_idx(good[:-10])
    with pytest.raises(IdxError, match="rank"):
        parse_idx(bytes([0, 0, 8, 0]))
    huge = bytes([0, 0, 8, 3]) + struct.pack(">3I", 100_000, 10_000, 100)
    with pytest.raises(IdxError, match="cap"):
        parse_idx(huge)


def test_gunzip_refuses_a_gzip_bomb() -> None:
    bomb = gzip.compress(b"\0" * 3_000_000)
    assert len(bomb) < 10_000
    with pytest.raises(IdxError, match="over 1000000 bytes"):
        gunzip_capped(bomb, max_bytes=1_000_000)
    with pytest.raises(IdxError, match="gzip"):
        gunzip_capped(b"not gzip at all")


# --------------------------------------------------------------------------- download


def test_download_writes_digits_folders_as_digits_did(
    tmp_path: Path, mirror: tuple[str, Digits, Digits]
) -> None:
    url, (train_images, train_labels), (test_images, test_labels) = mirror
    dest = tmp_path / "mnist"
    messages: list[str] = []
    counts = write_mnist_folders(dest, mirror=url, allowed_hosts=["127.0.0.1"], log=messages.append)
    assert counts == {"train": 600, "test": 100, "origin": url}
    assert (dest / "train" / "labels.txt").read_text().split() == [str(d) for d in range(10)]
    for phase, images, labels in (
        ("train", train_images, train_labels),
        ("test", test_images, test_labels),
    ):
        pngs = sorted((dest / phase).glob("*/*.png"))
        assert len(pngs) == len(images)
        for digit in range(10):
            assert len(list((dest / phase / str(digit)).glob("*.png"))) == (labels == digit).sum()
        for index in (0, 17, len(images) - 1):
            path = dest / phase / str(labels[index]) / f"{index:05d}.png"
            np.testing.assert_array_equal(np.asarray(Image.open(path)), images[index])
        lines = (dest / phase / f"{phase}.txt").read_text().splitlines()
        assert lines[3] == f"{dest / phase / str(labels[3]) / '00003.png'} {labels[3]}"
    assert any("wrote 600 train and 100 test" in m for m in messages)


def test_redirect_to_a_host_not_allowed_is_refused(mirror: tuple[str, Digits, Digits]) -> None:
    url = mirror[0]
    with pytest.raises(DownloadError, match="evil.example.invalid.*not in the allowed hosts"):
        fetch(url + "redirect/train-images-idx3-ubyte.gz", ["127.0.0.1"])
    assert fetch(url + "train-labels-idx1-ubyte.gz", ["127.0.0.1"])[:2] == b"\x1f\x8b"


def test_mirror_host_must_be_allowed_and_size_capped(mirror: tuple[str, Digits, Digits]) -> None:
    url = mirror[0]
    with pytest.raises(DownloadError, match="not in the allowed hosts"):
        fetch(url + "t10k-labels-idx1-ubyte.gz", ["storage.googleapis.com"])
    with pytest.raises(DownloadError, match="only http and https"):
        fetch("file:///etc/passwd", ["127.0.0.1", ""])
    with pytest.raises(DownloadError, match="over 100 bytes"):
        fetch(url + "train-images-idx3-ubyte.gz", ["127.0.0.1"], max_bytes=100)


# --------------------------------------------------------------------------- offline fallback


def test_failed_download_falls_back_to_the_shipped_digits(mnist_arrays: Digits) -> None:
    messages: list[str] = []
    unreachable = f"http://127.0.0.1:{closed_port()}/mnist/"
    data = load_mnist(unreachable, ["127.0.0.1"], log=messages.append, timeout=5)
    assert data.origin == "shipped mnist10k.npz"
    assert len(messages) == 1 and "MNIST download failed" in messages[0]
    assert "shipped" in messages[0]
    images, labels = mnist_arrays
    assert len(data.test_images) == 1666 and len(data.train_images) == 8334
    np.testing.assert_array_equal(data.test_images[0], images[5])  # every sixth: 5, 11, 17...
    np.testing.assert_array_equal(data.train_images[5], images[6])
    assert set(np.unique(data.test_labels)) == set(range(10))
    messages.clear()
    refused = load_mnist("https://mirror.example.invalid/", ["127.0.0.1"], log=messages.append)
    assert refused.origin == "shipped mnist10k.npz"
    assert "not in the allowed hosts" in messages[0]


def test_shipped_copy_matches_the_shared_data(mnist_arrays: Digits) -> None:
    with np.load(SHIPPED_NPZ, allow_pickle=False) as shipped:
        np.testing.assert_array_equal(shipped["images"], mnist_arrays[0])
        np.testing.assert_array_equal(shipped["labels"], mnist_arrays[1])
    readme = (SHIPPED_NPZ.parent / "README.md").read_text()
    assert "MIT" in readme and "mnist10k.npz" in readme


def test_command_writes_offline_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "out"
    assert main([str(dest), "--offline"]) == 0
    assert len(list((dest / "train").glob("*/*.png"))) == 8334
    assert len(list((dest / "test").glob("*/*.png"))) == 1666
    assert main([str(dest), "--offline"]) == 1
    assert "use --force" in capsys.readouterr().err
    (dest / "train" / "0" / "stale.png").write_bytes(b"old")
    assert main([str(dest), "--offline", "--force"]) == 0
    assert not (dest / "train" / "0" / "stale.png").exists()
