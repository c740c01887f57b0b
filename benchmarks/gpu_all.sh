#!/usr/bin/env bash
# Every GPU number of docs/performance.md in one go: the 2D and image training steps against the
# pass-by-pass reference, in fp32 and bf16, with torch.compile / CUDA graphs, and K stacked 2D runs.
# Sized to finish in about 8 minutes on one H100/H200 (each part has its own time limit).
#
#   bash benchmarks/gpu_all.sh [OUT_DIR]     # from the repository root; logs go to OUT_DIR
#                                           # (default: $OUT if set, else gpu-results/)
set -u -o pipefail
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

part() {  # part NAME SECONDS ARGS...: one benchmark, its output shown and kept in OUT_DIR/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date -u +%Y-%m-%dT%H:%M:%SZ)): $py $*" | tee "$out/$name.txt"
    timeout "$limit" "$py" "$@" 2>&1 | tee -a "$out/$name.txt"
    echo "=== $name exit status ${PIPESTATUS[0]}" | tee -a "$out/$name.txt"
}

{
    date -u +%Y-%m-%dT%H:%M:%SZ
    git rev-parse HEAD 2>/dev/null || true
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    "$py" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"
} | tee "$out/machine.txt"

# 2D (MLP 4x256, batch 512): reference vs optimized, fp32 and bf16; networks compiled with CUDA
# graphs (reduce-overhead); 60 stacked runs (the run count of Table 2) as one batched model.
part 2d 200 benchmarks/train_step_2d.py --device cuda --precisions fp32,bf16-mixed --runs 60 \
    --compile reduce-overhead --seconds 2 --rounds 3
# 2D with 12 stacked runs: where the batched model's gain starts.
part 2d-runs12 90 benchmarks/train_step_2d.py --device cuda --precisions fp32 --runs 12 --seconds 1 --rounds 3
# Image architectures the presets ship, at the batch sizes people train with, both layouts.
part images 200 benchmarks/train_step_images.py --device cuda --archs cifar10,mnist,fmnist-small \
    --batch-sizes 32,128,256 --precisions fp32,bf16-mixed --seconds 1 --rounds 3
# CelebA 256 (the celeba256 preset's networks) at its batch size 8 and at 32.
part celeba256 90 benchmarks/train_step_images.py --device cuda --archs celeba256 --batch-sizes 8,32 \
    --precisions fp32,bf16-mixed --seconds 1 --rounds 2
# torch.compile on the image networks (one architecture and batch: compiling takes a while).
part images-compiled 120 benchmarks/train_step_images.py --device cuda --archs cifar10 --batch-sizes 128 \
    --precisions bf16-mixed --compile max-autotune-no-cudagraphs --seconds 1 --rounds 2
echo "logs in $out"
