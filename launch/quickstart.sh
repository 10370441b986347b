#!/usr/bin/env bash
# Set-up and the embedded default on a fresh machine (CPU is enough):
#   bash launch/quickstart.sh [extra --config.x=... flags]
# 1. a virtual environment with stars_jax; 2. Fashion-MNIST (Debian package where apt can
# reach it, else instructions); 3. STARS data-free distillation from the shipped teacher
# into a spiking student + its top-1 on the real test set, in workdirs/default.
set -euo pipefail
cd "$(dirname "$0")/.."
FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist}

if [ ! -d .venv ]; then python3 -m venv .venv; fi
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q -e ".[tensorboard]"  # tensorboardX: event files for `tensorboard --logdir`

if [ ! -f "$FMNIST/t10k-labels-idx1-ubyte.gz" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null || true
  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null || true
  fi
fi
if [ ! -f "$FMNIST/t10k-labels-idx1-ubyte.gz" ]; then
  cat >&2 <<MSG
Fashion-MNIST is not at $FMNIST and could not be installed with apt-get.
Put these four original IDX files into one directory:
  train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz
then rerun with FMNIST=that/directory bash launch/quickstart.sh
MSG
  exit 1
fi

python -m stars_jax.main --config configs/default.py --workdir workdirs/default \
  --config.data.path="$FMNIST" "$@"
