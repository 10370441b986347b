"""What every synthesizer shares: the interface, its set-up, the per-step inputs, the round's
work, the kept batch, labels, the BN EMA, and the generator step of Fast, NAYER and CMI.

A synthesizer is a frozen dataclass of static parts (modules, optimizers, sizes) with the four
pure methods of ``Synthesizer``; the round loop in ``stars_jax.distill`` jits them. Every
method's round is a ``Work``; what only one method carries through a round sits in its
``extra`` slot, what it keeps across rounds in its own state type (checkpointed).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from stars_jax.apply import normalize
from stars_jax.bank import to_uint8
from stars_jax.objective import (
    BNMoments,
    TarReference,
    crop_flip,
    synthesis_loss,
    update_ema,
    zero_moments,
)
from stars_jax.parallel import constrain


@flax.struct.dataclass
class StepInputs:
    """What one synthesis step reads besides the synthesizer's state and the round's work.

    A pytree: the arrays are traced; ``warmup`` is static (one compilation for warm-up
    steps, one for the others)."""

    teacher_vars: Any  # the frozen teacher's variables (read only)
    student_vars: Any  # the student's variables, frozen during synthesis
    key: jax.Array  # this step's PRNG key
    tar_ref: TarReference | None = None  # percentile-TAR thresholds, else None
    # The synthesis-only warm-up: BN + CE, the student is not run.
    warmup: bool = flax.struct.field(pytree_node=False, default=False)


class Best(NamedTuple):
    """The round's lowest-loss batch so far."""

    loss: jax.Array  # scalar; +inf before the first step
    x01: jax.Array  # [B, H, W, C] in [0, 1]
    keep: Any = None  # what the method keeps with the batch (CMI: its features [B, 2 D])


def no_best(x01, keep=None) -> Best:
    return Best(jnp.asarray(jnp.inf, jnp.float32), jnp.zeros_like(x01), keep)


def keep_best(best: Best, loss, x01, keep=None) -> Best:
    better = loss < best.loss  # strict, as the references: ties keep the earlier batch
    pick = lambda new, old: jnp.where(better, new, old)
    return Best(pick(loss, best.loss), pick(x01, best.x01), jax.tree.map(pick, keep, best.keep))


class Work(NamedTuple):
    """A synthesizer's round in progress: the same type for every method."""

    trainable: Any  # what the round's optimizer steps move: pixels, or {"g": generator, ...}
    opt: Any  # the optimizer state of ``trainable``
    labels: jax.Array  # [B] the classes the batch is made for
    best: Best
    batch_stats: Any = None  # the generator's BN statistics (generator methods)
    moments: BNMoments | None = None  # the last step's teacher BN moments, for the EMA
    extra: Any = None  # method-specific: Fast's meta-gradient sum, CMI's projection head


class Synthesizer(abc.ABC):
    """The interface of a synthesizer: pure functions the caller jits and loops over.

    A Python loop over separately jitted steps, not a ``lax.scan``: XLA:CPU runs convolutions
    inside while-loops several times slower, and the hot step is what benchmarks time.
    """

    @abc.abstractmethod
    def init(self, key, teacher_vars):
        """The state kept across rounds (checkpointed)."""

    @abc.abstractmethod
    def begin(self, state, key, round_) -> tuple[Any, Work]:
        """``(state, work)`` of round ``round_`` (0-based): fresh latents or pixels, labels."""

    @abc.abstractmethod
    def step(self, state, work: Work, inputs: StepInputs) -> tuple[Work, dict]:
        """One optimisation step: the new work and the step's metrics (``synth/*``)."""

    @abc.abstractmethod
    def end(self, state, work: Work):
        """``(state, images_u8 [B, H, W, C], labels [B])``: the state for the next round and
        the round's kept batch."""


def kept_batch(work: Work):
    """The kept batch as ``end`` returns it: uint8 pixels and the labels they were made for."""
    return to_uint8(work.best.x01), work.labels


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

    def zeros(self, *shape):
        """A zero batch ``[synth.batch_size, *shape]``, split as the synthesized batches are."""
        return self.batch(jnp.zeros((self.cfg.batch_size, *shape)))

    def loss(self, x01, labels, inputs: StepInputs, key, bn_ema=None):
        """L_syn on the crop+flip view (drawn with ``key``) of ``[0, 1]`` images (the generator
        methods)."""
        view = crop_flip(key, x01, self.cfg.crop_pad, self.cfg.flip)
        return synthesis_loss(
            self.normalize(view),
            labels,
            inputs.teacher_vars,
            inputs.student_vars,
            teacher=self.teacher,
            student=self.student,
            cfg=self.cfg,
            bn_ema=bn_ema,
            warmup=inputs.warmup,
            tar_ref=inputs.tar_ref,
        )


class NoState(NamedTuple):
    """The persistent state of a synthesizer that keeps none (DeepInversion)."""


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


def init_ema(s: SynthSetup, momentum: float) -> EMA | None:
    if not momentum:
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


# A method's own objective term beside L_syn (CMI's contrastive term):
# (its params, images x01, SynthAux of L_syn) -> (weighted value, metrics, what to keep with
# the batch if it is the best).
Term = Callable[[Any, jax.Array, Any], tuple[jax.Array, dict, Any]]


@dataclasses.dataclass(frozen=True)
class GeneratorMethod:
    """What Fast, NAYER and CMI share: optimizer steps on L_syn of a generator's images.

    ``trainable["g"]`` holds the generator's params; ``gen_input(trainable, labels)`` gives its
    input (latents, label embeddings)."""

    s: SynthSetup
    gen: Any  # the flax generator module
    optimizer: optax.GradientTransformation
    gen_input: Callable
    bn_ema: float = 0.0  # momentum of the teacher-moment EMA over rounds; 0: none

    def begin(self, trainable, batch_stats, labels, keep=None, extra=None) -> Work:
        """A round's work from its starting point; ``keep``: zeros shaped like what the method
        keeps with the best batch."""
        s = self.s
        x01 = s.zeros(*s.image_shape)
        moments = zero_moments(s.teacher, s.image_shape) if self.bn_ema else None
        opt = self.optimizer.init(trainable)
        return Work(trainable, opt, labels, no_best(x01, keep), batch_stats, moments, extra)

    def step(self, work: Work, inputs: StepInputs, ema=None, term=None, term_params=None, key=None):
        """One optimizer step on L_syn (plus ``term`` of ``term_params``, a ``Term``), the
        crop drawn with ``key`` (default ``inputs.key``). Returns the new work (``extra``
        unchanged), the gradients ``(of trainable, of term_params)`` and the step's metrics."""
        s = self.s
        key = inputs.key if key is None else key

        def loss_fn(tr, tp):
            variables = {"params": tr["g"], "batch_stats": work.batch_stats}
            gen_in = self.gen_input(tr, work.labels)
            x01, new_vars = self.gen.apply(variables, gen_in, mutable=["batch_stats"])
            blend = ema_blend(ema, self.bn_ema)
            total, aux = s.loss(x01, work.labels, inputs, key, blend)
            metrics, keep = aux.metrics, None
            if term is not None:
                value, own, keep = term(tp, x01, aux)
                total = total + value
                metrics = {**metrics, **own, "synth/loss": total}
            return total, (metrics, aux.moments, new_vars["batch_stats"], x01, keep)

        grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
        (loss, (metrics, moments, new_stats, x01, keep)), grads = grad_fn(
            work.trainable, term_params
        )
        updates, opt = self.optimizer.update(grads[0], work.opt, work.trainable)
        new = work._replace(
            trainable=optax.apply_updates(work.trainable, updates),
            opt=opt,
            best=keep_best(work.best, loss, x01, keep),
            batch_stats=new_stats,
            moments=moments if self.bn_ema else None,
        )
        return new, grads, metrics
