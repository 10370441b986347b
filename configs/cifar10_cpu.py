"""CIFAR-10 on a CPU: data-free distillation of the shipped CIFAR-10 ResNet-14 teacher into a
spiking student, sized for 2 CPU cores.

Argument ``METHOD`` (optional): the synthesizer (fast, the default here, nayer, cmi,
deepinversion), at CPU scale as in configs/default.py (every generator at width 32, 5 warm-up
rounds). The teacher ships with the package (stars_jax/assets/teachers/cifar10_resnet14:
trained by benchmarks/train_cifar10_cpu_teacher.py on the CIFAR-10 JPEG copy's training split
less its validation part, 500 images a class, which this config holds out the same way). The
student never sees a training image; ``--config.data.test_split=val`` evaluates on the
validation part instead of the test split, for choosing settings (report the test split only
for what was chosen). Command (after the README's set-up):
  python -m stars_jax.main --config configs/cifar10_cpu.py --workdir workdirs/cifar10_cpu
Bounds: ``--config.distill.mode=real_data`` (the same KD on the real training images) and
``--config.distill.mode=noise`` (on Gaussian noise). Hardware: 2 CPU cores; the rounds are
sized for about 13 min idle, and the time budget (1,800 s) is only a guard against a machine
far slower than that. Expected result: benchmarks/RESULTS.md, "CIFAR-10 on a CPU".
"""

from stars_jax import assets
from stars_jax.config import base_config, parse_arg, set_all_methods


def get_config(arg=None):
    method, _ = parse_arg(arg, "fast")
    c = base_config()
    c.data.name = "cifar10"
    c.data.kind = "image_folder"
    c.data.path = "../shared/data/cifar10-jpeg"
    c.data.num_classes = 10
    c.data.val_per_class, c.data.val_seed = 500, 0  # the teacher's held-out part
    c.teacher.arch = "resnet14"
    c.teacher.dir = assets.teacher_dir("cifar10_resnet14")
    c.student.arch = "resnet_small"
    c.student.time_steps = 2
    c.neuron.v_threshold = 0.5  # as the embedded default
    c.synth.method = method
    c.synth.batch_size = 64
    c.synth.crop_pad, c.synth.flip = 2, True
    set_all_methods(c, generator_width=32, warmup_rounds=5)
    c.distill.lr = 1e-2
    c.distill.crop_pad, c.distill.flip = 2, True
    c.distill.rounds = 110  # including synth.<method>.warmup_rounds
    c.distill.eval_every = 22
    c.distill.time_budget_s = 1800.0
    return c
