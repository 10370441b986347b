"""Fast DFKD: a meta-learned generator adapted to fresh latents every round."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from stars_jax.bank import to_uint8
from stars_jax.models.generators import Generator
from stars_jax.objective import BNMoments, zero_moments
from stars_jax.synthesizers.common import (
    EMA,
    Best,
    Synthesizer,
    SynthSetup,
    ema_update,
    generator_adam,
    generator_step,
    init_ema,
    keep_best,
    no_best,
    random_labels,
)


class FastState(NamedTuple):
    params: Any  # the persistent (meta-learned) generator
    batch_stats: Any
    meta_opt: Any  # Adam state of the meta update
    ema: EMA | None


class FastWork(NamedTuple):
    fast: Any  # {"g": the round's copy of the generator, "z": latents [B, latent_dim]}
    batch_stats: Any
    opt: Any
    labels: jax.Array
    meta_grad: Any  # first-order MAML: the sum of the inner steps' generator gradients
    moments: BNMoments | None  # the last step's teacher BN moments (for the EMA)
    best: Best


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
        fast = {"g": params, "z": z}
        x01 = s.batch(jnp.zeros((cfg.batch_size, *s.image_shape)))
        work = FastWork(
            fast=fast,
            batch_stats=state.batch_stats,
            opt=inner.init(fast),
            labels=s.batch(random_labels(k_y, cfg.batch_size, s.num_classes)),
            meta_grad=jax.tree.map(jnp.zeros_like, params) if cfg.meta == "fomaml" else None,
            moments=zero_moments(s.teacher, s.image_shape) if cfg.bn_ema else None,
            best=no_best(x01),
        )
        return state._replace(params=params), work

    def step(state, work, teacher_vars, student_vars, key, warmup=False, tar_ref=None):
        r = generator_step(
            s,
            gen,
            inner,
            work.fast,
            work.opt,
            work.batch_stats,
            lambda tr: tr["z"],
            work.labels,
            state.ema,
            teacher_vars,
            student_vars,
            key,
            warmup,
            tar_ref,
        )
        new = FastWork(
            fast=r.trainable,
            batch_stats=r.batch_stats,
            opt=r.opt,
            labels=work.labels,
            meta_grad=_accumulate(work.meta_grad, r.grads["g"]),
            moments=r.aux.moments if cfg.bn_ema else None,
            best=keep_best(work.best, r.loss, r.x01),
        )
        return new, r.aux.metrics

    def end(state, work):
        start, adapted = state.params, work.fast["g"]
        if cfg.meta == "fomaml":
            meta_grad = work.meta_grad
        else:  # Reptile: the meta "gradient" points from the adapted copy back to the start.
            meta_grad = jax.tree.map(jnp.subtract, start, adapted)
        updates, meta_opt = meta.update(meta_grad, state.meta_opt, start)
        new_state = FastState(
            optax.apply_updates(start, updates),
            work.batch_stats,
            meta_opt,
            ema_update(state.ema, work.moments, cfg.bn_ema),
        )
        return new_state, to_uint8(work.best.x01), work.labels

    return Synthesizer(init, begin, step, end)
