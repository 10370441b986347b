"""DeepInversion: the pixels of a fresh batch, optimised every round."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from stars_jax import losses
from stars_jax.objective import jitter, synthesis_loss
from stars_jax.synthesizers.common import (
    NoState,
    StepInputs,
    Synthesizer,
    SynthSetup,
    Work,
    keep_best,
    kept_batch,
    no_best,
    random_labels,
)

# A round's work: trainable: the normalised pixels being optimised [B, H, W, C]; no extra.


def make_deepinversion(s: SynthSetup) -> DeepInversion:
    """Adam on the pixels of a batch drawn from N(0, 1) in normalised space, clipped to valid
    pixels after every step; DeepInversion's roll jitter and flip
    (``synth.deepinversion.jitter``)."""
    mean, std = jnp.asarray(s.mean), jnp.asarray(s.std)
    lo, hi = (0.0 - mean) / std, (1.0 - mean) / std
    return DeepInversion(s, optax.adam(s.cfg.lr, b1=0.5, b2=0.99), mean, std, lo, hi)


@dataclasses.dataclass(frozen=True)
class DeepInversion(Synthesizer):
    s: SynthSetup
    opt: optax.GradientTransformation
    mean: jax.Array  # [C] the normalisation, and the normalised pixel range [lo, hi]
    std: jax.Array
    lo: jax.Array
    hi: jax.Array

    def init(self, key, teacher_vars):
        return NoState()

    def begin(self, state, key, round_):
        s, cfg = self.s, self.s.cfg
        k_x, k_y = jax.random.split(key)
        x = s.batch(jax.random.normal(k_x, (cfg.batch_size, *s.image_shape)))
        y = s.batch(random_labels(k_y, cfg.batch_size, s.num_classes))
        return state, Work(x, self.opt.init(x), y, no_best(x))

    def step(self, state, work: Work, inputs: StepInputs):
        s, cfg = self.s, self.s.cfg

        def loss_fn(x):
            total, aux = synthesis_loss(
                jitter(inputs.key, x, cfg.jitter),
                work.labels,
                inputs.teacher_vars,
                inputs.student_vars,
                teacher=s.teacher,
                student=s.student,
                cfg=cfg,
                warmup=inputs.warmup,
                tar_ref=inputs.tar_ref,
            )
            prior = cfg.a_tv * losses.tv_loss(x) + cfg.a_l2 * losses.l2_prior(x)
            return total + prior, aux.metrics

        (loss, metrics), g = jax.value_and_grad(loss_fn, has_aux=True)(work.trainable)
        best = keep_best(work.best, loss, work.trainable * self.std + self.mean)
        updates, opt_state = self.opt.update(g, work.opt, work.trainable)
        x = jnp.clip(optax.apply_updates(work.trainable, updates), self.lo, self.hi)
        return Work(x, opt_state, work.labels, best), metrics

    def end(self, state, work: Work):
        return state, *kept_batch(work)
