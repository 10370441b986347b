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

from stars_jax.config import base_config


def get_config(arg=None):
    del arg
    c = base_config()
    c.data.name = "tiny_imagenet"
    c.data.kind = "tiny_imagenet"
    c.data.path = "data/tiny-imagenet-200"
    c.data.test_split = "val"  # The official test split has no labels.
    c.data.num_classes = 200
    c.teacher.arch = "resnet34"
    c.teacher.dir = "teachers/tiny_imagenet_resnet34"
    c.student.arch = "resnet18"
    c.synth.batch_size = 256
    c.synth.steps = 2
    c.synth.generator_width = 64
    c.synth.a_bn, c.synth.a_oh, c.synth.a_adv = 10.0, 0.5, 1.1
    c.distill.rounds = 200
    c.distill.kd_steps = 400
    c.distill.batch_size = 256
    c.distill.optimizer = "sgd"
    c.distill.lr = 0.2
    c.distill.weight_decay = 5e-4
    c.distill.warmup_rounds = 20
    c.distill.t_kd = 20.0
    c.distill.crop_pad = 8
    c.distill.flip = True
    c.distill.bank_size = 32768  # 384 MiB of uint8 64x64x3 on device
    c.distill.eval_every = 5
    return c
