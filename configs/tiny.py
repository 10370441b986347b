"""A seconds-long smoke configuration for tests and demos on any image-folder dataset.

Command:
  python -m stars_jax.main --config configs/tiny.py:/path/to/image_folder --workdir /tmp/tiny
Hardware: any CPU. Expected result: it runs end to end; accuracy is meaningless.
Every synthesizer runs at the same smoke scale and loss weights (2 steps, 1 warm-up round,
CMI's contrastive term off): the golden runs (tests/golden/) were recorded with them.
"""

from stars_jax.config import base_config, set_all_methods


def get_config(arg=None):
    c = base_config()
    c.data.name = "tiny"
    c.data.kind = "auto"
    c.data.path = arg or ""
    c.data.num_classes = 4
    c.data.eval_batch_size = 16
    c.teacher.arch = "resnet_tiny"
    c.teacher.train_epochs = 1
    c.teacher.train_batch_size = 16
    c.student.arch = "resnet_tiny"
    c.student.time_steps = 2
    c.synth.batch_size = 8
    set_all_methods(c, steps=2, warmup_rounds=1, lr=5e-3, bn_ema=0.9)
    set_all_methods(c, a_bn=10.0, a_oh=1.0, a_adv=1.1, generator_width=8, latent_dim=16)
    c.synth.fast.reset_l0_round = 0
    c.synth.nayer.embed_dim, c.synth.nayer.reinit_every = 8, 0
    cmi = c.synth.cmi
    cmi.a_cr, cmi.bank_size, cmi.negatives, cmi.head_dim = 0.0, 32, 16, 8
    c.synth.deepinversion.jitter = 2
    c.distill.rounds = 4
    c.distill.kd_steps = 2
    c.distill.batch_size = 8
    c.distill.bank_size = 64
    c.distill.eval_every = 2
    c.ckpt.every = 2
    c.log.grid_images = 8
    c.energy.enabled = False  # Keeps the tests fast; tests/test_workdir.py switches it on.
    return c
