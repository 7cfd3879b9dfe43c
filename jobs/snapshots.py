"""Model snapshots: the files a training job writes at each snapshot interval, and reading them.

A snapshot is a folder (an object-store prefix, `models/<id>/snapshots/epoch-NNNN/`, or a Ray
Train checkpoint directory) holding:
- `model.safetensors`: the weights (the unwrapped module's state dict), loadable with
  safetensors alone;
- `network.json`: everything needed to rebuild the network and feed it (`NetworkInfo`: the
  resolved network definition, input channels/height/width, stored image size, class count
  and labels, mean subtraction and crop);
- `mean.npy`: the mean image the model was trained with (when mean subtraction is on);
- `state.pt`: the resume state (optimizer, scheduler, epoch, iteration, seed, metric-history
  position), plain tensors and containers only, read with `torch.load(weights_only=True)`.
`state.pt` is written last, so a snapshot is complete once it exists. `pretrained/<id>/` has the
same layout without `state.pt`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ConfigDict, Field
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from jobs import layout
from jobs.specs import MeanSubtraction, NetworkSpec, SpecModel
from jobs.storage import ObjectNotFound, ObjectStore

MODEL_FILE = "model.safetensors"
NETWORK_FILE = "network.json"
MEAN_FILE = "mean.npy"
STATE_FILE = "state.pt"
FILES_IN_ORDER = (MODEL_FILE, NETWORK_FILE, MEAN_FILE, STATE_FILE)
FORMAT_VERSION = 1


class NetworkInfo(SpecModel):
    """network.json: how to rebuild a snapshot's network and prepare its input."""

    model_config = ConfigDict(extra="ignore")

    format: int = FORMAT_VERSION
    network: NetworkSpec = Field(description="Resolved definition: standard or custom")
    channels: int = Field(description="Network input channels")
    height: int = Field(description="Network input height (after any crop)")
    width: int = Field(description="Network input width (after any crop)")
    image_height: int = Field(description="Stored dataset image height")
    image_width: int = Field(description="Stored dataset image width")
    classes: int
    labels: list[str] = Field(default_factory=list)
    mean_subtraction: MeanSubtraction = MeanSubtraction.NONE
    crop_size: int | None = None
    epoch: float | None = None
    model_id: str | None = None
    dataset_id: str | None = None


def model_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of `model` (unwrapped from DDP) as contiguous CPU tensors."""
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def encode_snapshot(
    weights: dict[str, torch.Tensor],
    info: NetworkInfo,
    state: dict[str, Any] | None,
    mean: np.ndarray | None,
) -> dict[str, bytes]:
    """A snapshot's files as bytes, by file name."""
    files = {
        MODEL_FILE: save_safetensors(weights, metadata={"format": "pt"}),
        NETWORK_FILE: json.dumps(info.to_json_dict(), indent=2, sort_keys=True).encode(),
    }
    if mean is not None:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(mean, dtype=np.float32), allow_pickle=False)
        files[MEAN_FILE] = buffer.getvalue()
    if state is not None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        files[STATE_FILE] = buffer.getvalue()
    return files


def put_snapshot(store: ObjectStore, prefix: str, files: dict[str, bytes]) -> None:
    """Upload a snapshot's files; state.pt last, so readers never see half a snapshot."""
    for name in FILES_IN_ORDER:
        if name in files:
            store.put_bytes(f"{prefix}{name}", files[name])


def get_snapshot(store: ObjectStore, prefix: str) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for name in FILES_IN_ORDER:
        try:
            files[name] = store.get_bytes(f"{prefix}{name}")
        except ObjectNotFound:
            continue
    if MODEL_FILE not in files or NETWORK_FILE not in files:
        raise FileNotFoundError(f"{prefix} is not a snapshot (needs {MODEL_FILE}, {NETWORK_FILE})")
    return files


def write_snapshot_dir(path: Path, files: dict[str, bytes]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name in FILES_IN_ORDER:
        if name in files:
            (path / name).write_bytes(files[name])


def read_snapshot_dir(path: Path) -> dict[str, bytes]:
    return {name: (path / name).read_bytes() for name in FILES_IN_ORDER if (path / name).is_file()}


def decode_weights(files: dict[str, bytes]) -> dict[str, torch.Tensor]:
    return load_safetensors(files[MODEL_FILE])


def decode_info(files: dict[str, bytes]) -> NetworkInfo:
    return NetworkInfo.model_validate_json(files[NETWORK_FILE])


def decode_state(files: dict[str, bytes]) -> dict[str, Any]:
    """The resume state, unpickled with weights_only=True (plain tensors and containers)."""
    state = torch.load(io.BytesIO(files[STATE_FILE]), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError("state.pt does not hold a dict")
    return state


def decode_mean(files: dict[str, bytes]) -> np.ndarray | None:
    if MEAN_FILE not in files:
        return None
    return np.asarray(np.load(io.BytesIO(files[MEAN_FILE]), allow_pickle=False))


def list_snapshots(store: ObjectStore, model_id: str) -> list[tuple[float, str]]:
    """Complete snapshots of a model as (epoch, prefix), oldest first."""
    root = f"{layout.model_prefix(model_id)}snapshots/"
    found: list[tuple[float, str]] = []
    for key in store.list(root):
        rest = key[len(root) :]
        label, _, name = rest.partition("/")
        epoch = layout.parse_epoch_label(label)
        if name == STATE_FILE and epoch is not None:
            found.append((epoch, f"{root}{label}/"))
    return sorted(found)


def latest_snapshot(store: ObjectStore, model_id: str) -> tuple[float, str] | None:
    snapshots = list_snapshots(store, model_id)
    return snapshots[-1] if snapshots else None


def load_model(
    files: dict[str, bytes], allow_custom_python: bool = False
) -> tuple[nn.Module, NetworkInfo]:
    """Rebuild a snapshot's network from network.json and load its weights (eval mode)."""
    from jobs.networks import build_network

    info = decode_info(files)
    model = build_network(
        info.network, info.channels, info.height, info.width, info.classes, allow_custom_python
    )
    model.load_state_dict(decode_weights(files))
    model.eval()
    return model, info
