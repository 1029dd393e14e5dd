#!/usr/bin/env bash
# The training step's fast paths on one GPU, in under 8 minutes: ResNet-18 at 224 px, batch 256,
# with AMP off, bf16 and fp16, then bf16 with channels-last, then that compiled; ResNet-20 at
# CIFAR's 32 px with AMP off and bf16; first, JPEG decode per loader core against `--decode gpu`'s
# batched decode, crop and flip on the GPU (bench/decode.py, csg.data.device_decode). One summary line per variant (`decode:`, `steps:`) goes
# to the file named by $1 (default bench-gpu.txt), the full output to that name plus .log.
#
#   bench/gpu.sh /tmp/gpu.txt
#
# Needs only PyTorch, scikit-learn (the decode's sample photographs) and the project's files (run
# from a checkout, nothing installed): it times steps, not Ray, so it runs on a bare GPU machine
# as well as on a cluster node. A variant that fails leaves a FAILED line and the rest still run.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-bench-gpu.txt}")
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
: > "$out"
: > "$out.log"

steps() {
    "$python" bench/train.py --device cuda --steps-only "$@" 2>&1 | tee -a "$out.log" | grep '^steps:' >> "$out" \
        || echo "steps: FAILED $*" >> "$out"
}

"$python" bench/decode.py --device cuda 2>&1 | tee -a "$out.log" | grep '^decode:' >> "$out" \
    || echo "decode: FAILED" >> "$out"
for amp in off bf16 fp16; do
    steps --model resnet18 --image-size 224 --batch-size 256 --amp "$amp"
done
steps --model resnet18 --image-size 224 --batch-size 256 --amp bf16 --channels-last
steps --model resnet18 --image-size 224 --batch-size 256 --amp bf16 --channels-last --compile --warmup 3 --steps 10
for amp in off bf16; do
    steps --model resnet20 --image-size 32 --batch-size 256 --amp "$amp"
done
cat "$out"
