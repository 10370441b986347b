"""NAYER: a class-conditional generator with a noisy layer re-drawn every round."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from stars_jax.models.generators import NoisyLayerGenerator
from stars_jax.synthesizers.common import (
    EMA,
    GeneratorMethod,
    StepInputs,
    Synthesizer,
    SynthSetup,
    Work,
    balanced_labels,
    ema_update,
    generator_adam,
    init_ema,
    kept_batch,
)


class NayerState(NamedTuple):
    params: Any  # the persistent generator: embedding BN, noisy layers, body
    batch_stats: Any
    embed: jax.Array  # [K, E] label embeddings (kept across generator re-initialisations)
    ema: EMA | None


# A round's work: trainable {"g": generator params, "e": label embeddings}; no extra.


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


# ``synth.embed``: the class embeddings' optimizer, from the generator's learning rate.
EMBEDS = {"fixed": lambda lr: optax.set_to_zero(), "learned": generator_adam}


def make_nayer(s: SynthSetup) -> Nayer:
    """NAYER (CVPR 2024): a class-conditional generator. Each sample's input is its label's
    embedding, through a BatchNorm and a "noisy layer" (a Linear re-drawn from N(0, 1) every
    round, one per chunk of ``num_classes`` samples) into Fast's generator body. The generator
    persists and takes ``synth.nayer.steps`` Adam steps per round (fresh optimizer, no meta step);
    ``synth.nayer.reinit_every`` rounds it is re-initialised (NAYER's ``g_life``). Labels are
    balanced (each class once per chunk).

    NAYER embeds class names with a CLIP text encoder; none can be downloaded here, so the
    embeddings are N(0, 1) vectors drawn from the seed (``synth.nayer.embed='fixed'``: nearly
    orthogonal, like unrelated class names) or such vectors trained with the generator
    (``'learned'``), where the teacher's gradients may place similar classes nearby.
    """
    cfg = s.cfg
    gen = NoisyLayerGenerator(
        tuple(s.image_shape), cfg.generator_width, cfg.latent_dim, chunk=s.num_classes
    )
    embed_opt = EMBEDS[cfg.embed](cfg.lr)
    opt = optax.multi_transform({"g": generator_adam(cfg.lr), "e": embed_opt}, {"g": "g", "e": "e"})
    gen_input = lambda tr, labels: s.batch(tr["e"][labels])
    return Nayer(s, GeneratorMethod(s, gen, opt, gen_input, bn_ema=cfg.bn_ema))


@dataclasses.dataclass(frozen=True)
class Nayer(Synthesizer):
    s: SynthSetup
    method: GeneratorMethod

    def _fresh(self, key):
        """A freshly initialised generator's variables."""
        return self.method.gen.init(key, jnp.zeros((self.s.cfg.batch_size, self.s.cfg.embed_dim)))

    def init(self, key, teacher_vars):
        k_g, k_e = jax.random.split(key)
        v = self._fresh(k_g)
        embed = jax.random.normal(k_e, (self.s.num_classes, self.s.cfg.embed_dim))
        return NayerState(
            v["params"], v["batch_stats"], embed, init_ema(self.s, self.method.bn_ema)
        )

    def begin(self, state, key, round_):
        s, cfg = self.s, self.s.cfg
        k_g, k_n, k_y = jax.random.split(key, 3)
        params, batch_stats = state.params, state.batch_stats
        if cfg.reinit_every:
            again = round_ % cfg.reinit_every == 0
            params, batch_stats = _pick(again, self._fresh(k_g), params, batch_stats)
        params = _redraw_noise(params, k_n)
        labels = s.batch(balanced_labels(k_y, cfg.batch_size, s.num_classes))
        work = self.method.begin({"g": params, "e": state.embed}, batch_stats, labels)
        return state._replace(params=params, batch_stats=batch_stats), work

    def step(self, state, work: Work, inputs: StepInputs):
        work, _, metrics = self.method.step(work, inputs, ema=state.ema)
        return work, metrics

    def end(self, state, work: Work):
        new_state = NayerState(
            work.trainable["g"],
            work.batch_stats,
            work.trainable["e"],
            ema_update(state.ema, work.moments, self.method.bn_ema),
        )
        return new_state, *kept_batch(work)
