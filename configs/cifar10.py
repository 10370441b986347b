"""CIFAR-10: the resnet34 teacher distilled into a spiking resnet18 (T=4), Fast + STARS.

Set-up (once): convert the teacher checkpoint into a model directory:
  python -m stars_jax.convert --arch resnet34 --num_classes 10 \
      --checkpoint ../shared/teachers/cifar10_resnet34_fp16.pth --out teachers/cifar10_resnet34
Command:
  python -m stars_jax.main --config configs/cifar10.py --workdir workdirs/cifar10
Baseline (Fast, no STARS): add --config.synth.l_rca=0 --config.synth.l_tar=0 --config.distill.b_rca=0
Hardware: one GPU (H100/H200 class) or more. Defaults are Fast DFKD's published CIFAR
hyperparameters (Fast-2: 2 generator steps per round, 400 KD steps per round, 220 rounds,
SGD lr 0.2, KD temperature 20); a full run is long: --config.distill.time_budget_s=600 fits
the rounds and the learning-rate schedule into 10 minutes of wall time (see README).
Expected result: not measured yet on this configuration (see benchmarks/RESULTS.md).
"""

from stars_jax.config import base_config


def get_config(arg=None):
    del arg
    c = base_config()
    c.data.name = "cifar10"
    c.data.kind = "auto"  # image folder (the JPEG copy) or cifar-10-python archive
    c.data.path = "../shared/data/cifar10-jpeg"
    c.data.num_classes = 10
    c.teacher.arch = "resnet34"
    c.teacher.dir = "teachers/cifar10_resnet34"
    c.student.arch = "resnet18"
    c.student.time_steps = 4
    c.synth.batch_size = 256
    c.synth.steps = 2
    c.synth.lr = 5e-3
    c.synth.lr_z = 0.015
    c.synth.generator_width = 64
    c.synth.latent_dim = 256
    c.synth.a_bn, c.synth.a_oh, c.synth.a_adv = 10.0, 0.4, 1.1
    c.distill.rounds = 220
    c.distill.kd_steps = 400
    c.distill.batch_size = 256
    c.distill.optimizer = "sgd"
    c.distill.lr = 0.2
    c.distill.weight_decay = 5e-4
    c.distill.warmup_rounds = 20
    c.distill.t_kd = 20.0
    c.distill.crop_pad = 4
    c.distill.flip = True
    c.distill.bank_size = 65536  # 200 MiB of uint8 32x32x3 on device: every batch is kept
    c.distill.eval_every = 5
    c.ckpt.every = 5
    return c
