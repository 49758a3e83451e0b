#!/usr/bin/env bash
# Run one fajax experiment on a Cloud TPU VM: a single host (v4-8, v5e-8, ...) or a pod slice.
#
#   TPU=my-tpu ZONE=us-central2-b bash launch/tpu_vm.sh setup
#   TPU=my-tpu ZONE=us-central2-b bash launch/tpu_vm.sh run experiments/resnet18.py:usf_sn gs://bucket/r18/usf_sn
#   TPU=my-tpu ZONE=us-central2-b bash launch/tpu_vm.sh sweep experiments/resnet18.py gs://bucket/r18
#
# On a pod slice every host runs the same command (--worker=all); config.distributed=True makes
# each process join the run (JAX finds the other hosts of a Cloud TPU slice by itself), read only
# its own part of every global batch and join the global mesh. The workdir must be shared
# storage (gs://...): process 0 writes metrics, run files and TensorBoard events there, and every
# process writes its shards of each checkpoint. Data: a tfds data_dir in the same bucket
# (--config.data_dir=gs://bucket/tfds).
#
# Preemption: on SIGTERM (a maintenance event) or SIGINT the trainer finishes the current step,
# saves it and exits with status 75; this script then runs the same command again, which resumes
# from that checkpoint (at most RETRIES times, default 20). Any other status ends the script.
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
REPO="${REPO:-https://github.com/fajax/fajax}"
PREEMPTED=75  # fajax.train.preemption.EXIT_CODE
ssh_all() { gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="$1"; }

# Runs "$@" again while it exits with the preemption status.
requeue() {
  local tries=0 status
  while true; do
    status=0
    "$@" || status=$?
    if [[ $status -ne $PREEMPTED ]] || ((++tries > ${RETRIES:-20})); then
      return "$status"
    fi
    echo "tpu_vm.sh: preempted (exit status $PREEMPTED); resuming, try $tries." >&2
  done
}

case "${1:-}" in
  setup)
    ssh_all "git clone $REPO fajax 2>/dev/null || (cd fajax && git pull); cd fajax && \
      pip install -e '.[tfds,gcs]' 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
    ;;
  run)
    config="${2:?config file[:row]}"; workdir="${3:?workdir, e.g. gs://bucket/run}"; shift 3
    requeue ssh_all "cd fajax && python -m launch.main --config=$config --workdir=$workdir \
      --config.distributed=True $*"
    ;;
  sweep)
    # One run after another on the whole slice: launch.sweep --emit_commands prints them.
    config="${2:?config file}"; workdir="${3:?workdir}"; shift 3
    python -m launch.sweep --config="$config" --workdir="$workdir" --emit_commands "$@" |
      while read -r command; do
        requeue ssh_all "cd fajax && $command --config.distributed=True"
      done
    ;;
  *)
    echo "usage: TPU=... ZONE=... $0 setup | run CONFIG WORKDIR [flags] | sweep CONFIG WORKDIR [flags]" >&2
    exit 2
    ;;
esac
