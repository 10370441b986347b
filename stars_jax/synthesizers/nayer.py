"""NAYER: a class-conditional generator with a noisy layer re-drawn every round."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from stars_jax.bank import to_uint8
from stars_jax.models.generators import NoisyLayerGenerator
from stars_jax.synthesizers.common import (
    EMA,
    GeneratorMethod,
    Synthesizer,
    SynthSetup,
    balanced_labels,
    ema_update,
    generator_adam,
    init_ema,
)


class NayerState(NamedTuple):
    params: Any  # the persistent generator: embedding BN, noisy layers, body
    batch_stats: Any
    embed: jax.Array  # [K, E] label embeddings (kept across generator re-initialisations)
    ema: EMA | None


# A round's work is a common.GeneratorWork whose trainable is
# {"g": generator params, "e": label embeddings}.


def _pick(again, fresh, params, batch_stats):
    """The freshly initialised generator where ``again``, else the given one (NAYER's g_life)."""
    pick = lambda a, b: jax.tree.map(lambda u, v: jnp.where(again, u, v), a, b)
    return pick(fresh["params"], params), pick(fresh["batch_stats"], batch_stats)


def _redraw_noise(params, key):
    """The noisy layer, re-drawn from N(0, 1) with zero bias (every round)."""
    kernel = params["noise_kernel"]
    return {
        **params,
        "noise_kernel": jax.random.normal(key, kernel.shape, kernel.dtype),
        "noise_bias": jnp.zeros_like(params["noise_bias"]),
    }


def make_nayer(s: SynthSetup) -> Synthesizer:
    """NAYER (CVPR 2024): a class-conditional generator. Each sample's input is its label's
    embedding, through a BatchNorm and a "noisy layer" (a Linear re-drawn from N(0, 1) every
    round, one per chunk of ``num_classes`` samples) into Fast's generator body. The generator
    persists and takes ``synth.steps`` Adam steps per round (fresh optimizer, no meta step);
    ``synth.reinit_every`` rounds it is re-initialised (NAYER's ``g_life``). Labels are
    balanced (each class once per chunk).

    NAYER embeds class names with a CLIP text encoder; none can be downloaded here, so the
    embeddings are N(0, 1) vectors drawn from the seed (``synth.embed='fixed'``: nearly
    orthogonal, like unrelated class names) or such vectors trained with the generator
    (``'learned'``), where the teacher's gradients may place similar classes nearby.
    """
    cfg = s.cfg
    if cfg.embed not in ("fixed", "learned"):
        raise ValueError(f"synth.embed must be 'fixed' or 'learned', got {cfg.embed!r}.")
    gen = NoisyLayerGenerator(
        tuple(s.image_shape), cfg.generator_width, cfg.latent_dim, chunk=s.num_classes
    )
    embed_opt = generator_adam(cfg.lr) if cfg.embed == "learned" else optax.set_to_zero()
    opt = optax.multi_transform({"g": generator_adam(cfg.lr), "e": embed_opt}, {"g": "g", "e": "e"})
    e0 = jnp.zeros((cfg.batch_size, cfg.embed_dim))
    method = GeneratorMethod(s, gen, opt, lambda tr, labels: s.batch(tr["e"][labels]))

    def init(key, teacher_vars):
        k_g, k_e = jax.random.split(key)
        v = gen.init(k_g, e0)
        embed = jax.random.normal(k_e, (s.num_classes, cfg.embed_dim))
        return NayerState(v["params"], v["batch_stats"], embed, init_ema(s))

    def begin(state, key, round_):
        k_g, k_n, k_y = jax.random.split(key, 3)
        params, batch_stats = state.params, state.batch_stats
        if cfg.reinit_every:
            again = round_ % cfg.reinit_every == 0
            params, batch_stats = _pick(again, gen.init(k_g, e0), params, batch_stats)
        params = _redraw_noise(params, k_n)
        labels = s.batch(balanced_labels(k_y, cfg.batch_size, s.num_classes))
        work = method.begin({"g": params, "e": state.embed}, batch_stats, labels)
        return state._replace(params=params, batch_stats=batch_stats), work

    def step(state, work, teacher_vars, student_vars, key, warmup=False, tar_ref=None):
        args = (state.ema, teacher_vars, student_vars, key, warmup, tar_ref)
        work, _, metrics = method.step(work, *args)
        return work, metrics

    def end(state, work):
        new_state = NayerState(
            work.trainable["g"],
            work.batch_stats,
            work.trainable["e"],
            ema_update(state.ema, work.moments, cfg.bn_ema),
        )
        return new_state, to_uint8(work.best.x01), work.labels

    return Synthesizer(init, begin, step, end)
