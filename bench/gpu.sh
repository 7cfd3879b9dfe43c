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

usable() { "$1" -c 'import torch, ray.train, safetensors, pydantic_settings; assert torch.cuda.is_available()'; }
# A GPU machine without internet: the Python packages it lacks can come as a tarball of a
# `pip install --target` tree (KDIGITS_SITE_TARBALL), unpacked onto PYTHONPATH.
if [ -n "${KDIGITS_SITE_TARBALL:-}" ]; then
  mkdir -p /tmp/kdigits-site && tar -xJf "$KDIGITS_SITE_TARBALL" -C /tmp/kdigits-site \
    || { echo "RESULT case=setup failed=unpack"; exit 1; }
  export PYTHONPATH=/tmp/kdigits-site${PYTHONPATH:+:$PYTHONPATH}
fi
PY=.venv/bin/python
[ -x "$PY" ] && usable "$PY" 2>/dev/null || PY=python3
usable "$PY" || { echo "RESULT case=setup failed=imports"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import torch, ray; print("torch", torch.__version__, "ray", ray.__version__)'

status=0
LOGS=${KDIGITS_LOG_DIR:-/tmp}
run_case() {
  local label=$1; shift
  echo "== $label"
  timeout "${KDIGITS_CASE_TIMEOUT:-150}" "$PY" bench/train_lenet.py --gpu --cpus 4 --label "$label" "$@" \
    >"$LOGS/gpu_$label.log" 2>&1
  local rc=$?
  grep -E '^(RESULT|job:|  reference|training job|dataset built|  done)' "$LOGS/gpu_$label.log"
  if [ $rc -ne 0 ]; then
    tail -n 25 "$LOGS/gpu_$label.log"
    echo "RESULT case=$label failed=$rc"
    status=1
  fi
}
run_case lenet_fp32 --epochs 10
run_case lenet_amp --epochs 10 --mixed-precision
run_case resnet18_fp32 --network resnet18 --synthetic 3x64x64 --images 20000 --epochs 3 --batch-size 256
run_case resnet18_amp --network resnet18 --synthetic 3x64x64 --images 20000 --epochs 3 --batch-size 256 --mixed-precision
exit $status
