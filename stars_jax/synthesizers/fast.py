"""Fast DFKD: a meta-learned generator adapted to fresh latents every round."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from stars_jax.models.generators import Generator
from stars_jax.synthesizers.common import (
    EMA,
    GeneratorMethod,
    StepInputs,
    Synthesizer,
    SynthSetup,
    Work,
    ema_update,
    generator_adam,
    init_ema,
    kept_batch,
    random_labels,
)


class FastState(NamedTuple):
    params: Any  # the persistent (meta-learned) generator
    batch_stats: Any
    meta_opt: Any  # Adam state of the meta update
    ema: EMA | None


# A round's work: trainable {"g": the round's copy of the generator, "z": latents}; extra:
# first-order MAML's sum of the inner steps' generator gradients (None for Reptile).


def _reset_l0(gen_params, key):
    """Fast's ``reset_l0``: the first Linear and the BatchNorm after it (the reference's
    ``l1.0`` and ``conv_blocks.0``) re-drawn, weights from N(0, 0.02) (the BN's scale too,
    so it starts near 0, not 1), biases 0. Its running statistics stay."""
    k_l1, k_bn = jax.random.split(key)
    redraw = lambda k, layer, w: {
        w: 0.02 * jax.random.normal(k, layer[w].shape),
        "bias": jnp.zeros_like(layer["bias"]),
    }
    l1 = redraw(k_l1, gen_params["l1"], "kernel")
    return {**gen_params, "l1": l1, "bn0": redraw(k_bn, gen_params["bn0"], "scale")}


# ``synth.meta``: whether the meta step is first-order MAML's (else Reptile's).
META = {"fomaml": True, "reptile": False}


def make_fast(s: SynthSetup) -> Fast:
    """Fast DFKD (``fast_meta.py``): every round a copy of the persistent generator and fresh
    N(0, 1) latents take ``synth.fast.steps`` joint Adam steps; then the persistent generator takes
    one meta step: first-order MAML (``synth.fast.meta='fomaml'``, the reference default: the sum
    of the inner gradients) or Reptile (``'reptile'``: towards the adapted copy), with Adam at
    ``lr * steps``. ``synth.fast.reset_l0_round`` re-draws the first layer and its BN once,
    before that round."""
    cfg = s.cfg
    gen = Generator(tuple(s.image_shape), cfg.generator_width)
    inner = optax.multi_transform(
        {"g": generator_adam(cfg.lr), "z": generator_adam(cfg.lr_z)}, {"g": "g", "z": "z"}
    )
    method = GeneratorMethod(s, gen, inner, lambda tr, labels: tr["z"], bn_ema=cfg.bn_ema)
    return Fast(s, method, generator_adam(cfg.lr * cfg.steps), fomaml=META[cfg.meta])


@dataclasses.dataclass(frozen=True)
class Fast(Synthesizer):
    s: SynthSetup
    method: GeneratorMethod  # the inner steps
    meta: optax.GradientTransformation  # the meta update's Adam
    fomaml: bool  # first-order MAML (else Reptile)

    def init(self, key, teacher_vars):
        variables = self.method.gen.init(key, jnp.zeros((2, self.s.cfg.latent_dim)))
        params = variables["params"]
        ema = init_ema(self.s, self.method.bn_ema)
        return FastState(params, variables["batch_stats"], self.meta.init(params), ema)

    def begin(self, state, key, round_):
        s, cfg = self.s, self.s.cfg
        k_z, k_y, k_l0 = jax.random.split(key, 3)
        params = state.params
        if cfg.reset_l0_round:
            reset = round_ + 1 == cfg.reset_l0_round
            params = jax.tree.map(
                lambda a, b: jnp.where(reset, a, b), _reset_l0(params, k_l0), params
            )
        z = s.batch(jax.random.normal(k_z, (cfg.batch_size, cfg.latent_dim)))
        labels = s.batch(random_labels(k_y, cfg.batch_size, s.num_classes))
        summed = jax.tree.map(jnp.zeros_like, params) if self.fomaml else None
        work = self.method.begin({"g": params, "z": z}, state.batch_stats, labels, extra=summed)
        return state._replace(params=params), work

    def step(self, state, work: Work, inputs: StepInputs):
        new, (grads, _), metrics = self.method.step(work, inputs, ema=state.ema)
        if self.fomaml:
            new = new._replace(extra=jax.tree.map(jnp.add, work.extra, grads["g"]))
        return new, metrics

    def end(self, state, work: Work):
        start, adapted = state.params, work.trainable["g"]
        if self.fomaml:
            meta_grad = work.extra
        else:  # Reptile: the meta "gradient" points from the adapted copy back to the start.
            meta_grad = jax.tree.map(jnp.subtract, start, adapted)
        updates, meta_opt = self.meta.update(meta_grad, state.meta_opt, start)
        new_state = FastState(
            optax.apply_updates(start, updates),
            work.batch_stats,
            meta_opt,
            ema_update(state.ema, work.moments, self.method.bn_ema),
        )
        return new_state, *kept_batch(work)
