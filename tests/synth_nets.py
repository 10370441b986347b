"""A tiny teacher and student (the ``nets`` fixture) and a small synthesis config, shared by
the tests of the synthesizers (test_synthesis), the objective (test_objective) and the round
(test_distill)."""

import jax
import jax.numpy as jnp

from configs.default import get_config
from stars_jax.config import set_all_methods, synth_view
from stars_jax.models.students import make_student
from stars_jax.models.teachers import make_teacher
from stars_jax.synthesis import make_synthesizer

SHAPE = (16, 16, 3)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
K = 4


def tiny_nets():
    """The ``nets`` fixture (conftest.py): (teacher, its variables, student, its variables)."""
    teacher = make_teacher("resnet_tiny", K)
    tv = teacher.init(jax.random.key(0), jnp.zeros((2, *SHAPE)))
    # Non-trivial running statistics, as a trained teacher has.
    tv = {
        "params": tv["params"],
        "batch_stats": jax.tree.map(lambda a: a + 0.3, tv["batch_stats"]),
    }
    student = make_student("resnet_tiny", K, time_steps=2)
    sv = student.init(jax.random.key(1), jnp.zeros((2, *SHAPE)))
    sv = {"params": sv["params"], "batch_stats": sv["batch_stats"]}
    return teacher, tv, student, sv


def _cfg(method="fast", **over):
    full = get_config(method)
    set_all_methods(full, generator_width=8, latent_dim=16)
    full.synth.nayer.embed_dim = 8
    cmi = full.synth.cmi
    cmi.bank_size, cmi.negatives, cmi.head_dim = 24, 12, 8
    c = synth_view(full.synth)  # what the trainer reads: the shared keys and the method's
    c.batch_size = 8
    c.steps, c.crop_pad = 3, 2
    for k, v in over.items():
        setattr(c, k, v)
    return c


def _synth(nets, cfg):
    teacher, tv, student, sv = nets
    return make_synthesizer(cfg, teacher, student, SHAPE, K, MEAN, STD)
