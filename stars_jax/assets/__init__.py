"""Files shipped with the package.

``teachers/fashion_mnist_resnet_small``: the embedded default's ANN teacher (``resnet_small``,
86.45 % top-1 on the real Fashion-MNIST test set), so the default distills from a given
teacher, as a user does, instead of spending ~2.5 min of its run training one. It is the
model directory this command writes on a 2-core CPU (jax 0.10.2), byte for byte (checked
by rerunning it on 2026-11-28):

  python -m stars_jax.teacher --config configs/default.py --config.teacher.dir= --out DIR

(3 epochs of SGD on the 60,000 training images, seed 0; the benchmarks/RESULTS.md studies
used this very teacher).

``teachers/cifar10_resnet14``: the CPU CIFAR-10 teacher of ``configs/cifar10_cpu.py`` (He et
al.'s CIFAR ResNet-14, 0.18 M parameters, 691 kB): 84.77 % top-1 on the CIFAR-10 JPEG copy's
test split, 85.04 % on its validation part (500 images a class held out of the training split,
``data.val_per_class`` 500, ``data.val_seed`` 0, which it never saw). Written on 2026-12-07 by

  python benchmarks/train_cifar10_cpu_teacher.py --out DIR

(20 epochs of SGD on the other 45,000 training images, seed 0, 74 min on this project's 2-core
CPU while other work ran); its ``model.json`` records the recipe, the held-out indices' hash,
the wall time, the machine and both accuracies.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def teacher_dir(name: str) -> str:
    """The path of the shipped teacher model directory ``name``."""
    path = ROOT / "teachers" / name
    if not (path / "model.json").exists():
        shipped = sorted(p.name for p in (ROOT / "teachers").iterdir() if p.is_dir())
        raise FileNotFoundError(f"No shipped teacher {name!r}; shipped: {shipped}.")
    return str(path)
