#!/usr/bin/env bash
# Run fajax on a multi-GPU host: one process drives every local GPU (the mesh's 'data' axis spans
# them; parameters are replicated, the batch is split).
#
#   bash launch/gpu_host.sh setup
#   bash launch/gpu_host.sh run experiments/cifar10_arch2.py:usf_sn /data/runs/c10a2/usf_sn
#   bash launch/gpu_host.sh sweep experiments/resnet20.py /data/runs/r20
#
# Pick GPUs with CUDA_VISIBLE_DEVICES. Data: --config.data_dir=/data/tensorflow_datasets.
# Several hosts: run the same command on each with --config.distributed=True and the
# coordinator set as jax.distributed expects (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
# JAX_PROCESS_ID, or a SLURM allocation, which JAX detects).
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-true}"

case "${1:-}" in
  setup)
    pip install -e '.[tfds]' 'jax[cuda12]'
    ;;
  run)
    config="${2:?config file[:row]}"; workdir="${3:?workdir}"; shift 3
    python launch/main.py --config="$config" --workdir="$workdir" "$@"
    ;;
  sweep)
    config="${2:?config file}"; workdir="${3:?workdir}"; shift 3
    python launch/sweep.py --config="$config" --workdir="$workdir" "$@"
    ;;
  *)
    echo "usage: $0 setup | run CONFIG WORKDIR [flags] | sweep CONFIG WORKDIR [flags]" >&2
    exit 2
    ;;
esac
