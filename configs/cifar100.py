"""CIFAR-100: a converted teacher distilled into a spiking resnet18 (T=4), STARS on.

Argument: METHOD[,TEACHER] as in configs/cifar10.py (NAYER and resnet34 unless given); the
same DFKD schedule as configs/cifar10.py.
Set-up: a CIFAR-100 teacher checkpoint of the public DFKD format (e.g. resnet34 or wrn40_2):
  python -m stars_jax.convert --arch resnet34 --num_classes 100 --checkpoint C100.pth \
      --out teachers/cifar100_resnet34
Data: cifar-100-python.tar.gz (or its extracted folder) at --config.data.path.
Command:
  python -m stars_jax.main --config configs/cifar100.py --workdir workdirs/cifar100
Hardware: one GPU or more. Expected result: not measured here (no CIFAR-100 copy or
CIFAR-100 teacher is available on this project's machines).
"""

from pathlib import Path

from stars_jax.config import load_config_file


def get_config(arg=None):
    c = load_config_file(Path(__file__).with_name("cifar10.py"), arg)  # METHOD[,TEACHER]
    c.data.name = "cifar100"
    c.data.kind = "cifar_python"
    c.data.path = "data/cifar-100-python.tar.gz"
    c.data.num_classes = 100
    c.teacher.dir = f"teachers/cifar100_{c.teacher.arch}"
    return c
