"""The embedded default: STARS data-free ANN-to-SNN distillation on Fashion-MNIST, on a CPU.

Argument ``METHOD`` (optional): the synthesizer (fast, the default here, nayer, cmi,
deepinversion), at CPU scale. Fast is the default because the student learned most from it at
an equal 600 s budget (77.24 %, against 76.04 % for NAYER at 20 steps a round and 74.53 % at
its reference 40; seed 0, baselines; benchmarks/RESULTS.md): its 2 synthesis steps a round
leave the most time for KD on this CPU, though the teacher classifies only 29 % of its images
as intended (NAYER: 99.7 %). Command (after the README's set-up):
  python -m stars_jax.main --config configs/default.py --workdir workdirs/default
Hardware: 2 CPU cores, about 7 min. Starts from the small ANN teacher shipped with the
package (trained on the real Fashion-MNIST training set), synthesises images from it without
looking at real data, distills a spiking student, and reports the student's top-1 on the real
test set. Expected result: see README.md.
"""

from stars_jax import assets
from stars_jax.config import base_config, parse_arg, set_method


def get_config(arg=None):
    method, _ = parse_arg(arg, "fast")
    c = base_config()
    # Measured on the real training set with CE (200 steps, batch 64): the small spiking
    # student reaches ~69% with V_th = 0.5 and lr 1e-2 against ~64% with V_th = 1, lr 5e-3.
    c.neuron.v_threshold = 0.5
    c.distill.lr = 1e-2
    c.student.time_steps = 2  # T = 2 learns as fast per step as T = 4 at ~60% of the cost.
    # The teacher ships with the package (stars_jax/assets: 3 epochs on the real training set,
    # 86.45 %); --config.teacher.dir= trains it here instead (cached; ~2.5 min on 2 CPU cores,
    # inside the time budget below: that first run does fewer rounds unless it is set to 0).
    c.teacher.dir = assets.teacher_dir("fashion_mnist_resnet_small")
    # Sized to finish in under 10 min on 2 CPU cores with margin (README: measured): 130 rounds
    # (125 x 20 KD steps; a round takes ~3 s there), 5 evaluations. The time budget is a guard
    # for a slower or busy machine and binds only there (fewer rounds, the schedule refitted,
    # and the log says so); on an idle 2-core CPU all 130 rounds fit, so every run is the same.
    c.distill.rounds = 130  # including synth.warmup_rounds
    c.distill.eval_every = 26
    c.distill.time_budget_s = 540.0
    set_method(c, method)
    c.synth.batch_size = 64
    c.synth.generator_width = 32
    c.synth.crop_pad, c.synth.flip = 2, False  # 28x28 garments: no flips, as in KD
    c.synth.warmup_rounds = 5
    return c
