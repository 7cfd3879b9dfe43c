#!/usr/bin/env bash
# GPU benchmark, one call, offline, under 8 minutes on one H100/H200: the training job
# (python -m jobs.train through the Ray Jobs API, bench/train_lenet.py) against a plain PyTorch
# loop on the same GPU, with and without mixed precision (bf16 autocast), for
#   - LeNet on the 10,000 MNIST digits (built by the dataset job, 28x28x1, batch 64), and
#   - ResNet-18 on 20,000 synthetic 3x64x64 images (written straight to the store, batch 256).
# Prints one `RESULT case=... val_accuracy=... images_per_s=... reference_images_per_s=...
# ratio=...` line per case; record them with the card's name in bench/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
export RAY_USAGE_STATS_ENABLED=0

usable() { "$1" -c 'import torch, ray.train, safetensors, pydantic; assert torch.cuda.is_available()' 2>/dev/null; }
PY=.venv/bin/python
if ! usable "$PY"; then
  if usable python3; then
    PY=python3
  else
    echo "installing the venv (make install; pip uses PIP_FIND_LINKS when offline)" >&2
    make install >/dev/null || { echo "RESULT case=setup failed=install"; exit 1; }
    PY=.venv/bin/python
  fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import torch, ray; print("torch", torch.__version__, "ray", ray.__version__)'

status=0
run_case() {
  local label=$1; shift
  echo "== $label"
  timeout 170 "$PY" bench/train_lenet.py --gpu --cpus 4 --label "$label" "$@" 2>&1 \
    | grep -E '^(RESULT|job:|  reference|training job|dataset built|  done)' \
    || { echo "RESULT case=$label failed=1"; status=1; }
}
run_case lenet_fp32 --epochs 10
run_case lenet_amp --epochs 10 --mixed-precision
run_case resnet18_fp32 --network resnet18 --synthetic 3x64x64 --images 20000 --epochs 3 --batch-size 256
run_case resnet18_amp --network resnet18 --synthetic 3x64x64 --images 20000 --epochs 3 --batch-size 256 --mixed-precision
exit $status
