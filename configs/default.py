"""The embedded default: STARS data-free ANN-to-SNN distillation on Fashion-MNIST, on a CPU.

Command (after the README's set-up):
  python -m stars_jax.main --config configs/default.py --workdir workdirs/default
Hardware: 2 CPU cores. Trains a small ANN teacher on the real Fashion-MNIST training set
(cached), synthesises images from it without looking at the data again, distills a spiking
student, and reports the student's top-1 on the real test set. Expected result: see README.md.
"""

from stars_jax.config import base_config


def get_config(arg=None):
    del arg
    return base_config()
