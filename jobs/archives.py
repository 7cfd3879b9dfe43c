"""Importing an uploaded pretrained model safely: archives checked whole before any extraction.

Users upload pretrained models as an archive (tar, tar.gz or zip, e.g. a kdigits download) or
as loose files (weights, a network name or layer list, labels.txt, the image type and size).
Both become a `pretrained/<id>/` prefix in the snapshot layout (jobs.export.write_pretrained).

An archive is scanned member by member before a single byte is extracted: no absolute path, no
`..`, no backslash or NUL, no symlink, hard link, device, FIFO or sparse member, no duplicate
names, at most `max_members` members, each at most `max_member_bytes`, all together at most
`max_total_bytes` uncompressed, and no zip member compressed more than `max_ratio` to one (zip
bombs). Only the known files are then extracted, under fixed names into a private temporary
folder, with the byte counts enforced again while copying (a lying header cannot overrun).

Weights are safetensors, or a torch state dict read with `torch.load(weights_only=True)` (a file
carrying any other pickled object is refused) and converted to safetensors. Nothing is written
to the store until the network has been rebuilt (on the `meta` device: no memory, no compute)
and every weight matched its name and shape.
"""

from __future__ import annotations

import io
import json
import pickle
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from jobs.export import INFO_FORMAT, pretrained_spec, versions, write_pretrained
from jobs.inference import INFO_FILE, LABELS_FILE, encode_npy
from jobs.networks import NetworkInputError, build_network, network_defaults
from jobs.snapshots import MEAN_FILE, MODEL_FILE, NETWORK_FILE, NetworkInfo
from jobs.specs import (
    ImageSpec,
    Layer,
    MeanSubtraction,
    NetworkSpec,
    PretrainedModelSpec,
    ResizeMode,
)
from jobs.storage import ObjectStore
from jobs.transforms import mean_tensor

MiB = 1024 * 1024
TORCH_WEIGHT_FILES = ("model.pt", "model.pth")
WANTED = (MODEL_FILE, *TORCH_WEIGHT_FILES, NETWORK_FILE, LABELS_FILE, MEAN_FILE, INFO_FILE)
COPY_CHUNK = MiB


class ArchiveRejected(ValueError):
    """The upload is unsafe or unusable; the message names the member or field and why."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_archive_bytes: int = 2048 * MiB
    max_members: int = 64
    max_member_bytes: int = 1024 * MiB
    max_total_bytes: int = 2048 * MiB
    max_ratio: float = 100.0  # uncompressed / compressed, for zip members over ratio_min_bytes
    ratio_min_bytes: int = MiB
    max_text_bytes: int = 16 * MiB  # labels.txt, network.json, info.json


DEFAULT_ARCHIVE_LIMITS = ArchiveLimits()


@dataclass(frozen=True)
class Member:
    name: str  # the checked, normalised path inside the archive
    size: int


# --------------------------------------------------------------------------- scanning


def check_member_name(name: str) -> str:
    """The member's normalised relative path, or ArchiveRejected."""
    if not name or "\x00" in name or "\\" in name:
        raise ArchiveRejected(f"member {name!r}: empty name, NUL or backslash")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveRejected(f"member {name!r}: absolute path")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveRejected(f"member {name!r}: contains '..' (path traversal)")
    if not parts:
        raise ArchiveRejected(f"member {name!r}: empty path")
    return "/".join(parts)


class _Tally:
    """Counts members and bytes against the limits as the scan goes."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.count = 0
        self.total = 0
        self.files: dict[str, Member] = {}

    def member(self) -> None:
        self.count += 1
        if self.count > self.limits.max_members:
            raise ArchiveRejected(f"archive: more than {self.limits.max_members} members")

    def file(self, name: str, size: int) -> None:
        if size > self.limits.max_member_bytes:
            raise ArchiveRejected(
                f"member {name!r}: {size} bytes, more than the "
                f"{self.limits.max_member_bytes} allowed"
            )
        self.total += size
        if self.total > self.limits.max_total_bytes:
            raise ArchiveRejected(
                f"archive: more than the {self.limits.max_total_bytes} bytes allowed uncompressed"
            )
        if name in self.files:
            raise ArchiveRejected(f"member {name!r}: appears twice")
        self.files[name] = Member(name, size)


def _tar_kind(member: tarfile.TarInfo) -> str | None:
    """Why a tar member is refused (its type), or None for a regular file or directory."""
    if member.issym():
        return "a symbolic link"
    if member.islnk():
        return "a hard link"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a FIFO"
    if member.issparse():
        return "a sparse file"
    if not (member.isfile() or member.isdir()):
        return "not a regular file"
    return None


def scan_tar(source: IO[bytes], limits: ArchiveLimits) -> dict[str, Member]:
    """Every member of a tar (plain or compressed) checked; the regular files by name."""
    tally = _Tally(limits)
    try:
        with tarfile.open(fileobj=source, mode="r:*") as archive:
            while (member := archive.next()) is not None:
                tally.member()
                name = check_member_name(member.name)
                kind = _tar_kind(member)
                if kind is not None:
                    raise ArchiveRejected(f"member {member.name!r}: is {kind}")
                if member.isfile():
                    tally.file(name, member.size)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ArchiveRejected(f"archive: not a readable tar archive ({error})") from None
    return tally.files


def _zip_kind(info: zipfile.ZipInfo) -> str | None:
    if info.flag_bits & 0x1:
        return "encrypted"
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode:  # made on Unix: the high bits are st_mode
        if stat.S_ISLNK(mode):
            return "a symbolic link"
        kind = stat.S_IFMT(mode)
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            return "not a regular file"
    return None


def scan_zip(source: IO[bytes], limits: ArchiveLimits) -> dict[str, Member]:
    """Every entry of a zip's central directory checked; the regular files by name."""
    tally = _Tally(limits)
    try:
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                tally.member()
                name = check_member_name(info.filename)
                kind = _zip_kind(info)
                if kind is not None:
                    raise ArchiveRejected(f"member {info.filename!r}: is {kind}")
                if info.is_dir():
                    continue
                if info.file_size > limits.ratio_min_bytes:
                    ratio = info.file_size / max(1, info.compress_size)
                    if ratio > limits.max_ratio:
                        raise ArchiveRejected(
                            f"member {info.filename!r}: compressed {ratio:.0f} to 1, more than "
                            f"{limits.max_ratio:.0f} to 1 (a zip bomb?)"
                        )
                tally.file(name, info.file_size)
    except zipfile.BadZipFile as error:
        raise ArchiveRejected(f"archive: not a readable zip archive ({error})") from None
    return tally.files


def archive_format(source: IO[bytes]) -> str:
    """`zip` or `tar` from the first bytes (gzip, bzip2 and xz tars included)."""
    head = source.read(262)
    source.seek(0)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ")) or head[257:262] == b"ustar":
        return "tar"
    raise ArchiveRejected("archive: not a tar, tar.gz or zip file")


def _check_tar_ratio(source: IO[bytes], total: int, limits: ArchiveLimits) -> None:
    """A compressed tar whose members add up to far more than its own size: a gzip bomb."""
    packed = max(1, source.seek(0, io.SEEK_END))
    source.seek(0)
    if total > limits.ratio_min_bytes and total / packed > limits.max_ratio:
        raise ArchiveRejected(
            f"archive: {packed} bytes unpacking to {total}, compressed {total / packed:.0f} to 1, "
            f"more than {limits.max_ratio:.0f} to 1 (a compression bomb?)"
        )


def _select(files: dict[str, Member]) -> dict[str, str]:
    """Known file name -> member path: at the top level, or all under one top folder."""
    tops = {name.split("/", 1)[0] for name in files}
    root = ""
    if len(tops) == 1 and all("/" in name for name in files):
        root = next(iter(tops)) + "/"
    chosen: dict[str, str] = {}
    for wanted in WANTED:
        if root + wanted in files:
            chosen[wanted] = root + wanted
    return chosen


def _copy_capped(source: IO[bytes], dest: Path, limit: int, what: str) -> None:
    copied = 0
    with dest.open("xb") as out:
        while chunk := source.read(COPY_CHUNK):
            copied += len(chunk)
            if copied > limit:
                raise ArchiveRejected(f"member {what!r}: holds more bytes than its header says")
            out.write(chunk)


def extract_checked(source: IO[bytes], limits: ArchiveLimits, folder: Path) -> dict[str, Path]:
    """Scan the whole archive, then extract only the known files under fixed names."""
    fmt = archive_format(source)
    files = scan_tar(source, limits) if fmt == "tar" else scan_zip(source, limits)
    if fmt == "tar":
        _check_tar_ratio(source, sum(m.size for m in files.values()), limits)
    chosen = _select(files)
    source.seek(0)
    out: dict[str, Path] = {}
    wanted = {path: name for name, path in chosen.items()}
    try:
        if fmt == "zip":
            with zipfile.ZipFile(source) as archive:
                for path, name in wanted.items():
                    with archive.open(path) as member:
                        _copy_capped(member, folder / name, files[path].size, path)
                    out[name] = folder / name
        else:
            with tarfile.open(fileobj=source, mode="r:*") as archive:
                for entry in archive:
                    path = check_member_name(entry.name)
                    if path not in wanted or not entry.isfile():
                        continue
                    handle = archive.extractfile(entry)
                    if handle is None:
                        raise ArchiveRejected(f"member {entry.name!r}: cannot be read")
                    with handle:
                        _copy_capped(handle, folder / wanted[path], files[path].size, path)
                    out[wanted[path]] = folder / wanted[path]
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as error:
        raise ArchiveRejected(f"archive: extraction failed ({error})") from None
    return out


# --------------------------------------------------------------------------- contents


def load_weights(data: bytes, name: str) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from torch.save output with weights_only=True."""
    if len(data) > 8 and data[8:9] == b"{":
        try:
            return dict(load_safetensors(data))
        except (SafetensorError, ValueError) as error:
            raise ArchiveRejected(f"{name}: not a valid safetensors file ({error})") from None
    if not data.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip, or a bare pickle
        raise ArchiveRejected(f"{name}: not safetensors or a torch state dict")
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ArchiveRejected(
            f"{name}: refused, it holds objects other than tensors and plain containers "
            f"(read with torch.load(weights_only=True): {_refusal(error)})"
        ) from None
    except (RuntimeError, ValueError, EOFError, OSError) as error:
        raise ArchiveRejected(f"{name}: not safetensors or a torch state dict ({error})") from None
    return _state_dict(loaded, name)


def _refusal(error: pickle.UnpicklingError) -> str:
    """The line of torch's weights_only message that says what was refused."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (useful or lines or ["unsupported content"])[0][:300]


def _state_dict(loaded: Any, name: str) -> dict[str, torch.Tensor]:
    if isinstance(loaded, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not loaded:
        raise ArchiveRejected(f"{name}: does not hold a state dict (name -> tensor)")
    weights: dict[str, torch.Tensor] = {}
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ArchiveRejected(f"{name}: entry {str(key)[:100]!r} is not a named tensor")
        weights[key] = value
    if all(key.startswith("module.") for key in weights):  # saved from DDP
        weights = {key[len("module.") :]: value for key, value in weights.items()}
    return weights


def safetensors_bytes(weights: dict[str, torch.Tensor]) -> bytes:
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}
    return save_safetensors(plain, metadata={"format": "pt"})


def _meta_network(info: NetworkInfo, classes: int, allow_custom_python: bool) -> torch.nn.Module:
    try:
        with torch.device("meta"):
            return build_network(
                info.network, info.channels, info.height, info.width, classes, allow_custom_python
            )
    except NetworkInputError as error:
        raise ArchiveRejected(f"network: {error}") from None


def infer_classes(
    info: NetworkInfo, weights: dict[str, torch.Tensor], allow_custom_python: bool
) -> int | None:
    """The class count the weights were made for (the outputs of the layers that depend on
    it), or None when the weights do not tell (they do not fit this network at all)."""
    probe = _meta_network(info.model_copy(update={"classes": 1}), 1, allow_custom_python)
    sizes = {
        int(weights[k].shape[0])
        for k, v in probe.state_dict().items()
        if k in weights and weights[k].ndim >= 1 and tuple(weights[k].shape) != tuple(v.shape)
    }
    if len(sizes) > 1:
        return None
    return sizes.pop() if sizes else 1


def check_weights(
    info: NetworkInfo, weights: dict[str, torch.Tensor], allow_custom_python: bool
) -> None:
    """The network rebuilt on the meta device must take every weight by name and shape."""
    own = _meta_network(info, info.classes, allow_custom_python).state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = [
        f"{k} {list(weights[k].shape)} (needs {list(own[k].shape)})"
        for k in own
        if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)
    ]
    problems = [
        f"{label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
        if items
    ]
    if problems:
        raise ArchiveRejected("weights: do not fit the network (" + "; ".join(problems) + ")")


def parse_labels(data: bytes, limit: int) -> list[str]:
    if len(data) > limit:
        raise ArchiveRejected(f"labels.txt: more than {limit} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ArchiveRejected("labels.txt: not UTF-8 text") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_mean(data: bytes, info: NetworkInfo) -> np.ndarray:
    try:
        mean = np.asarray(np.load(io.BytesIO(data), allow_pickle=False), dtype=np.float32)
    except (ValueError, OSError, EOFError) as error:
        raise ArchiveRejected(f"mean.npy: not a numeric .npy array ({error})") from None
    mode = info.mean_subtraction
    try:
        mean_tensor(
            mean,
            mode if mode != MeanSubtraction.NONE else MeanSubtraction.IMAGE,
            info.channels,
            info.image_height,
            info.image_width,
        )
    except ValueError as error:
        raise ArchiveRejected(f"mean.npy: {error}") from None
    return mean


def _read_text(path: Path, limit: int, what: str) -> bytes:
    if path.stat().st_size > limit:
        raise ArchiveRejected(f"{what}: more than {limit} bytes")
    return path.read_bytes()


# --------------------------------------------------------------------------- importing


def _finish(
    store: ObjectStore,
    pretrained_id: str,
    info: NetworkInfo,
    weights_bytes: bytes,
    labels: list[str],
    mean: np.ndarray | None,
    image: ImageSpec,
    source: dict[str, Any],
) -> PretrainedModelSpec:
    if labels and len(labels) != info.classes:
        raise ArchiveRejected(
            f"labels.txt: {len(labels)} labels but the network has {info.classes} outputs"
        )
    if info.mean_subtraction != MeanSubtraction.NONE and mean is None:
        raise ArchiveRejected(
            f"mean.npy: the network subtracts the {info.mean_subtraction.value} mean, but no "
            "mean.npy was given"
        )
    info = info.model_copy(update={"labels": labels})
    files = {
        MODEL_FILE: weights_bytes,
        NETWORK_FILE: json.dumps(info.to_json_dict(), indent=2, sort_keys=True).encode(),
        LABELS_FILE: ("\n".join(labels) + "\n").encode() if labels else b"",
    }
    if mean is not None and info.mean_subtraction != MeanSubtraction.NONE:
        files[MEAN_FILE] = encode_npy(mean)
    info_json = {
        "format": INFO_FORMAT,
        "source": source,
        "image": image.to_json_dict(),
        "labels": labels,
        "createdAt": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    try:
        write_pretrained(store, pretrained_id, files, info_json)
    except ValueError as error:
        raise ArchiveRejected(str(error)) from None
    return pretrained_spec(info, image, labels)


def import_pretrained_archive(
    store: ObjectStore,
    archive: bytes | Path,
    pretrained_id: str,
    *,
    filename: str = "",
    limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS,
    allow_custom_python: bool = False,
) -> PretrainedModelSpec:
    """An uploaded archive (a kdigits download, or the same files) as `pretrained/<id>/`."""
    size = len(archive) if isinstance(archive, bytes) else archive.stat().st_size
    if size > limits.max_archive_bytes:
        raise ArchiveRejected(
            f"archive: {size} bytes, more than the {limits.max_archive_bytes} allowed"
        )
    opened: IO[bytes] = io.BytesIO(archive) if isinstance(archive, bytes) else archive.open("rb")
    with opened as source, tempfile.TemporaryDirectory(prefix="kdigits-upload-") as folder:
        found = extract_checked(source, limits, Path(folder))
        if NETWORK_FILE not in found:
            raise ArchiveRejected("archive: has no network.json")
        try:
            info = NetworkInfo.model_validate_json(
                _read_text(found[NETWORK_FILE], limits.max_text_bytes, NETWORK_FILE)
            )
        except ValidationError as error:
            raise ArchiveRejected(f"network.json: {_first_error(error)}") from None
        weights_name = next((n for n in (MODEL_FILE, *TORCH_WEIGHT_FILES) if n in found), None)
        if weights_name is None:
            raise ArchiveRejected("archive: has no model.safetensors (or model.pt)")
        weights = load_weights(found[weights_name].read_bytes(), weights_name)
        check_weights(info, weights, allow_custom_python)
        labels = list(info.labels)
        if LABELS_FILE in found:
            labels = parse_labels(found[LABELS_FILE].read_bytes(), limits.max_text_bytes)
        mean = parse_mean(found[MEAN_FILE].read_bytes(), info) if MEAN_FILE in found else None
        image = _archive_image(info, found, limits)
        weights_bytes = (
            found[MODEL_FILE].read_bytes()
            if weights_name == MODEL_FILE
            else safetensors_bytes(weights)
        )
    return _finish(
        store, pretrained_id, info, weights_bytes, labels, mean, image,
        {"upload": filename or "archive", "weights": weights_name},
    )  # fmt: skip


def _archive_image(info: NetworkInfo, found: dict[str, Path], limits: ArchiveLimits) -> ImageSpec:
    """The image spec: network.json's type and size, info.json's resize mode when it has one."""
    mode = ResizeMode.SQUASH
    if INFO_FILE in found:
        try:
            recorded = json.loads(_read_text(found[INFO_FILE], limits.max_text_bytes, INFO_FILE))
            mode = ResizeMode(recorded.get("image", {}).get("resizeMode", "squash"))
        except (ValueError, AttributeError):
            raise ArchiveRejected("info.json: image.resizeMode is not a resize mode") from None
    return ImageSpec(
        channels=1 if info.channels == 1 else 3,
        width=info.image_width,
        height=info.image_height,
        resize_mode=mode,
    )


def network_from(value: str | Sequence[Layer] | NetworkSpec) -> NetworkSpec:
    """A network name (`lenet`, `resnet18`), a JSON layer list, or a NetworkSpec."""
    try:
        if isinstance(value, NetworkSpec):
            spec = value
        elif isinstance(value, str) and value.strip().startswith("["):
            layers = [Layer.model_validate(item) for item in json.loads(value)]
            spec = NetworkSpec.model_validate({"custom": {"layers": layers}})
        elif isinstance(value, str):
            spec = NetworkSpec(standard=value.strip())
        else:
            spec = NetworkSpec.model_validate({"custom": {"layers": list(value)}})
    except (ValidationError, ValueError) as error:
        raise ArchiveRejected(f"network: {_short(error)}") from None
    if spec.standard is None and spec.custom is None:
        raise ArchiveRejected("network: give a standard network name or a layer list")
    return spec


def import_pretrained_files(
    store: ObjectStore,
    pretrained_id: str,
    *,
    weights: bytes,
    weights_filename: str,
    network: str | Sequence[Layer] | NetworkSpec,
    image: ImageSpec,
    labels_text: bytes = b"",
    mean: bytes | None = None,
    mean_subtraction: MeanSubtraction | None = None,
    crop_size: int | None = None,
    limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS,
    allow_custom_python: bool = False,
) -> PretrainedModelSpec:
    """Loose uploaded files (DIGITS' pretrained-model form) as `pretrained/<id>/`."""
    if len(weights) > limits.max_member_bytes:
        raise ArchiveRejected(f"weights: more than {limits.max_member_bytes} bytes")
    spec = network_from(network)
    if crop_size is None:
        default = network_defaults(spec).crop_size
        crop_size = default if default and default <= min(image.width, image.height) else None
    elif crop_size > min(image.width, image.height):
        raise ArchiveRejected(f"cropSize: {crop_size} is larger than the image")
    mode = mean_subtraction or (MeanSubtraction.IMAGE if mean else MeanSubtraction.NONE)
    side = crop_size
    info = NetworkInfo(
        network=spec,
        channels=image.channels,
        height=side or image.height,
        width=side or image.width,
        image_height=image.height,
        image_width=image.width,
        classes=1,
        mean_subtraction=mode,
        crop_size=crop_size,
    )
    state = load_weights(weights, weights_filename or "weights")
    labels = parse_labels(labels_text, limits.max_text_bytes)
    inferred = infer_classes(info, state, allow_custom_python)
    classes = inferred or len(labels) or 1
    if labels and len(labels) != classes:
        raise ArchiveRejected(
            f"labels.txt: {len(labels)} labels but the network has {classes} outputs"
        )
    info = info.model_copy(update={"classes": classes})
    check_weights(info, state, allow_custom_python)
    mean_array = parse_mean(mean, info) if mean else None
    return _finish(
        store, pretrained_id, info, safetensors_bytes(state), labels, mean_array, image,
        {"upload": weights_filename or "weights"},
    )  # fmt: skip


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg', '')}" if where else str(first.get("msg", ""))


def _short(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return _first_error(error)
    return str(error).splitlines()[0][:300] if str(error) else type(error).__name__
