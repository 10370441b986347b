#!/usr/bin/env bash
# STARS on one machine with several GPUs: one process drives every local GPU (the mesh spans
# all of them; batches must be divisible by the GPU count).
#
#   bash launch/multi_gpu.sh configs/cifar10.py [--config.x=...]
#   CUDA_VISIBLE_DEVICES=0,1 bash launch/multi_gpu.sh configs/cifar10.py   # a subset
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:?usage: bash launch/multi_gpu.sh CONFIG [--config.x=...]}; shift
WORKDIR=${WORKDIR:-workdirs/$(basename "$CONFIG" .py)}
if [ ! -d .venv ]; then
  python3 -m venv .venv && . .venv/bin/activate && pip install -q -e . "jax[cuda12]"
fi
. .venv/bin/activate
nvidia-smi -L || true
python -m stars_jax.main --config "$CONFIG" --workdir "$WORKDIR" "$@"
