"""A seconds-long smoke configuration for tests and demos on any image-folder dataset.

Command:
  python -m stars_jax.main --config configs/tiny.py:/path/to/image_folder --workdir /tmp/tiny
Hardware: any CPU. Expected result: it runs end to end; accuracy is meaningless.
"""

from stars_jax.config import base_config


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
    c.synth.steps = 2
    c.synth.warmup_rounds = 1
    c.synth.generator_width = 8
    c.synth.latent_dim = 16
    c.synth.embed_dim = 8
    c.synth.cmi_bank_size = 32
    c.synth.cmi_negatives = 16
    c.synth.cmi_head_dim = 8
    c.distill.rounds = 4
    c.distill.kd_steps = 2
    c.distill.batch_size = 8
    c.distill.bank_size = 64
    c.distill.eval_every = 2
    c.ckpt.every = 2
    c.log.grid_images = 8
    c.energy.enabled = False  # Keeps the tests fast; tests/test_workdir.py switches it on.
    return c
