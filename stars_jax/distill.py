"""Student state, the jitted KD step, and the DFKD round: synthesis -> bank -> KD.

Steps are pure functions ``(state, ...) -> (state, metrics)``; ``stars_jax.train`` drives
them (rounds, evaluation, checkpoints) and jits them with their shardings. The teacher's
variables are a read-only argument.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from stars_jax import losses, strength, student_tar
from stars_jax.apply import normalize
from stars_jax.bank import Bank, bank_add, bank_sample, random_crop_flip
from stars_jax.diagnostics import batch_health, class_entropy
from stars_jax.models.students import CHANNEL_RATES
from stars_jax.neurons import RESETS, LIFParams
from stars_jax.objective import TarReference, tar_reference
from stars_jax.parallel import constrain
from stars_jax.synthesis import StepInputs

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    # Length of the learning-rate schedule in steps, as data rather than a compile-time
    # constant so that a time-budgeted run can fit the cosine to the rounds it can afford.
    total_steps: jax.Array
    # The weight average (``ema_update``) of the student's variables, or None with
    # ``distill.ema_decay`` 0: the state, and its checkpoints, are then as they were without it.
    ema: Any = None

    @property
    def variables(self):
        return {"params": self.params, "batch_stats": self.batch_stats}


def ema_update(ema, variables, decay: float, step):
    """The student's weight average after update number ``step`` (1 for the first):
    ``ema <- d * ema + (1 - d) * variables`` with ``d = min(decay, step / (step + 9))``, so that
    early averages are not dominated by the initial weights (TensorFlow's
    ``ExponentialMovingAverage`` with ``num_updates``). BN statistics are averaged alike."""
    step = jnp.asarray(step, jnp.float32)
    d = jnp.minimum(decay, step / (step + 9.0))
    return jax.tree.map(lambda a, v: d * a + (1.0 - d) * v.astype(a.dtype), ema, variables)


def lif_params(cfg) -> LIFParams:
    """``config.neuron`` -> LIFParams."""
    return LIFParams(
        tau=cfg.tau,
        v_threshold=cfg.v_threshold,
        v_reset=RESETS[cfg.reset](cfg.v_reset),
        detach_reset=cfg.detach_reset,
        surrogate=cfg.surrogate,
        alpha=cfg.alpha,
        kernel=cfg.get("kernel", "scan"),  # configs saved before the switch existed
    )


def compute_dtype(name: str):
    if name not in DTYPES:
        raise ValueError(f"Unknown dtype {name!r}; valid: {sorted(DTYPES)}.")
    return DTYPES[name]


# ``distill.optimizer``: ``config.distill`` -> the update direction.
OPTIMIZERS: dict[str, Callable] = {
    "adam": lambda cfg: optax.scale_by_adam(),
    "sgd": lambda cfg: optax.trace(decay=0.9, nesterov=cfg.nesterov),
}


def make_optimizer(cfg) -> optax.GradientTransformation:
    """``config.distill`` -> the update direction of SGD (momentum 0.9, ``nesterov`` or not)
    or Adam, without the learning rate: ``scheduled_update`` scales it by ``warmup_cosine``
    at the current step."""
    opt = OPTIMIZERS[cfg.optimizer](cfg)
    if cfg.weight_decay:
        opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay), opt)
    return opt


def warmup_cosine(step, peak: float, warmup_steps: int, total_steps, floor: float = 0.0):
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine to ``floor`` at
    ``total_steps`` (optax's ``warmup_cosine_decay_schedule``, with a traced horizon;
    ``warmup_steps = 0`` starts at the peak, as PyTorch's ``CosineAnnealingLR``)."""
    step = jnp.asarray(step, jnp.float32)
    warm = jnp.float32(warmup_steps)
    decay = jnp.maximum(jnp.asarray(total_steps, jnp.float32) - warm, 1.0)
    frac = jnp.clip((step - warm) / decay, 0.0, 1.0)
    cosine = floor + (peak - floor) * 0.5 * (1 + jnp.cos(jnp.pi * frac))
    return jnp.where(step < warm, peak * step / jnp.maximum(warm, 1.0), cosine)


def scheduled_update(optimizer, grads, state: TrainState, lr):
    """``(params, opt_state)`` after one step of ``optimizer``'s direction times ``-lr``."""
    direction, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return optax.apply_updates(state.params, optax.tree.scale(-lr, direction)), opt_state


def init_train_state(
    model, optimizer, key, image_shape, total_steps: int = 0, ema: bool = False
) -> TrainState:
    """A fresh student; ``ema``: with a weight average (``ema_update``), starting at it."""
    variables = model.init(key, jnp.zeros((2, *image_shape)))
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=optimizer.init(params),
        total_steps=jnp.asarray(total_steps, jnp.int32),
        ema={"params": params, "batch_stats": batch_stats} if ema else None,
    )


@dataclasses.dataclass(frozen=True)
class KDContext:
    """Static pieces of the KD step (closed over, not traced). Beyond the models, optimizer
    and normalisation, every field is a keyword with plain KD's value as its default."""

    teacher: Any
    student: Any
    optimizer: optax.GradientTransformation  # The direction (make_optimizer), without the lr.
    mean: tuple
    std: tuple
    _: dataclasses.KW_ONLY
    lr: float  # Peak learning rate of ``warmup_cosine``.
    warmup_steps: int = 0
    lr_min: float = 0.0  # The cosine's floor.
    t_kd: float = 4.0
    per_time_step: bool = False
    b_rca: float = 0.0
    rca_rep: str = "logits"
    b_tar: float = 0.0  # TAR on the student's side (``student_tar``).
    crop_pad: int = 0
    flip: bool = False
    dtype: Any = jnp.float32
    batch_sharding: Any = None  # NamedSharding of [B, ...] batches under a mesh, or None
    num_classes: int = 10
    ema_decay: float = 0.0  # The student's weight average (``ema_update``); 0: none.


def train_view(images_u8, key, crop_pad: int, flip: bool, mean, std):
    """A training batch as the model sees it: random crop (and flip), normalised."""
    return normalize(random_crop_flip(key, images_u8, crop_pad, flip=flip), mean, std)


def apply_train(model, params, batch_stats, x):
    """The model's outputs in training mode, and its BN statistics after this batch."""
    variables = {"params": params, "batch_stats": batch_stats}
    out, new_vars = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return out, new_vars["batch_stats"]


def advanced(state: TrainState, params, batch_stats, opt_state) -> TrainState:
    """``state`` one step on."""
    return state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )


def _teacher_kd(ctx: KDContext, teacher_vars, x):
    """The teacher's (logits, features) on a KD batch, constant, and where its units fire
    (``student_tar``; only when ``b_tar`` asks)."""
    firing = None
    if ctx.b_tar:
        out, inter = ctx.teacher.apply(teacher_vars, x, mutable=["intermediates"])
        firing = student_tar.teacher_firing(inter["intermediates"])
    else:
        out = ctx.teacher.apply(teacher_vars, x)
    return jax.lax.stop_gradient((out, firing))


def kd_step(ctx: KDContext, state: TrainState, teacher_vars, images_u8, key):
    """One student update on ``L_KD`` for a uint8 batch ``[B, H, W, C]``."""
    x = train_view(images_u8, key, ctx.crop_pad, ctx.flip, ctx.mean, ctx.std)
    (t_logits, t_feats), t_firing = _teacher_kd(ctx, teacher_vars, x)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        collections = ["batch_stats"] + ([CHANNEL_RATES] if ctx.b_tar else [])
        (s_logits_t, s_feats_t), new_vars = ctx.student.apply(
            variables, x.astype(ctx.dtype), train=True, mutable=collections
        )
        kd = losses.kd_loss(t_logits, s_logits_t, ctx.t_kd, ctx.per_time_step)
        metrics = {"kd/kd": kd}
        total = kd
        if ctx.b_rca:
            metrics["kd/rca"] = losses.rca_loss(
                ctx.rca_rep, (t_logits, t_feats), (s_logits_t, s_feats_t)
            )
            total = total + ctx.b_rca * metrics["kd/rca"]
        if ctx.b_tar:
            rates = student_tar.student_rates(new_vars[CHANNEL_RATES])
            metrics["kd/tar"] = student_tar.loss(t_firing, rates)
            total = total + ctx.b_tar * metrics["kd/tar"]
        batch_stats = new_vars["batch_stats"]
        metrics["kd/loss"] = total
        agree = jnp.argmax(losses.time_mean(s_logits_t), -1) == jnp.argmax(t_logits, -1)
        metrics["kd/agreement"] = jnp.mean(agree)
        return total, (metrics, batch_stats)

    (_, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    lr = warmup_cosine(state.step, ctx.lr, ctx.warmup_steps, state.total_steps, ctx.lr_min)
    params, opt_state = scheduled_update(ctx.optimizer, grads, state, lr)
    new_state = advanced(state, params, batch_stats, opt_state)
    if ctx.ema_decay:
        ema = ema_update(state.ema, new_state.variables, ctx.ema_decay, new_state.step)
        new_state = new_state.replace(ema=ema)
    metrics["kd/grad_norm"] = optax.tree.norm(grads)
    metrics["kd/lr"] = lr
    return new_state, metrics


def kd_bank_step(ctx: KDContext, batch_size: int, state, teacher_vars, bank: Bank, key):
    """A KD step on a batch drawn (on device) from the memory bank."""
    k_sample, k_aug = jax.random.split(key)
    images, _ = bank_sample(bank, k_sample, batch_size)
    return kd_step(ctx, state, teacher_vars, constrain(images, ctx.batch_sharding), k_aug)


def add_synthetic(ctx: KDContext, bank: Bank, teacher_vars, images_u8, labels):
    """The round's kept batch into the bank, with the teacher's predictions on it; returns
    the bank and the batch's health (``stars_jax.diagnostics``) and the whole bank's class
    entropy."""
    preds, health = batch_health(
        ctx.teacher, teacher_vars, images_u8, labels, ctx.mean, ctx.std, ctx.num_classes
    )
    bank = bank_add(bank, images_u8, labels, preds)
    valid = jnp.arange(bank.preds.shape[0]) < bank.count
    health["bank_entropy"] = class_entropy(bank.preds, ctx.num_classes, valid)
    return bank, preds, {f"synth/{k}": v for k, v in health.items()}


def bank_tar_reference(ctx: KDContext, synth_cfg, teacher_vars, bank: Bank, key) -> TarReference:
    """Percentile-TAR thresholds from the teacher on a synthesis-sized batch drawn from the
    memory bank (the images synthesised so far); not ready while the bank is empty."""
    images, _ = bank_sample(bank, key, synth_cfg.batch_size)
    x = normalize(constrain(images, ctx.batch_sharding), ctx.mean, ctx.std)
    return tar_reference(x, teacher_vars, teacher=ctx.teacher, cfg=synth_cfg, ready=bank.count > 0)


def batch_grad_ratios(
    ctx: KDContext, synth_cfg, teacher_vars, student_vars, images_u8, labels, tar_ref, weights=None
) -> dict:
    """``{term: ratio}``: the norm of each weighted synthesis term's gradient on a uint8 batch
    (normalised, unaugmented) over the BN term's (``strength``; at the config's weights unless
    ``weights``; terms at weight 0 left out); {} without a BN term to measure against."""
    x = normalize(constrain(images_u8, ctx.batch_sharding), ctx.mean, ctx.std)
    grads = strength.term_gradients(
        x,
        labels,
        teacher_vars,
        student_vars,
        teacher=ctx.teacher,
        student=ctx.student,
        cfg=synth_cfg,
        tar_ref=tar_ref,
        weights=weights,
    )
    return strength.gradient_ratios(grads) if "bn" in grads else {}


def synthesis_grad_ratios(
    ctx: KDContext, synth_cfg, teacher_vars, student_vars, images_u8, labels, tar_ref
) -> dict:
    """How strongly each synthesis term acts on the round's kept batch: ``synth/grad_ratio/
    <term>`` (``batch_grad_ratios`` at the config's weights)."""
    ratios = batch_grad_ratios(
        ctx, synth_cfg, teacher_vars, student_vars, images_u8, labels, tar_ref
    )
    return {f"synth/grad_ratio/{k}": v for k, v in ratios.items()}


class RoundSteps(NamedTuple):
    """The jitted pieces of a round; state arguments are donated."""

    synth_begin: Callable | None
    synth_step: Callable | None
    synth_end: Callable | None
    add_synthetic: Callable | None
    kd_bank_step: Callable
    tar_reference: Callable | None = None  # (teacher_vars, bank, key) -> TarReference
    # (teacher_vars, student_vars, images, labels, tar_ref) -> synth/grad_ratio/* metrics
    grad_ratios: Callable | None = None


_STEP_IDS = itertools.count()


def _max_traces(fn, n: int, name: str):
    """``fn`` under ``chex.assert_max_traces``: a step traced more than ``n`` times (an input
    whose shape, dtype or static part changes between calls recompiles it every time) is an
    error naming it. chex counts per footprint (where and what is wrapped); a name unique to
    this wrapper gives every ``RoundSteps`` its own count, as one process may build many (the
    baseline's beside a run's, runs in tests and sweeps)."""

    try:
        import chex  # The [test] extra (setup.py); without it the steps run unguarded.
    except ImportError:
        return fn

    def traced(*args):
        return fn(*args)

    traced.__name__ = traced.__qualname__ = f"{name}#{next(_STEP_IDS)}"
    return chex.assert_max_traces(traced, n)


def make_round_steps(synthesizer, ctx: KDContext, batch_size: int, synth_cfg=None) -> RoundSteps:
    """The round's jitted steps, each traced once (the synthesis step twice: warm-up steps and
    the others; ``chex.assert_max_traces``). ``synth_cfg``: the synthesizer's config; with
    percentile TAR on, each round first draws its thresholds' reference batch from the bank."""
    kd = _max_traces(functools.partial(kd_bank_step, ctx, batch_size), 1, "kd_bank_step")
    kd = jax.jit(kd, donate_argnums=0)
    if synthesizer is None:  # real_data mode
        return RoundSteps(None, None, None, None, kd)
    tar_ref = None
    if synth_cfg is not None and synth_cfg.l_tar and synth_cfg.tar_thresholds == "percentile":
        ref = _max_traces(functools.partial(bank_tar_reference, ctx, synth_cfg), 1, "tar_reference")
        tar_ref = jax.jit(ref)
    add = functools.partial(add_synthetic, ctx)
    ratios = None
    if synth_cfg is not None:
        ratios = functools.partial(synthesis_grad_ratios, ctx, synth_cfg)
        ratios = jax.jit(_max_traces(ratios, 1, "grad_ratios"))
    return RoundSteps(
        synth_begin=jax.jit(_max_traces(synthesizer.begin, 1, "synth_begin"), donate_argnums=0),
        synth_step=jax.jit(_max_traces(synthesizer.step, 2, "synth_step"), donate_argnums=1),
        synth_end=jax.jit(_max_traces(synthesizer.end, 1, "synth_end"), donate_argnums=0),
        add_synthetic=jax.jit(_max_traces(add, 1, "add_synthetic"), donate_argnums=0),
        kd_bank_step=kd,
        tar_reference=tar_ref,
        grad_ratios=ratios,
    )


class Carry(NamedTuple):
    """What the rounds advance: checkpointed as a plain tuple in this order
    (``checkpoint.save_run``), the layout of checkpoints written before it had names."""

    student: TrainState
    synth_state: Any  # the synthesizer's persistent state ({} without one)
    bank: Bank


class RoundOutput(NamedTuple):
    images: jax.Array | None  # the kept synthetic batch, uint8 [B, H, W, C] (None: real data)
    labels: jax.Array | None  # the labels it was synthesised for
    preds: jax.Array | None  # the teacher's classes on it
    metrics: dict
    synth_seconds: float = 0.0  # wall time of the synthesis part (with ``timed``)


def run_round(
    steps: RoundSteps,
    carry: Carry,
    teacher_vars,
    key,
    round_: int,
    synth_steps: int,
    kd_steps: int,
    warmup: bool = False,
    timed: bool = False,
    ratios: bool = False,
):
    """One DFKD round: ``synth_steps`` synthesis steps, the kept batch into the bank, then
    ``kd_steps`` student updates from the bank. Everything stays on device. In a warm-up
    round the synthesis objective is BN + CE only (``warmup``); callers pass ``kd_steps=0``.
    ``timed`` waits for the synthesis to finish before the KD steps are dispatched, to time it
    (one host sync a round). ``ratios`` adds the synthesis terms' gradient ratios on the kept
    batch (``synthesis_grad_ratios``; not in warm-up rounds, not counted in the timing).

    Args:
      carry: the student's state, the synthesizer's state and the bank (``Carry``).
      round_: the round's index (synthesizers reset or re-initialise on some rounds).

    Returns:
      ``(carry, RoundOutput)``; synthesis metrics are those of the last step plus the kept
      batch's health, KD metrics are averaged over the round's steps.
    """
    state, synth_state, bank = carry
    t0 = time.perf_counter()
    k_syn, k_kd = jax.random.split(key)
    metrics, out = {}, RoundOutput(None, None, None, {})
    if steps.synth_step is not None:
        tar_ref = None
        if steps.tar_reference is not None and not warmup:
            k_ref = jax.random.fold_in(key, 1)  # not k_syn's or k_kd's stream
            tar_ref = steps.tar_reference(teacher_vars, bank, k_ref)
        synth_state, work = steps.synth_begin(synth_state, jax.random.fold_in(k_syn, 0), round_)
        for i in range(synth_steps):
            key_i = jax.random.fold_in(k_syn, i + 1)
            inputs = StepInputs(teacher_vars, state.variables, key_i, tar_ref, warmup=warmup)
            work, metrics = steps.synth_step(synth_state, work, inputs)
        synth_state, images, labels = steps.synth_end(synth_state, work)
        bank, preds, health = steps.add_synthetic(bank, teacher_vars, images, labels)
        metrics = {**metrics, **health}
        out = RoundOutput(images, labels, preds, {})
        if timed:
            jax.block_until_ready(bank.count)
            out = out._replace(synth_seconds=time.perf_counter() - t0)
        if ratios and steps.grad_ratios is not None and not warmup:
            student_vars = state.variables
            metrics.update(steps.grad_ratios(teacher_vars, student_vars, images, labels, tar_ref))
    kd_sum = None
    for j in range(kd_steps):
        state, m = steps.kd_bank_step(state, teacher_vars, bank, jax.random.fold_in(k_kd, j))
        kd_sum = m if kd_sum is None else jax.tree.map(jnp.add, kd_sum, m)
    metrics = {**metrics, **jax.tree.map(lambda v: v / kd_steps, kd_sum or {})}
    return Carry(state, synth_state, bank), out._replace(metrics=metrics)
