"""MNIST as DIGITS' `download_data mnist` wrote it: PNG folders ready for a folder dataset.

`write_mnist_folders(DIR)` writes `DIR/train/<digit>/00000.png ...` and `DIR/test/<digit>/...`,
plus DIGITS' `DIR/<phase>/labels.txt` and `DIR/<phase>/<phase>.txt` (`path label` lines, usable
as a textfile source). The digits come from the classic MNIST idx files
(`train-images-idx3-ubyte.gz` ...) downloaded from a mirror (`--mirror` or
`KDIGITS_MNIST_MIRROR`), fetched only from allowed hosts (`KDIGITS_ALLOWED_URL_HOSTS`, comma-
separated; by default the known mirrors' hosts), redirects included, with size caps. When the
download fails (offline, say) it falls back, with a message, to the 10,000 digits the project
ships in `jobs/data/mnist10k.npz` (see jobs/data/README.md), split deterministically: every
sixth digit goes to test. `main(argv)` is the `kdigits data mnist DIR` command.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.client import HTTPMessage
from pathlib import Path
from typing import IO
from urllib.parse import urljoin, urlparse

import numpy as np
from PIL import Image

DEFAULT_MIRROR = "https://storage.googleapis.com/cvdf-datasets/mnist/"
DEFAULT_ALLOWED_HOSTS = (
    "storage.googleapis.com",
    "ossci-datasets.s3.amazonaws.com",
    "yann.lecun.com",
)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SHIPPED_NPZ = Path(__file__).resolve().parent / "data" / "mnist10k.npz"
TEST_EVERY = 6  # shipped digits: index % 6 == 5 goes to test (1/6, every class)
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
MAX_IDX_BYTES = 128 * 1024 * 1024
MAX_IDX_DIMS = 4
DOWNLOAD_TIMEOUT_S = 15.0

_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxError(ValueError):
    """The bytes are not a well-formed idx file."""


class DownloadError(OSError):
    """The download was refused or failed."""


@dataclass(frozen=True)
class MnistData:
    """Digits per phase (uint8 [N, 28, 28] and uint8 labels) and where they came from."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    origin: str


def parse_idx(data: bytes) -> np.ndarray:
    """An idx file (LeCun's MNIST format): zero, zero, type, rank, big-endian dims, values."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IdxError("not an idx file (bad magic number)")
    dtype = _IDX_TYPES.get(data[2])
    if dtype is None:
        raise IdxError(f"unknown idx element type 0x{data[2]:02x}")
    rank = data[3]
    if not 1 <= rank <= MAX_IDX_DIMS:
        raise IdxError(f"idx rank {rank} out of range 1..{MAX_IDX_DIMS}")
    header = 4 + 4 * rank
    if len(data) < header:
        raise IdxError("idx header is truncated")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=rank, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if expected > MAX_IDX_BYTES:
        raise IdxError(f"idx data of {expected} bytes is over the {MAX_IDX_BYTES}-byte cap")
    if len(data) - header != expected:
        raise IdxError(f"idx body is {len(data) - header} bytes, dims {dims} need {expected}")
    return (
        np.frombuffer(data, dtype=dtype, offset=header)
        .reshape(dims)
        .astype(dtype.newbyteorder("="))
    )


def gunzip_capped(data: bytes, max_bytes: int = MAX_IDX_BYTES) -> bytes:
    """Decompress gzip data, refusing output over `max_bytes` (a gzip bomb)."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            out = stream.read(max_bytes + 1)
    except (OSError, EOFError) as error:
        raise IdxError(f"bad gzip data: {error}") from None
    if len(out) > max_bytes:
        raise IdxError(f"decompressed data over {max_bytes} bytes")
    return out


def allowed_hosts_from_env() -> tuple[str, ...]:
    """`KDIGITS_ALLOWED_URL_HOSTS` (comma or space separated), else the known mirrors."""
    raw = os.environ.get("KDIGITS_ALLOWED_URL_HOSTS", "")
    hosts = tuple(h.strip().lower() for h in raw.replace(",", " ").split() if h.strip())
    return hosts or DEFAULT_ALLOWED_HOSTS


def check_url(url: str, allowed_hosts: Sequence[str]) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise DownloadError(f"{url}: only http and https URLs are fetched")
    host = (parsed.hostname or "").lower()
    if host not in {h.lower() for h in allowed_hosts}:
        raise DownloadError(f"{url}: host {host!r} is not in the allowed hosts")


class _GuardedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to an allowed host."""

    def __init__(self, allowed_hosts: Sequence[str]) -> None:
        self.allowed_hosts = allowed_hosts

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        check_url(newurl, self.allowed_hosts)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch(
    url: str,
    allowed_hosts: Sequence[str],
    max_bytes: int = MAX_DOWNLOAD_BYTES,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> bytes:
    """The body at `url`, from an allowed host only, at most `max_bytes` long."""
    check_url(url, allowed_hosts)
    opener = urllib.request.build_opener(_GuardedRedirects(allowed_hosts))
    try:
        with opener.open(url, timeout=timeout) as response:
            body: bytes = response.read(max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise DownloadError(f"{url}: {error}") from None
    if len(body) > max_bytes:
        raise DownloadError(f"{url}: over {max_bytes} bytes")
    return body


def download_mnist(
    mirror: str, allowed_hosts: Sequence[str], timeout: float = DOWNLOAD_TIMEOUT_S
) -> MnistData:
    """The full MNIST (60,000 train, 10,000 test) from the idx files at `mirror`."""
    base = mirror if mirror.endswith("/") else mirror + "/"
    arrays: dict[str, np.ndarray] = {}
    for phase, (images_name, labels_name) in IDX_FILES.items():
        for kind, name in (("images", images_name), ("labels", labels_name)):
            body = fetch(urljoin(base, name), allowed_hosts, timeout=timeout)
            arrays[f"{phase}_{kind}"] = parse_idx(gunzip_capped(body))
    for phase in IDX_FILES:
        images, labels = arrays[f"{phase}_images"], arrays[f"{phase}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise IdxError(f"{phase}: images {images.shape} and labels {labels.shape} disagree")
        if images.dtype != np.uint8 or labels.dtype != np.uint8 or labels.max(initial=0) > 9:
            raise IdxError(f"{phase}: expected uint8 images and labels 0..9")
    return MnistData(
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
        origin=base,
    )


def shipped_mnist(path: Path = SHIPPED_NPZ) -> MnistData:
    """The 10,000 digits the project ships, 1/6 of them (every sixth) as the test set."""
    with np.load(path, allow_pickle=False) as data:
        images, labels = data["images"], data["labels"]
    test = np.arange(len(images)) % TEST_EVERY == TEST_EVERY - 1
    return MnistData(
        images[~test], labels[~test], images[test], labels[test], origin=f"shipped {path.name}"
    )


def load_mnist(
    mirror: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    offline: bool = False,
    log: Callable[[str], None] = print,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> MnistData:
    """Download MNIST; on any failure (or offline) fall back to the shipped digits."""
    if not offline:
        mirror = mirror or os.environ.get("KDIGITS_MNIST_MIRROR") or DEFAULT_MIRROR
        hosts = allowed_hosts if allowed_hosts is not None else allowed_hosts_from_env()
        try:
            return download_mnist(mirror, hosts, timeout=timeout)
        except (DownloadError, IdxError) as error:
            log(f"MNIST download failed ({error}); using the 10,000 digits shipped with kdigits")
    return shipped_mnist()


def write_phase(dest: Path, phase: str, images: np.ndarray, labels: np.ndarray) -> int:
    """`dest/<phase>/<digit>/<index>.png`, labels.txt and `<phase>.txt`, as DIGITS wrote them."""
    out = dest / phase
    for digit in range(10):
        (out / str(digit)).mkdir(parents=True, exist_ok=True)
    (out / "labels.txt").write_text("".join(f"{digit}\n" for digit in range(10)))
    lines: list[str] = []
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = out / str(int(label)) / f"{index:05d}.png"
        Image.fromarray(image).save(path, format="PNG")
        lines.append(f"{path} {int(label)}\n")
    (out / f"{phase}.txt").write_text("".join(lines))
    return len(lines)


def write_mnist_folders(
    dest: Path,
    *,
    mirror: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    offline: bool = False,
    force: bool = False,
    data: MnistData | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, int | str]:
    """Write MNIST under `dest`; returns {"train": n, "test": n, "origin": where from}."""
    dest = dest.expanduser().resolve()
    for phase in IDX_FILES:
        target = dest / phase
        if target.exists() and any(target.iterdir()):
            if not force:
                raise FileExistsError(f"{target} exists and is not empty (use --force)")
            shutil.rmtree(target)
    if data is None:
        data = load_mnist(mirror, allowed_hosts, offline, log)
    counts: dict[str, int | str] = {
        "train": write_phase(dest, "train", data.train_images, data.train_labels),
        "test": write_phase(dest, "test", data.test_images, data.test_labels),
        "origin": data.origin,
    }
    log(f"wrote {counts['train']} train and {counts['test']} test digits under {dest}")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """`kdigits data mnist DIR`: exit 0 on success, 1 when DIR cannot be written."""
    parser = argparse.ArgumentParser(
        prog="kdigits data mnist", description="Write MNIST as DIR/train and DIR/test folders."
    )
    parser.add_argument("dir", type=Path, help="destination folder")
    parser.add_argument(
        "--mirror",
        default=None,
        help=f"base URL of the idx files (default: KDIGITS_MNIST_MIRROR, else {DEFAULT_MIRROR})",
    )
    parser.add_argument(
        "--offline", action="store_true", help="skip the download, use the shipped digits"
    )
    parser.add_argument("--force", action="store_true", help="replace DIR/train and DIR/test")
    args = parser.parse_args(argv)
    try:
        write_mnist_folders(args.dir, mirror=args.mirror, offline=args.offline, force=args.force)
    except (OSError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
