"""DeepInversion: the pixels of a fresh batch, optimised every round."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from stars_jax import losses
from stars_jax.bank import to_uint8
from stars_jax.objective import jitter, synthesis_loss
from stars_jax.synthesizers.common import (
    Best,
    NoState,
    Synthesizer,
    SynthSetup,
    keep_best,
    no_best,
    random_labels,
)


class PixelWork(NamedTuple):
    x: jax.Array  # normalised pixels being optimised [B, H, W, C]
    labels: jax.Array
    opt: Any
    best: Best


def make_deepinversion(s: SynthSetup) -> Synthesizer:
    """Adam on the pixels of a batch drawn from N(0, 1) in normalised space, clipped to valid
    pixels after every step; DeepInversion's roll jitter and flip (``synth.jitter``)."""
    cfg = s.cfg
    mean, std = jnp.asarray(s.mean), jnp.asarray(s.std)
    lo, hi = (0.0 - mean) / std, (1.0 - mean) / std
    opt = optax.adam(cfg.lr, b1=0.5, b2=0.99)

    def begin(state, key, round_):
        k_x, k_y = jax.random.split(key)
        x = s.batch(jax.random.normal(k_x, (cfg.batch_size, *s.image_shape)))
        y = s.batch(random_labels(k_y, cfg.batch_size, s.num_classes))
        return state, PixelWork(x, y, opt.init(x), no_best(x))

    def step(state, work, teacher_vars, student_vars, key, warmup=False, tar_ref=None):
        def loss_fn(x):
            total, aux = synthesis_loss(
                jitter(key, x, cfg.jitter),
                work.labels,
                teacher_vars,
                student_vars,
                teacher=s.teacher,
                student=s.student,
                cfg=cfg,
                warmup=warmup,
                tar_ref=tar_ref,
            )
            prior = cfg.a_tv * losses.tv_loss(x) + cfg.a_l2 * losses.l2_prior(x)
            return total + prior, aux.metrics

        (loss, metrics), g = jax.value_and_grad(loss_fn, has_aux=True)(work.x)
        best = keep_best(work.best, loss, work.x * std + mean)
        updates, opt_state = opt.update(g, work.opt, work.x)
        x = jnp.clip(optax.apply_updates(work.x, updates), lo, hi)
        return PixelWork(x, work.labels, opt_state, best), metrics

    def end(state, work):
        return state, to_uint8(work.best.x01), work.labels

    return Synthesizer(lambda key, teacher_vars: NoState(), begin, step, end)
