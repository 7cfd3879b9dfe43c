"""Object-store layout: the one place that knows where each artifact lives.

```
datasets/<id>/spec.json labels.txt stats.json mean.npy mean.png events.jsonl
datasets/<id>/<split>/shard-00000.safetensors
models/<id>/spec.json events.jsonl labels.txt
models/<id>/snapshots/epoch-0003/model.safetensors state.pt network.json
pretrained/<id>/model.safetensors network.json labels.txt mean.npy info.json
```
`<id>` is the object's uid, so a deleted and re-created name never sees old data.
`stats.json` is written last by a dataset build: a dataset without it is not complete.
"""

from __future__ import annotations

import re

SPLITS = ("train", "val", "test")


def dataset_prefix(dataset_id: str) -> str:
    return f"datasets/{_check_id(dataset_id)}/"


def model_prefix(model_id: str) -> str:
    return f"models/{_check_id(model_id)}/"


def pretrained_prefix(pretrained_id: str) -> str:
    return f"pretrained/{_check_id(pretrained_id)}/"


def shard_key(dataset_id: str, split: str, index: int) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    return f"{dataset_prefix(dataset_id)}{split}/shard-{index:05d}.safetensors"


def epoch_label(epoch: float) -> str:
    """`epoch-0003` for whole epochs, `epoch-0002.5` for fractional snapshot intervals."""
    whole = int(epoch)
    if abs(epoch - whole) < 1e-9:
        return f"epoch-{whole:04d}"
    return f"epoch-{whole:04d}.{f'{epoch - whole:.4f}'[2:].rstrip('0')}"


def parse_epoch_label(label: str) -> float | None:
    match = re.fullmatch(r"epoch-(\d{4,})(?:\.(\d+))?", label)
    if match is None:
        return None
    return float(f"{int(match.group(1))}.{match.group(2) or '0'}")


def snapshot_prefix(model_id: str, epoch: float) -> str:
    return f"{model_prefix(model_id)}snapshots/{epoch_label(epoch)}/"


def _check_id(object_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", object_id) or ".." in object_id:
        raise ValueError(f"invalid object id {object_id!r}")
    return object_id
