#!/usr/bin/env bash
# benchmarks/step_time.py on one GPU (written for an H200), in about 6 minutes of wall time.
#
#   OUT=/some/dir PYTHONPATH=. bash benchmarks/gpu_run.sh          # from the repository root
#   SMOKE=1 OUT=/tmp/out PYTHONPATH=. bash benchmarks/gpu_run.sh   # tiny settings, any machine
#
# Needs python3 with fajax's dependencies (`pip install -e .`: jax with CUDA, flax, optax,
# ml_collections, ...; torch for the peer); no TensorFlow or network. Three parts, each its own
# process under its own time limit, so one slow part cannot take the others down; each rewrites
# its JSON after every model, so a part cut short keeps the models it finished:
#   1. mnist_net, cifar10_arch1, resnet20: every rule, float32, batch 256, PyTorch peer on CUDA.
#   2. resnet18 at 224x224, batch 256, bfloat16, every rule.
#   3. imagenet_arch2 (AlexNet with batch norm) at 224x224, batch 256, bfloat16, if time is left.
# Then merges the parts into $OUT/step_time_gpu.{json,md}. Files in $OUT (flat, 7 at most):
#   step_time_gpu.json, step_time_gpu.md, part_small.json, part_resnet18.json,
#   part_alexnet.json, gpu_run.log, nvidia_smi.txt
# Copy step_time_gpu.{json,md} to benchmarks/results/ afterwards.
set -u
: "${OUT:?set OUT to the folder the results go to}"
PY="${PYTHON:-python3}"
SMOKE="${SMOKE:-0}"
TOTAL="${TOTAL_SECONDS:-345}"  # the whole script's budget (the machine's cap is 600 s).
mkdir -p "$OUT"
LOG="$OUT/gpu_run.log"
export PYTHONPATH="${PYTHONPATH:-.}"
# Leave GPU memory to the PyTorch peer, which runs in the same process as JAX.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}"
export TF_CPP_MIN_LOG_LEVEL=2
START=$(date +%s)
left() { echo $((TOTAL - ($(date +%s) - START))); }

{
  echo "gpu_run.sh start $(date -Is) SMOKE=$SMOKE TOTAL=$TOTAL"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
  "$PY" -c "import jax, flax, optax; print('jax', jax.__version__, jax.devices())" 2>&1
  "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())" 2>&1
} >>"$LOG" 2>&1
nvidia-smi >"$OUT/nvidia_smi.txt" 2>&1 || true
# Fail fast (seconds, not minutes of device time) if fajax cannot be imported here.
if ! "$PY" -c "import benchmarks.step_time, benchmarks.torch_peer" >>"$LOG" 2>&1; then
  echo "preflight: fajax does not import with $PY; see $LOG" | tee -a "$LOG"
  tail -n 30 "$LOG"
  exit 1
fi

if [ "$SMOKE" = "1" ]; then
  SMALL=(--models mnist_net,resnet20 --rules bp,fa,usf,dfa --batch 4 --rounds 1
    --steps_per_measure 1 --warmup 1 --peer_rules bp,fa)
  BIG=(--models resnet18 --rules bp,fa --batch 2 --image_size 32 --rounds 1
    --steps_per_measure 1 --warmup 1 --dtype bfloat16)
  ALEX=(--models imagenet_arch2 --rules bp,fa --batch 2 --image_size 64 --rounds 1
    --steps_per_measure 1 --warmup 1 --dtype bfloat16)
  LIMITS=(300 200 150)
  TOTAL="${TOTAL_SECONDS:-900}"
else
  SMALL=(--models mnist_net,cifar10_arch1,resnet20 --batch 256 --rounds 7
    --steps_per_measure 10 --warmup 3 --compile_threads 8 --peer_rules bp,fa,usf,brsf,frsf)
  BIG=(--models resnet18 --batch 256 --image_size 224 --dtype bfloat16 --rounds 5
    --steps_per_measure 5 --warmup 2 --compile_threads 8 --max_feedback_gb 16)
  ALEX=(--models imagenet_arch2 --batch 256 --image_size 224 --dtype bfloat16 --rounds 5
    --steps_per_measure 5 --warmup 2 --compile_threads 8 --max_feedback_gb 16)
  LIMITS=(140 150 100)
fi

run_part() {  # name, time limit, args...
  local name=$1 limit=$2
  shift 2
  local budget
  budget=$(left)
  if [ "$budget" -lt 40 ]; then
    echo "== $name skipped: $budget s left" >>"$LOG"
    return
  fi
  [ "$limit" -gt "$budget" ] && limit=$budget
  echo "== $name (limit ${limit}s, $(left)s left): $*" >>"$LOG"
  timeout --signal=TERM --kill-after=10 "$limit" \
    "$PY" -m benchmarks.step_time "$@" --out "$OUT/part_$name" >>"$LOG" 2>&1
  echo "== $name exit $? after $(($(date +%s) - START))s" >>"$LOG"
  rm -f "$OUT/part_$name.md"  # the merged table has it.
}

has_rows() { [ -s "$1" ] && grep -q '"rule"' "$1"; }

run_part small "${LIMITS[0]}" "${SMALL[@]}"
run_part resnet18 "${LIMITS[1]}" "${BIG[@]}" --peer none
if ! has_rows "$OUT/part_small.json"; then
  # Part 1 died before finishing a model (e.g. torch and jax clashing over CUDA): again without
  # the peer, in the time AlexNet would have had.
  echo "== part_small has no results: rerunning it without the PyTorch peer" >>"$LOG"
  run_part small "${LIMITS[2]}" "${SMALL[@]}" --peer none
elif [ "$(left)" -gt 70 ]; then
  run_part alexnet "${LIMITS[2]}" "${ALEX[@]}" --peer none
else
  echo "== alexnet skipped: $(left)s left" >>"$LOG"
fi

"$PY" -m benchmarks.step_time --merge "$OUT/part_small.json" "$OUT/part_resnet18.json" \
  "$OUT/part_alexnet.json" --out "$OUT/step_time_gpu" >>"$LOG" 2>&1
echo "gpu_run.sh end after $(($(date +%s) - START))s" >>"$LOG"
grep -E "^(==|gpu_run|jax|torch|\[)" "$LOG"
cat "$OUT/step_time_gpu.md"
