"""Image synthesis from a frozen teacher: the STARS synthesis objective and two synthesizers.

- ``deepinversion``: optimise the pixels of a fresh batch every round (DeepInversion).
- ``fast``: a persistent generator, a fresh latent and labels every round, a few steps of
  joint generator/latent optimisation, and an optional Reptile meta update (Fast DFKD).

Both minimise ``synthesis_loss`` (STARS.md): BN matching, cross-entropy, the adversarial
student term, RCA and TAR. The teacher and the student are read-only arguments, evaluated in
inference mode (BN running statistics); only pixels, generator or latents receive updates.

A synthesizer is a pair of pure functions ``init(key, teacher_vars) -> state`` and
``round(state, teacher_vars, student_vars, key) -> (state, images_u8, labels, metrics)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from stars_jax import losses
from stars_jax.bank import to_uint8
from stars_jax.models.layers import BN_INPUT
from stars_jax.parallel import constrain


class TeacherBN(NamedTuple):
    names: tuple[str, ...]  # "/"-joined module paths, in forward order
    inputs: list[jax.Array]  # [B, H, W, C_l] each
    means: list[jax.Array]  # [C_l]
    vars: list[jax.Array]  # [C_l]


def teacher_bn(intermediates, batch_stats) -> TeacherBN:
    """Pairs every sown BN input with the running statistics of the same layer."""
    flat_in = traverse_util.flatten_dict(intermediates)
    flat_stats = traverse_util.flatten_dict(batch_stats)
    paths = [k[:-1] for k in flat_in if k[-1] == BN_INPUT]
    return TeacherBN(
        names=tuple("/".join(p) for p in paths),
        inputs=[flat_in[p + (BN_INPUT,)][0] for p in paths],
        means=[flat_stats[p + ("mean",)] for p in paths],
        vars=[flat_stats[p + ("var",)] for p in paths],
    )


def select_layers(names: tuple[str, ...], mode: str) -> list[int]:
    """Indices of the BN layers TAR uses: ``all`` or the last of each stage (``stage_last``).

    A stage is the top-level module name without its block index (``layer2_1`` -> ``layer2``,
    ``block3`` -> ``block3``, VGG ``block2_4`` -> ``block2``).
    """
    if mode == "all":
        return list(range(len(names)))
    if mode != "stage_last":
        raise ValueError(f"Unknown synth.tar_layers {mode!r}; valid: 'all', 'stage_last'.")
    last = {re.sub(r"_\d+$", "", n.split("/")[0]): i for i, n in enumerate(names)}
    return sorted(last.values())


def synthesis_loss(
    x, labels, teacher_vars, student_vars, *, teacher, student, cfg, bn_ema=None
) -> tuple[jax.Array, tuple[dict, list]]:
    """L_syn of STARS.md on a normalised batch ``x [B, H, W, C]`` with targets ``labels [B]``.

    Args:
      bn_ema: optional ``(means, vars, w)``: per-layer EMAs of past batch moments and a
        scalar weight; the moments matched are ``w * ema + (1 - w) * current`` (Fast's BN
        momentum; ``w = 0`` before the EMA holds any batch).

    Returns:
      ``(total, (metrics, moments))`` where ``moments`` are the current per-layer batch
      moments (for the caller's EMA).
    """
    (t_logits, t_feats), inter = teacher.apply(teacher_vars, x, mutable=["intermediates"])
    bn = teacher_bn(inter["intermediates"], teacher_vars["batch_stats"])
    moments = [losses.batch_moments(z) for z in bn.inputs]
    matched = moments
    if bn_ema is not None:
        ema_means, ema_vars, w = bn_ema
        matched = [
            (w * em + (1 - w) * m, w * ev + (1 - w) * v)
            for (m, v), em, ev in zip(moments, ema_means, ema_vars, strict=True)
        ]
    terms = {
        "bn": losses.bn_loss_from_moments(matched, bn.means, bn.vars),
        "ce": losses.cross_entropy(t_logits, labels),
    }
    weights = {"bn": cfg.a_bn, "ce": cfg.a_oh}
    if cfg.a_adv or cfg.l_rca:
        s_logits_t, s_feats_t = student.apply(student_vars, x)
        s_logits = jnp.mean(s_logits_t.astype(jnp.float32), axis=0)
        terms["adv"] = losses.adversarial_loss(t_logits, s_logits)
        weights["adv"] = cfg.a_adv
        if cfg.l_rca:
            rep_t, rep_s = (t_logits, s_logits)
            if cfg.rca_rep == "features":
                rep_t, rep_s = t_feats, jnp.mean(s_feats_t.astype(jnp.float32), axis=0)
            terms["rca"] = losses.relational_discrepancy(rep_t, rep_s)
            weights["rca"] = cfg.l_rca * cfg.rca_sign
    if cfg.l_tar:
        idx = select_layers(bn.names, cfg.tar_layers)
        terms["tar"] = losses.tar_loss(
            [bn.inputs[i] for i in idx],
            [bn.means[i] for i in idx],
            [bn.vars[i] for i in idx],
            ks=tuple(cfg.tar_k),
            temperature=cfg.tar_temperature,
            two_sided=cfg.tar_two_sided,
        )
        weights["tar"] = cfg.l_tar
    total = sum(weights[k] * v for k, v in terms.items())
    metrics = {f"synth/{k}": v for k, v in terms.items()}
    metrics["synth/loss"] = total
    metrics["synth/teacher_acc"] = jnp.mean(jnp.argmax(t_logits, -1) == labels)
    return total, (metrics, moments)


def jitter(key, x, max_shift: int):
    """DeepInversion's augmentation: a random roll of up to ``max_shift`` pixels and a flip."""
    if max_shift <= 0:
        return x
    k_shift, k_flip = jax.random.split(key)
    dy, dx = jax.random.randint(k_shift, (2,), -max_shift, max_shift + 1)
    x = jnp.roll(x, (dy, dx), axis=(1, 2))
    return jnp.where(jax.random.bernoulli(k_flip), x[:, :, ::-1], x)


class Generator(nn.Module):
    """Fast DFKD's generator: latent -> [0, 1] images ``[B, H, W, C]`` (H, W divisible by 4)."""

    image_shape: tuple[int, int, int]
    width: int = 64  # ngf

    @nn.compact
    def __call__(self, z, train: bool = True):
        h, w, c = self.image_shape
        bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
        up = lambda y: jnp.repeat(jnp.repeat(y, 2, axis=1), 2, axis=2)  # nearest, x2
        x = nn.Dense(2 * self.width * (h // 4) * (w // 4), name="l1")(z)
        x = bn()(x.reshape(z.shape[0], h // 4, w // 4, 2 * self.width))
        x = nn.Conv(2 * self.width, (3, 3), padding=1, use_bias=False)(up(x))
        x = nn.leaky_relu(bn()(x), 0.2)
        x = nn.Conv(self.width, (3, 3), padding=1, use_bias=False)(up(x))
        x = nn.leaky_relu(bn()(x), 0.2)
        return nn.sigmoid(nn.Conv(c, (3, 3), padding=1)(x))


class Synthesizer(NamedTuple):
    """Pure functions of one synthesizer; the caller jits them and loops over ``step``.

    A Python loop over separately jitted steps, not a ``lax.scan``: XLA:CPU runs convolutions
    inside while-loops several times slower, and the hot step is what benchmarks time.
    """

    init: Callable  # (key, teacher_vars) -> state (persists across rounds)
    begin: Callable  # (state, key) -> work (fresh latents/pixels, labels, inner optimizer)
    step: Callable  # (work, teacher_vars, student_vars, key) -> (work, metrics)
    end: Callable  # (state, work) -> (state, images_u8 [B, H, W, C], labels [B])


def _random_labels(key, batch_size, num_classes):
    return jax.random.randint(key, (batch_size,), 0, num_classes)


def make_deepinversion(
    cfg, teacher, student, image_shape, num_classes, mean, std, batch_sharding=None
) -> Synthesizer:
    """Pixel optimisation from N(0, 1) noise in normalised space, clipped to valid pixels."""
    mean, std = jnp.asarray(mean), jnp.asarray(std)
    lo, hi = (0.0 - mean) / std, (1.0 - mean) / std
    opt = optax.adam(cfg.lr, b1=0.5, b2=0.9)

    def begin(state, key):
        k_x, k_y = jax.random.split(key)
        x = constrain(jax.random.normal(k_x, (cfg.batch_size, *image_shape)), batch_sharding)
        y = constrain(_random_labels(k_y, cfg.batch_size, num_classes), batch_sharding)
        return {"x": x, "y": y, "opt": opt.init(x)}

    def step(work, teacher_vars, student_vars, key):
        def loss_fn(x):
            total, (metrics, _) = synthesis_loss(
                jitter(key, x, cfg.jitter), work["y"], teacher_vars, student_vars,
                teacher=teacher, student=student, cfg=cfg,
            )  # fmt: skip
            prior = cfg.a_tv * losses.tv_loss(x) + cfg.a_l2 * losses.l2_prior(x)
            return total + prior, metrics

        (_, metrics), g = jax.value_and_grad(loss_fn, has_aux=True)(work["x"])
        updates, opt_state = opt.update(g, work["opt"], work["x"])
        x = jnp.clip(optax.apply_updates(work["x"], updates), lo, hi)
        return {"x": x, "y": work["y"], "opt": opt_state}, metrics

    def end(state, work):
        return state, to_uint8(work["x"] * std + mean), work["y"]

    return Synthesizer(init=lambda key, teacher_vars: {}, begin=begin, step=step, end=end)


def make_fast(
    cfg, teacher, student, image_shape, num_classes, mean, std, batch_sharding=None
) -> Synthesizer:
    """Fast DFKD: persistent generator + fresh latents; Reptile meta step when enabled."""
    gen = Generator(tuple(image_shape), cfg.generator_width)
    mean, std = jnp.asarray(mean), jnp.asarray(std)
    betas = {"b1": 0.5, "b2": 0.999}
    inner = optax.multi_transform(
        {"g": optax.adam(cfg.lr, **betas), "z": optax.adam(cfg.lr_z, **betas)},
        {"g": "g", "z": "z"},
    )
    meta = optax.adam(cfg.lr * cfg.steps * cfg.meta_lr_scale, **betas)
    z0 = jnp.zeros((2, cfg.latent_dim))

    def init(key, teacher_vars):
        variables = gen.init(key, z0)
        params = variables["params"]
        state = {
            "params": params,
            "batch_stats": variables["batch_stats"],
            "meta": meta.init(params),
        }
        if cfg.bn_ema:
            # EMA of the teacher's per-layer batch moments; zeros until the first round.
            x = jnp.zeros((2, *image_shape))
            _, inter = jax.eval_shape(
                lambda v: teacher.apply(v, x, mutable=["intermediates"]), teacher_vars
            )
            bn = teacher_bn(inter["intermediates"], teacher_vars["batch_stats"])
            zeros = lambda: [jnp.zeros(m.shape, jnp.float32) for m in bn.means]
            state["bn_ema"] = (zeros(), zeros())  # distinct buffers: the state is donated
            state["ema_ready"] = jnp.zeros((), bool)
        return state

    def begin(state, key):
        k_z, k_y, k_l0 = jax.random.split(key, 3)
        params = state["params"]
        if cfg.reset_l0:
            params = {**params, "l1": gen.init(k_l0, z0)["params"]["l1"]}
        z = jax.random.normal(k_z, (cfg.batch_size, cfg.latent_dim))
        trainable = {"g": params, "z": constrain(z, batch_sharding)}
        x01 = constrain(jnp.zeros((cfg.batch_size, *image_shape)), batch_sharding)
        return {
            "trainable": trainable,
            "start": params,  # Reptile's anchor: the generator before the inner steps.
            "batch_stats": state["batch_stats"],
            "opt": inner.init(trainable),
            "y": constrain(_random_labels(k_y, cfg.batch_size, num_classes), batch_sharding),
            "x01": x01,
            # Moments to blend with in every step (weight 0 until the EMA holds a batch),
            # and the latest batch moments, for the EMA update in `end`.
            "ema": (*state["bn_ema"], jnp.where(state["ema_ready"], cfg.bn_ema, 0.0))
            if cfg.bn_ema
            else None,
            "moments": state.get("bn_ema"),
        }

    def step(work, teacher_vars, student_vars, key):
        def loss_fn(trainable):
            x01, new_vars = gen.apply(
                {"params": trainable["g"], "batch_stats": work["batch_stats"]},
                trainable["z"],
                mutable=["batch_stats"],
            )
            x = jitter(key, (x01 - mean) / std, cfg.jitter)
            total, (metrics, moments) = synthesis_loss(
                x, work["y"], teacher_vars, student_vars,
                teacher=teacher, student=student, cfg=cfg, bn_ema=work["ema"],
            )  # fmt: skip
            return total, (metrics, moments, new_vars["batch_stats"], x01)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, (metrics, moments, batch_stats, x01)), g = grad_fn(work["trainable"])
        updates, opt_state = inner.update(g, work["opt"], work["trainable"])
        new_work = {
            **work,
            "trainable": optax.apply_updates(work["trainable"], updates),
            "batch_stats": batch_stats,
            "opt": opt_state,
            "x01": x01,  # The batch the loss was evaluated on, as Fast keeps it.
            "moments": None if work["moments"] is None else _unzip(moments),
        }
        return new_work, metrics

    def end(state, work):
        fast = work["trainable"]["g"]
        new_state = {**state, "batch_stats": work["batch_stats"]}
        if cfg.reptile:
            meta_grad = jax.tree.map(lambda p, f: p - f, work["start"], fast)
            updates, new_state["meta"] = meta.update(meta_grad, state["meta"], work["start"])
            new_state["params"] = optax.apply_updates(work["start"], updates)
        else:
            new_state["params"] = fast
        if cfg.bn_ema:
            new_state["bn_ema"] = _update_ema(
                state["bn_ema"], work["moments"], state["ema_ready"], cfg.bn_ema
            )
            new_state["ema_ready"] = jnp.ones((), bool)
        return new_state, to_uint8(work["x01"]), work["y"]

    return Synthesizer(init=init, begin=begin, step=step, end=end)


def _unzip(moments):
    """[(mean, var), ...] -> ([mean, ...], [var, ...]), stop-gradient'ed."""
    moments = jax.lax.stop_gradient(moments)
    return [m for m, _ in moments], [v for _, v in moments]


def _update_ema(ema, current, ready, mmt):
    """EMA of per-layer moments; the first batch initialises it."""
    return jax.tree.map(lambda e, c: jnp.where(ready, mmt * e + (1 - mmt) * c, c), ema, current)


SYNTHESIZERS = {"deepinversion": make_deepinversion, "fast": make_fast}


def make_synthesizer(
    cfg, teacher, student, image_shape, num_classes, mean, std, batch_sharding=None
) -> Synthesizer:
    """The synthesizer named by ``cfg.method``; ``batch_sharding`` splits its batch."""
    if cfg.method not in SYNTHESIZERS:
        raise ValueError(f"Unknown synth.method {cfg.method!r}; valid: {sorted(SYNTHESIZERS)}.")
    make = SYNTHESIZERS[cfg.method]
    return make(cfg, teacher, student, image_shape, num_classes, mean, std, batch_sharding)
