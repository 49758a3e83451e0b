#!/usr/bin/env bash
# Run one fajax experiment on a Cloud TPU VM: a single host (v4-8, v5e-8, ...) or a pod slice.
#
#   TPU=my-tpu ZONE=us-central2-b bash launch/tpu_vm.sh setup
#   TPU=my-tpu ZONE=us-central2-b bash launch/tpu_vm.sh run experiments/resnet18.py:usf_sn gs://bucket/r18/usf_sn
#   TPU=my-tpu ZONE=us-central2-b bash launch/tpu_vm.sh sweep experiments/resnet18.py gs://bucket/r18
#
# On a pod slice every host runs the same command (--worker=all); config.distributed=True makes
# each process call jax.distributed.initialize(), read only its own shard of the training data and
# join the global mesh. The workdir must be shared storage (gs://...) so every host sees the
# checkpoints. Data: a tfds data_dir in the same bucket (--config.data_dir=gs://bucket/tfds).
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
REPO="${REPO:-https://github.com/fajax/fajax}"
ssh_all() { gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="$1"; }

case "${1:-}" in
  setup)
    ssh_all "git clone $REPO fajax 2>/dev/null || (cd fajax && git pull); cd fajax && \
      pip install -e '.[tfds]' 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
    ;;
  run)
    config="${2:?config file[:row]}"; workdir="${3:?workdir, e.g. gs://bucket/run}"; shift 3
    ssh_all "cd fajax && python launch/main.py --config=$config --workdir=$workdir \
      --config.distributed=True $*"
    ;;
  sweep)
    # One run after another on the whole slice: launch/sweep.py --emit_commands prints them.
    config="${2:?config file}"; workdir="${3:?workdir}"; shift 3
    python launch/sweep.py --config="$config" --workdir="$workdir" --emit_commands "$@" |
      while read -r command; do
        ssh_all "cd fajax && $command --config.distributed=True"
      done
    ;;
  *)
    echo "usage: TPU=... ZONE=... $0 setup | run CONFIG WORKDIR [flags] | sweep CONFIG WORKDIR [flags]" >&2
    exit 2
    ;;
esac
