#!/usr/bin/env bash
# Run fajax on multi-GPU hosts: one process per host drives every local GPU (the mesh's 'data'
# axis spans all GPUs of all hosts; parameters are replicated, the batch is split).
#
#   bash launch/gpu_host.sh setup
#   bash launch/gpu_host.sh run experiments/cifar10_arch2.py:usf_sn /data/runs/c10a2/usf_sn
#   bash launch/gpu_host.sh sweep experiments/resnet20.py /data/runs/r20
#
# Pick GPUs with CUDA_VISIBLE_DEVICES. Data: --config.data_dir=/data/tensorflow_datasets.
#
# Several hosts by hand: run the same command on every host with the coordinator (host 0 and a
# free port), the number of hosts and this host's index, and a workdir all hosts share:
#   host0$ JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 \
#            bash launch/gpu_host.sh run experiments/resnet20.py:bp gs://bucket/r20/bp
#   host1$ JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 \
#            bash launch/gpu_host.sh run experiments/resnet20.py:bp gs://bucket/r20/bp
# With these variables set the script adds --config.distributed=True. Under SLURM (one task per
# host, e.g. srun --ntasks-per-node=1) set none of them: JAX reads the allocation; pass
# --config.distributed=True yourself.
#
# Preemption: on SIGTERM or SIGINT the trainer finishes the current step, saves it and exits
# with status 75. Inside a SLURM job this script then requeues the job (scontrol requeue), whose
# rerun resumes from that checkpoint; elsewhere it exits with 75: run the same command again.
# SLURM: sbatch --requeue --signal=TERM@120 (SIGTERM 2 minutes before the time limit, to the job
# steps) with `srun bash launch/gpu_host.sh run ...` in the batch script.
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-true}"
PREEMPTED=75  # fajax.train.preemption.EXIT_CODE

distributed=()
if [[ -n "${JAX_COORDINATOR_ADDRESS:-}${JAX_NUM_PROCESSES:-}${JAX_PROCESS_ID:-}" ]]; then
  distributed=(--config.distributed=True)
fi

# Runs "$@"; on the preemption status requeues the SLURM job, if any; exits with the status.
# This shell ignores SIGTERM, so that it outlives the trainer (which sets its own handler while
# training) and sees the status.
requeue_on_preemption() {
  local status=0
  trap '' TERM
  "$@" || status=$?
  if [[ $status -eq $PREEMPTED && -n "${SLURM_JOB_ID:-}" && "${SLURM_PROCID:-0}" == 0 ]]; then
    echo "gpu_host.sh: preempted; requeueing SLURM job $SLURM_JOB_ID." >&2
    scontrol requeue "$SLURM_JOB_ID"
  fi
  exit "$status"
}

case "${1:-}" in
  setup)
    pip install -e '.[tfds,gcs]' 'jax[cuda12]'
    ;;
  run)
    config="${2:?config file[:row]}"; workdir="${3:?workdir}"; shift 3
    requeue_on_preemption python -m launch.main --config="$config" --workdir="$workdir" \
      ${distributed[@]+"${distributed[@]}"} "$@"
    ;;
  sweep)
    config="${2:?config file}"; workdir="${3:?workdir}"; shift 3
    requeue_on_preemption python -m launch.sweep --config="$config" --workdir="$workdir" \
      ${distributed[@]+"${distributed[@]}"} "$@"
    ;;
  *)
    echo "usage: $0 setup | run CONFIG WORKDIR [flags] | sweep CONFIG WORKDIR [flags]" >&2
    exit 2
    ;;
esac
