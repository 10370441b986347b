"""CIFAR-10: a converted ANN teacher distilled into a spiking resnet18 (T=4), STARS on.

Argument ``METHOD[,TEACHER]`` (both optional): the synthesizer (nayer, the default, fast, cmi,
deepinversion; ``synth.method``, at the settings of its section ``synth.<method>``:
stars_jax/config.py) and the teacher (resnet34, the default, or wrn40_2). Set-up (once):
convert the teacher checkpoint into a model directory:
  python -m stars_jax.convert --arch resnet34 --num_classes 10 \
      --checkpoint ../shared/teachers/cifar10_resnet34_fp16.pth --out teachers/cifar10_resnet34
Command:
  python -m stars_jax.main --config configs/cifar10.py:nayer --workdir workdirs/cifar10_nayer
Baseline (no STARS): add --config.synth.l_rca=0 --config.synth.l_tar=0 --config.distill.b_rca=0
Hardware: one GPU (H100/H200 class) or more. The student is trained as in the reference Fast
DFKD code (SGD momentum 0.9, lr 0.2 cosine to 2e-4 after the synthesis-only warm-up, weight
decay 1e-4, 400 KD steps per round, 220 rounds, KD temperature 20); a full run is long:
--config.distill.time_budget_s=240 fits the rounds and the learning-rate schedule into 4
minutes of wall time (see README). Expected result: benchmarks/RESULTS.md ("Synthesis on the
GPU"; why these settings: "Why the configs are set as they are").
"""

from stars_jax.config import base_config, parse_arg, set_fast_weights

TEACHERS = {"resnet34": "teachers/cifar10_resnet34", "wrn40_2": "teachers/cifar10_wrn40_2"}


def get_config(arg=None):
    method, teacher = parse_arg(arg, "nayer")
    teacher = teacher or "resnet34"
    if teacher not in TEACHERS:
        raise ValueError(
            f"configs/cifar10.py: unknown teacher {teacher!r}; valid: {sorted(TEACHERS)}."
        )
    c = base_config()
    c.data.name = "cifar10"
    c.data.kind = "auto"  # image folder (the JPEG copy) or cifar-10-python archive
    c.data.path = "../shared/data/cifar10-jpeg"
    c.data.num_classes = 10
    c.teacher.arch = teacher
    c.teacher.dir = TEACHERS[teacher]
    c.student.arch = "resnet18"
    c.student.time_steps = 4
    c.synth.method = method  # at its section's reference settings (stars_jax/config.py)
    set_fast_weights(c, teacher)
    c.synth.batch_size = 256
    c.synth.crop_pad, c.synth.flip = 4, True
    # CMI's features: every BN input for a WRN, the ends of the stages for a ResNet (the
    # reference takes resnet34's block outputs: 960 dims; these are 1024).
    c.synth.cmi.layers = "stage_last" if teacher == "resnet34" else "all"
    c.distill.rounds = 220  # including synth.<method>.warmup_rounds
    c.distill.kd_steps = 400
    c.distill.batch_size = 256
    c.distill.optimizer = "sgd"
    c.distill.nesterov = False
    c.distill.lr = 0.2
    c.distill.lr_min = 2e-4
    c.distill.lr_warmup_rounds = 0
    c.distill.weight_decay = 1e-4
    c.distill.t_kd = 20.0
    c.distill.crop_pad = 4
    c.distill.flip = True
    c.distill.bank_size = 65536  # 200 MiB of uint8 32x32x3 on device: every batch is kept
    c.distill.eval_every = 5
    c.ckpt.every = 5
    return c
