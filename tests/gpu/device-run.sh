#!/bin/sh
# On the lent GPU machine (docs/testing.md, "GPU"), from the repository root, with .gpu/ from
# `make gpu-pack` carried along: the CUDA tests, then the GPU benchmark; figures under $OUT.
# The machine has torch and the other dependencies but no package index: the wheel goes in alone.
set -u
: "${OUT:=/tmp/gpu-out}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/stylefu-*.whl
export PYTHONPATH=/tmp/site STYLEFU_CACHE=/tmp/stylefu-cache TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.txt" 2>&1
timeout "${TEST_SECONDS:-150}" python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    > "$OUT/test_cuda.txt" 2>&1
echo "test_cuda: exit $? ($(tail -1 "$OUT/test_cuda.txt"))"
timeout "${BENCH_SECONDS:-330}" python3 tests/bench_gpu.py --model .gpu/model.onnx --out "$OUT" "$@"
echo "bench_gpu: exit $?"
