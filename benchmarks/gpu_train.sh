#!/usr/bin/env bash
# Paper-schedule training throughput on one CUDA GPU, through the real `egnet train` path.
#
#   benchmarks/gpu_train.sh                 # 200 iterations: ResNet-101, stride 8, batch 14, 300x300, bf16
#   ITERS=50 benchmarks/gpu_train.sh        # shorter
#   CPU_SMOKE=1 benchmarks/gpu_train.sh     # no GPU: tiny settings, checks the script end to end
#
# Steps: synthetic NightCity-format data (1024x512) -> official split -> `egnet train`
# (profile paper, ImageNet weights off: nothing to download) with validation and
# checkpoints pushed past the end -> benchmarks/bench_train.py report: ms/iter and
# images/s (median of the 10-iteration log windows after the first two, which hold
# cudnn autotuning), peak memory (torch.cuda.max_memory_allocated) and MFU (FLOPs of
# a training step counted by FlopCounterMode / time / the GPU's dense bf16 peak).
# Budget: about 1 min of data, well under a minute of training on an H100; < 5 min total.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
ITERS=${ITERS:-200}
WORK=${WORK:-$(mktemp -d -t egnet-gpu-bench-XXXXXX)}
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db"
export PYTHONUNBUFFERED=1

if [ "${CPU_SMOKE:-0}" = "1" ]; then
    ITERS=${ITERS_SMOKE:-6}
    SIZE=256x128 NUM=20
    EXTRA=(--set data.image_size=[256,128] --set model.backbone=resnet18 --set model.output_stride=32
           --set train.batch_size=2 --set train.crop_size=64 --set train.eval_size=[128,64]
           --set train.workers=0 --set train.log_every=1)
    SKIP=1
else
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device (CPU_SMOKE=1 for a CPU check)')"
    SIZE=1024x512 NUM=48
    CORES=$(nproc)
    WORKERS=$(( CORES > 2 ? CORES - 2 : 1 ))   # 14 decoded 1024x512 PNGs per step: feed the GPU
    EXTRA=(--set train.workers=$WORKERS --set train.log_every=10)
    SKIP=2
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
fi

echo "== data ($NUM synthetic scenes, $SIZE) in $WORK"
t0=$(date +%s)
"$PY" -m egnet.cli data synth --out "$WORK/data" --num "$NUM" --seed 0 --size "$SIZE" >/dev/null
"$PY" -m egnet.cli data split "$WORK/data" --out "$WORK/split" --set "data.image_size=[${SIZE%x*},${SIZE#*x}]" >/dev/null
echo "   $(( $(date +%s) - t0 )) s"

echo "== egnet train, $ITERS iterations"
t0=$(date +%s)
"$PY" -m egnet.cli train --data "$WORK/data" --split "$WORK/split" --out "$WORK/train" --no-resume \
    --profile paper \
    --set model.backbone_weights=none \
    --set train.iterations="$ITERS" \
    --set train.val_every=1000000 --set train.val_max_images=1 \
    --set train.checkpoint_every=1000000 \
    "${EXTRA[@]}" 2>&1 | grep -v -E "mlflow\.(store|tracking|system_metrics)" | tail -n 5
echo "   $(( $(date +%s) - t0 )) s wall (start-up, a one-image validation and the final checkpoint included)"

echo "== result"
"$PY" benchmarks/bench_train.py report "$WORK/train/train_summary.json" --skip-windows "$SKIP"
