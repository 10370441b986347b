#!/usr/bin/env bash
# STARS on a Cloud TPU VM pod slice: create it, copy this checkout, install, and run the same
# command on every worker (JAX's distributed runtime joins them; process 0 writes the logs).
#
#   TPU_NAME=stars-v5e-32 ZONE=us-west4-a TYPE=v5litepod-32 VERSION=v2-alpha-tpuv5-lite \
#   BUCKET=gs://my-bucket/stars bash launch/tpu_pod.sh configs/cifar10.py [--config.x=...]
#
# Needs: gcloud (authenticated, project set), a bucket for the workdir, and the teacher's
# model directory and data readable on every worker (copied below from ./teachers and $DATA).
set -euo pipefail
CONFIG=${1:?usage: bash launch/tpu_pod.sh CONFIG [--config.x=...]}; shift
: "${TPU_NAME:?}" "${ZONE:?}" "${TYPE:?}" "${VERSION:?}" "${BUCKET:?}"
DATA=${DATA:-../shared/data/cifar10-jpeg}
RUN=${RUN:-$(date +%Y%m%d-%H%M%S)}
ssh_all() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$1"; }

if ! gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone "$ZONE" >/dev/null 2>&1; then
  gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" --accelerator-type "$TYPE" \
    --version "$VERSION"
fi
tar czf /tmp/stars_jax_src.tgz --exclude=.venv --exclude=workdirs --exclude=.git .
gcloud compute tpus tpu-vm scp /tmp/stars_jax_src.tgz "$TPU_NAME":~/ --zone "$ZONE" --worker=all
gcloud compute tpus tpu-vm scp --recurse "$DATA" "$TPU_NAME":~/data --zone "$ZONE" --worker=all
ssh_all "mkdir -p stars && tar xzf stars_jax_src.tgz -C stars && cd stars && \
  pip install -q 'jax[tpu]' -e . gcsfs"
ssh_all "cd stars && python3 -m stars_jax.main --config $CONFIG --workdir $BUCKET/$RUN \
  --config.data.path=\$HOME/data $*"
echo "Results: $BUCKET/$RUN (summary.json, metrics.jsonl). Delete the slice when done:"
echo "  gcloud compute tpus tpu-vm delete $TPU_NAME --zone $ZONE"
