#!/usr/bin/env bash
# Paper-schedule training throughput on CUDA GPUs, through the real `egnet train` path.
#
#   benchmarks/gpu_train.sh                 # 200 iterations: ResNet-101, stride 8, batch 14, 300x300, bf16
#   ITERS=50 benchmarks/gpu_train.sh        # shorter
#   CPU_SMOKE=1 benchmarks/gpu_train.sh     # no GPU: tiny settings, runs every step of the script end to end
#   benchmarks/gpu_train.sh --set train.compile=true   # arguments go to both `egnet train` runs
#
# Steps: synthetic NightCity-format data (1024x512) -> official split -> `egnet train`
# (profile paper, ImageNet weights off: nothing to download) with validation and
# checkpoints pushed past the end -> with two GPUs or more, the same training over 2
# processes (torchrun, NCCL) at the same per-process batch (global 28) -> the report
# (benchmarks/bench_train.py report):
#   ms/iter and images/s   median of the log windows after the first two (cudnn autotuning)
#   peak memory            torch.cuda.max_memory_allocated
#   MFU                    FLOPs of a training step (FlopCounterMode) / time / the GPU's dense bf16 peak
#   data wait              fraction of step time the training process waited for the loader's next batch
#   DDP share              1 - ms/iter(1 process) / ms/iter(2 processes): the communication (gradient
#                          all-reduce, SyncBatchNorm) that does not overlap the backward pass
#   inference              images/s of the trained network at the paper protocol, 1024x512 -> 900x900
#                          -> logits back to 1024x512, batch 1, bf16 (decode excluded)
# Loader workers: train.workers auto (the cores per GPU minus one).
# Budget on an H100: about 1 min of data, a minute or two of training per run; < 6 min total.
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
    BATCH=2
    EXTRA=(--set data.image_size=[256,128] --set model.backbone=resnet18 --set model.output_stride=32
           --set train.crop_size=64 --set train.eval_size=[128,64] --set evaluate.infer_size=[128,64]
           --set train.workers=0 --set train.log_every=1)
    SKIP=1
    DDP_PROCS=2            # gloo on CPU: the figure means nothing, the path runs
    INFER=(--infer-iterations 2 --infer-warmup 1)
else
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device (CPU_SMOKE=1 for a CPU check)')"
    SIZE=1024x512 NUM=48
    BATCH=14
    EXTRA=(--set train.log_every=10)
    SKIP=2
    DDP_PROCS=$("$PY" -c "import torch; print(2 if torch.cuda.device_count() >= 2 else 0)")
    INFER=()
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
fi

echo "== data ($NUM synthetic scenes, $SIZE) in $WORK"
t0=$(date +%s)
"$PY" -m egnet.cli data synth --out "$WORK/data" --num "$NUM" --seed 0 --size "$SIZE" >/dev/null
"$PY" -m egnet.cli data split "$WORK/data" --out "$WORK/split" --set "data.image_size=[${SIZE%x*},${SIZE#*x}]" >/dev/null
echo "   $(( $(date +%s) - t0 )) s"

COMMON=(--data "$WORK/data" --split "$WORK/split" --no-resume --profile paper
        --set model.backbone_weights=none --set train.iterations="$ITERS"
        --set train.val_every=1000000 --set train.val_max_images=1 --set train.checkpoint_every=1000000
        "${EXTRA[@]}" "$@")
quiet() { { grep -v -E "mlflow\.(store|tracking|system_metrics)|^ *$" || true; } | tail -n 5; }

echo "== egnet train, 1 process, batch $BATCH, $ITERS iterations"
t0=$(date +%s)
"$PY" -m egnet.cli train --out "$WORK/train" "${COMMON[@]}" --set train.batch_size=$BATCH 2>&1 | quiet
echo "   $(( $(date +%s) - t0 )) s wall (start-up and the final checkpoint included)"

DDP=()
if [ "$DDP_PROCS" = "2" ]; then
    echo "== egnet train, 2 processes, batch $(( 2 * BATCH )) ($BATCH per process), $ITERS iterations"
    t0=$(date +%s)
    "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m egnet.cli train --out "$WORK/train2" \
        "${COMMON[@]}" --set train.batch_size=$(( 2 * BATCH )) 2>&1 | quiet
    echo "   $(( $(date +%s) - t0 )) s wall"
    DDP=(--ddp "$WORK/train2/train_summary.json")
else
    echo "== DDP share: skipped (one GPU; it needs two)"
fi

echo "== result"
"$PY" benchmarks/bench_train.py report "$WORK/train/train_summary.json" --skip-windows "$SKIP" \
    "${DDP[@]}" --infer "${INFER[@]}"
