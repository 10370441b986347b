"""Tiny-ImageNet-200 (64x64): a converted teacher distilled into a spiking resnet18 (T=4).

Set-up: a Tiny-ImageNet teacher checkpoint of the public DFKD format:
  python -m stars_jax.convert --arch resnet34 --num_classes 200 --checkpoint TIN.pth \
      --out teachers/tiny_imagenet_resnet34
Data: the tiny-imagenet-200 folder (wnids.txt, train/, val/val_annotations.txt).
Command:
  python -m stars_jax.main --config configs/tiny_imagenet.py --workdir workdirs/tiny_imagenet
Hardware: one GPU or more. Expected result: not measured here (no copy of the dataset or a
Tiny-ImageNet teacher is available on this project's machines).
"""

from pathlib import Path

from stars_jax.config import load_config_file


def get_config(arg=None):
    # METHOD[,TEACHER] as in configs/cifar10.py; the same DFKD schedule.
    c = load_config_file(Path(__file__).with_name("cifar10.py"), arg)
    c.data.name = "tiny_imagenet"
    c.data.kind = "tiny_imagenet"
    c.data.path = "data/tiny-imagenet-200"
    c.data.test_split = "val"  # The official test split has no labels.
    c.data.num_classes = 200
    c.teacher.dir = f"teachers/tiny_imagenet_{c.teacher.arch}"
    c.distill.rounds = 200
    c.distill.crop_pad = 8
    c.distill.bank_size = 32768  # 384 MiB of uint8 64x64x3 on device
    return c
