"""Fast DFKD: a meta-learned generator adapted to fresh latents every round."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from stars_jax.bank import to_uint8
from stars_jax.models.generators import Generator
from stars_jax.synthesizers.common import (
    EMA,
    GeneratorMethod,
    GeneratorWork,
    Synthesizer,
    SynthSetup,
    ema_update,
    generator_adam,
    init_ema,
    random_labels,
)


class FastState(NamedTuple):
    params: Any  # the persistent (meta-learned) generator
    batch_stats: Any
    meta_opt: Any  # Adam state of the meta update
    ema: EMA | None


class FastWork(NamedTuple):
    gen: GeneratorWork  # trainable: {"g": the round's copy of the generator, "z": latents}
    meta_grad: Any  # first-order MAML: the sum of the inner steps' generator gradients

    # What every synthesizer's work exposes: the labels and the kept batch.
    @property
    def labels(self):
        return self.gen.labels

    @property
    def best(self):
        return self.gen.best


def _reset_l1(gen_params, key):
    """Fast's ``reset_l0``: the first Linear re-drawn from N(0, 0.02), bias 0."""
    l1 = gen_params["l1"]
    fresh = {
        "kernel": 0.02 * jax.random.normal(key, l1["kernel"].shape),
        "bias": jnp.zeros_like(l1["bias"]),
    }
    return {**gen_params, "l1": fresh}


def _accumulate(total, g):
    return None if total is None else jax.tree.map(jnp.add, total, g)


def make_fast(s: SynthSetup) -> Synthesizer:
    """Fast DFKD (``fast_meta.py``): every round a copy of the persistent generator and fresh
    N(0, 1) latents take ``synth.steps`` joint Adam steps; then the persistent generator takes
    one meta step: first-order MAML (``synth.meta='fomaml'``, the reference default: the sum
    of the inner gradients) or Reptile (``'reptile'``: towards the adapted copy), with Adam at
    ``lr * steps``. ``synth.reset_l0_round`` re-draws the first layer once, before that round."""
    cfg = s.cfg
    if cfg.meta not in ("fomaml", "reptile"):
        raise ValueError(f"synth.meta must be 'fomaml' or 'reptile', got {cfg.meta!r}.")
    gen = Generator(tuple(s.image_shape), cfg.generator_width)
    inner = optax.multi_transform(
        {"g": generator_adam(cfg.lr), "z": generator_adam(cfg.lr_z)}, {"g": "g", "z": "z"}
    )
    method = GeneratorMethod(s, gen, inner, lambda tr, labels: tr["z"])
    meta = generator_adam(cfg.lr * cfg.steps)
    z0 = jnp.zeros((2, cfg.latent_dim))

    def init(key, teacher_vars):
        variables = gen.init(key, z0)
        params = variables["params"]
        return FastState(params, variables["batch_stats"], meta.init(params), init_ema(s))

    def begin(state, key, round_):
        k_z, k_y, k_l0 = jax.random.split(key, 3)
        params = state.params
        if cfg.reset_l0_round:
            reset = round_ + 1 == cfg.reset_l0_round
            params = jax.tree.map(
                lambda a, b: jnp.where(reset, a, b), _reset_l1(params, k_l0), params
            )
        z = s.batch(jax.random.normal(k_z, (cfg.batch_size, cfg.latent_dim)))
        labels = s.batch(random_labels(k_y, cfg.batch_size, s.num_classes))
        work = method.begin({"g": params, "z": z}, state.batch_stats, labels)
        meta_grad = jax.tree.map(jnp.zeros_like, params) if cfg.meta == "fomaml" else None
        return state._replace(params=params), FastWork(work, meta_grad)

    def step(state, work, teacher_vars, student_vars, key, warmup=False, tar_ref=None):
        args = (state.ema, teacher_vars, student_vars, key, warmup, tar_ref)
        gen_work, grads, metrics = method.step(work.gen, *args)
        return FastWork(gen_work, _accumulate(work.meta_grad, grads["g"])), metrics

    def end(state, work):
        start, adapted = state.params, work.gen.trainable["g"]
        if cfg.meta == "fomaml":
            meta_grad = work.meta_grad
        else:  # Reptile: the meta "gradient" points from the adapted copy back to the start.
            meta_grad = jax.tree.map(jnp.subtract, start, adapted)
        updates, meta_opt = meta.update(meta_grad, state.meta_opt, start)
        new_state = FastState(
            optax.apply_updates(start, updates),
            work.gen.batch_stats,
            meta_opt,
            ema_update(state.ema, work.gen.moments, cfg.bn_ema),
        )
        return new_state, to_uint8(work.gen.best.x01), work.gen.labels

    return Synthesizer(init, begin, step, end)
