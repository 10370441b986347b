"""What every synthesizer shares: the interface, its set-up, the kept batch, labels, BN EMA.

A synthesizer is four pure functions over typed states (``Synthesizer``); the round loop in
``stars_jax.distill`` jits them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from stars_jax.apply import normalize
from stars_jax.objective import (
    BNMoments,
    crop_flip,
    synthesis_loss,
    update_ema,
    zero_moments,
)
from stars_jax.parallel import constrain


class Synthesizer(NamedTuple):
    """Pure functions of one synthesizer; the caller jits them and loops over ``step``.

    A Python loop over separately jitted steps, not a ``lax.scan``: XLA:CPU runs convolutions
    inside while-loops several times slower, and the hot step is what benchmarks time.
    """

    init: Callable  # (key, teacher_vars) -> state, persistent across rounds (checkpointed)
    begin: Callable  # (state, key, round_) -> (state, work): fresh latents/pixels, labels
    # (state, work, teacher_vars, student_vars, key, warmup, tar_ref) -> (work, metrics);
    # tar_ref: objective.TarReference for percentile TAR, else None.
    step: Callable
    end: Callable  # (state, work) -> (state, images_u8 [B, H, W, C], labels [B])


@dataclasses.dataclass(frozen=True)
class SynthSetup:
    """What every synthesizer is built from (static: closed over, not traced)."""

    cfg: Any  # config.synth
    teacher: Any
    student: Any
    image_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple
    std: tuple
    batch_sharding: Any = None  # NamedSharding of [B, ...] batches under a mesh, or None

    def normalize(self, x01):
        return normalize(x01, self.mean, self.std)

    def batch(self, x):
        return constrain(x, self.batch_sharding)

    def loss(self, x01, labels, teacher_vars, student_vars, key, warmup, bn_ema=None, tar_ref=None):
        """L_syn on the crop+flip view of ``[0, 1]`` images (the generator methods)."""
        view = crop_flip(key, x01, self.cfg.crop_pad, self.cfg.flip)
        return synthesis_loss(
            self.normalize(view),
            labels,
            teacher_vars,
            student_vars,
            teacher=self.teacher,
            student=self.student,
            cfg=self.cfg,
            bn_ema=bn_ema,
            warmup=warmup,
            tar_ref=tar_ref,
        )


class NoState(NamedTuple):
    """The persistent state of a synthesizer that keeps none (DeepInversion)."""


class Best(NamedTuple):
    """The round's lowest-loss batch so far."""

    loss: jax.Array  # scalar; +inf before the first step
    x01: jax.Array  # [B, H, W, C] in [0, 1]


def no_best(x01) -> Best:
    return Best(jnp.asarray(jnp.inf, jnp.float32), jnp.zeros_like(x01))


def keep_best(best: Best, loss, x01) -> Best:
    better = loss < best.loss  # strict, as the references: ties keep the earlier batch
    return Best(jnp.where(better, loss, best.loss), jnp.where(better, x01, best.x01))


def random_labels(key, batch_size: int, num_classes: int):
    return jax.random.randint(key, (batch_size,), 0, num_classes)


def balanced_labels(key, batch_size: int, num_classes: int):
    """NAYER's labels: ``0..K-1`` repeated ``B // K`` times, then ``B % K`` random ones."""
    full = (batch_size // num_classes) * num_classes
    rest = random_labels(key, batch_size - full, num_classes)
    return jnp.concatenate([jnp.arange(full) % num_classes, rest]).astype(jnp.int32)


class EMA(NamedTuple):
    """Teacher BN moments averaged over rounds (Fast's ``bn_mmt``), blended into L_BN."""

    moments: BNMoments
    ready: jax.Array  # bool: it holds at least one batch


def init_ema(s: SynthSetup) -> EMA | None:
    if not s.cfg.bn_ema:
        return None
    return EMA(zero_moments(s.teacher, s.image_shape), jnp.zeros((), bool))


def ema_blend(ema: EMA | None, momentum: float):
    return None if ema is None else (ema.moments, jnp.where(ema.ready, momentum, 0.0))


def ema_update(ema: EMA | None, last: BNMoments, momentum: float) -> EMA | None:
    if ema is None:
        return None
    return EMA(update_ema(ema.moments, last, ema.ready, momentum), jnp.ones((), bool))


def generator_adam(lr):
    return optax.adam(lr, b1=0.5, b2=0.999)  # the references' betas for generators


class GeneratorWork(NamedTuple):
    """A generator method's round: what its Adam steps change, and the kept batch."""

    trainable: Any  # {"g": generator params, and its trained inputs: latents, embeddings}
    batch_stats: Any  # the generator's BN statistics
    opt: Any
    labels: jax.Array
    moments: BNMoments | None  # the last step's teacher BN moments (for the EMA), or None
    best: Best


@dataclasses.dataclass(frozen=True)
class GeneratorMethod:
    """What Fast and NAYER share: Adam steps on L_syn of a generator's images.

    ``trainable["g"]`` holds the generator's params; ``gen_input(trainable, labels)`` gives its
    input (latents, label embeddings)."""

    s: SynthSetup
    gen: Any  # the flax generator module
    optimizer: optax.GradientTransformation
    gen_input: Callable

    def begin(self, trainable, batch_stats, labels) -> GeneratorWork:
        s = self.s
        x01 = s.batch(jnp.zeros((s.cfg.batch_size, *s.image_shape)))
        moments = zero_moments(s.teacher, s.image_shape) if s.cfg.bn_ema else None
        opt = self.optimizer.init(trainable)
        return GeneratorWork(trainable, batch_stats, opt, labels, moments, no_best(x01))

    def step(self, work: GeneratorWork, ema, teacher_vars, student_vars, key, warmup, tar_ref):
        """One Adam step; returns the new work, the gradients of L_syn with respect to
        ``trainable`` and the step's metrics."""
        s = self.s

        def loss_fn(tr):
            variables = {"params": tr["g"], "batch_stats": work.batch_stats}
            gen_in = self.gen_input(tr, work.labels)
            x01, new_vars = self.gen.apply(variables, gen_in, mutable=["batch_stats"])
            blend = ema_blend(ema, s.cfg.bn_ema)
            total, aux = s.loss(
                x01, work.labels, teacher_vars, student_vars, key, warmup, blend, tar_ref
            )
            return total, (aux, new_vars["batch_stats"], x01)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (aux, new_stats, x01)), grads = grad_fn(work.trainable)
        updates, opt = self.optimizer.update(grads, work.opt, work.trainable)
        new = GeneratorWork(
            trainable=optax.apply_updates(work.trainable, updates),
            batch_stats=new_stats,
            opt=opt,
            labels=work.labels,
            moments=aux.moments if s.cfg.bn_ema else None,
            best=keep_best(work.best, loss, x01),
        )
        return new, grads, aux.metrics
