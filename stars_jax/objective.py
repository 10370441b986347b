"""The synthesis objective L_syn of STARS.md on a frozen teacher (and student), and the
augmentations synthesizers apply before the teacher sees a batch.

The teacher and the student are read-only arguments, evaluated in inference mode (BN running
statistics); only what the caller differentiates (pixels, generator, latents) moves.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import traverse_util

from stars_jax import losses
from stars_jax.bank import random_crop_flip
from stars_jax.models.layers import BN_INPUT


class TeacherBN(NamedTuple):
    names: tuple[str, ...]  # "/"-joined module paths, in forward order
    inputs: list[jax.Array]  # [B, H, W, C_l] each
    means: list[jax.Array]  # [C_l]
    vars: list[jax.Array]  # [C_l]
    # The layers' affine parameters gamma and beta ([C_l] each), when ``params`` was given.
    scales: list[jax.Array] | None = None
    biases: list[jax.Array] | None = None


def _natural(path: tuple[str, ...]) -> tuple:
    """Sort key of a module path with its numbers as numbers (``features_2`` < ``features_10``)."""
    return tuple(tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p)) for p in path)


def teacher_bn(intermediates, batch_stats, params=None) -> TeacherBN:
    """Pairs every sown BN input with the running statistics of the same layer (and, with
    ``params``, its scale and bias), in natural order of their paths: the same order whether
    the trees come in call order (a traced apply) or sorted (``jax.eval_shape`` and other
    pytree round trips sort dict keys)."""
    flat_in = traverse_util.flatten_dict(intermediates)
    flat_stats = traverse_util.flatten_dict(batch_stats)
    paths = sorted((k[:-1] for k in flat_in if k[-1] == BN_INPUT), key=_natural)
    scales = biases = None
    if params is not None:
        flat_p = traverse_util.flatten_dict(params)
        missing = [p for p in paths if p + ("scale",) not in flat_p or p + ("bias",) not in flat_p]
        if missing:
            raise ValueError(
                f"The teacher's BN layer {'/'.join(missing[0])} has no scale and bias "
                "parameters, which synth.tar_thresholds='bn_affine' reads; use 'gaussian'."
            )
        scales = [flat_p[p + ("scale",)] for p in paths]
        biases = [flat_p[p + ("bias",)] for p in paths]
    return TeacherBN(
        names=tuple("/".join(p) for p in paths),
        inputs=[flat_in[p + (BN_INPUT,)][0] for p in paths],
        means=[flat_stats[p + ("mean",)] for p in paths],
        vars=[flat_stats[p + ("var",)] for p in paths],
        scales=scales,
        biases=biases,
    )


def _stage_last(names: tuple[str, ...]) -> list[int]:
    """The last BN layer of each stage: a stage is the top-level module name without its block
    index (``layer2_1`` -> ``layer2``, ``block3`` -> ``block3``, VGG ``block2_4`` -> ``block2``)."""
    last = {re.sub(r"_\d+$", "", n.split("/")[0]): i for i, n in enumerate(names)}
    return sorted(last.values())


# ``synth.tar_layers``, ``synth.cmi_layers``: which BN layers a term reads.
LAYER_SELECTIONS = {"all": lambda names: list(range(len(names))), "stage_last": _stage_last}


def select_layers(names: tuple[str, ...], mode: str) -> list[int]:
    """Indices of BN layers: ``all`` or the last of each stage (``stage_last``)."""
    if mode not in LAYER_SELECTIONS:
        raise ValueError(f"Unknown layer selection {mode!r}; valid: {sorted(LAYER_SELECTIONS)}.")
    return LAYER_SELECTIONS[mode](names)


TAR_THRESHOLDS = ("gaussian", "percentile", "bn_affine")


def _tar_views(bn: TeacherBN, cfg) -> list[tuple[jax.Array, float]]:
    """What TAR scores, in one fixed order: ``(z, k)`` for the layers ``tar_layers``
    selects, each k, the upper tail and (``tar_two_sided``) the lower one, scored as the upper
    tail of ``-z``."""
    signs = (1.0, -1.0) if cfg.tar_two_sided else (1.0,)
    return [
        (sign * bn.inputs[i], float(k))
        for i in select_layers(bn.names, cfg.tar_layers)
        for k in cfg.tar_k
        for sign in signs
    ]


class TarReference(NamedTuple):
    """Percentile-TAR thresholds (``synth.tar_thresholds='percentile'``), one
    ``(tau, scale, target)`` per ``_tar_views`` entry, from a reference batch."""

    thresholds: tuple
    ready: jax.Array  # bool: the reference batch held real entries (the bank was not empty)


def gaussian_quantile(k: float) -> float:
    """Phi(k): the quantile at which a Gaussian channel's threshold is mu + k sigma."""
    return 0.5 * (1.0 + math.erf(k / math.sqrt(2.0)))


def tar_reference(x, teacher_vars, *, teacher, cfg, ready=True) -> TarReference:
    """Percentile thresholds from the teacher's BN inputs on a normalised reference batch
    ``x``: per channel, the ``Phi(k)`` quantile (so k keeps its meaning on a Gaussian
    channel), and as target the reference's own soft exceedance there (losses.
    percentile_thresholds). The trainer draws ``x`` from the memory bank each round."""
    _, inter = teacher.apply(teacher_vars, x, mutable=["intermediates"])
    bn = teacher_bn(inter["intermediates"], teacher_vars["batch_stats"])
    thresholds = tuple(
        losses.percentile_thresholds(z, gaussian_quantile(k), cfg.tar_temperature)
        for z, k in _tar_views(bn, cfg)
    )
    return TarReference(thresholds, jnp.asarray(ready, bool))


def tar_term(bn: TeacherBN, cfg, tar_ref: TarReference | None) -> jax.Array:
    """L_TAR with the thresholds ``synth.tar_thresholds`` names: from the teacher's BN
    statistics (STARS.md), or percentiles of a reference batch (``tar_ref``; 0 until ready)."""
    if cfg.tar_thresholds == "percentile":
        if tar_ref is None:
            raise ValueError("synth.tar_thresholds='percentile' needs a reference (tar_ref).")
        total = losses.tar_loss_percentile(
            [z for z, _ in _tar_views(bn, cfg)], tar_ref.thresholds, cfg.tar_temperature
        )
        return jnp.where(tar_ref.ready, total, 0.0)
    idx = select_layers(bn.names, cfg.tar_layers)
    if cfg.tar_thresholds == "bn_affine":
        if bn.scales is None:
            raise ValueError("synth.tar_thresholds='bn_affine' needs the BN layers' affine.")
        return losses.tar_loss_affine(
            [bn.inputs[i] for i in idx],
            [bn.means[i] for i in idx],
            [bn.vars[i] for i in idx],
            [bn.scales[i] for i in idx],
            [bn.biases[i] for i in idx],
            temperature=cfg.tar_temperature,
        )
    if cfg.tar_thresholds != "gaussian":
        raise ValueError(
            f"Unknown synth.tar_thresholds {cfg.tar_thresholds!r}; valid: {TAR_THRESHOLDS}."
        )
    return losses.tar_loss(
        [bn.inputs[i] for i in idx],
        [bn.means[i] for i in idx],
        [bn.vars[i] for i in idx],
        ks=tuple(cfg.tar_k),
        temperature=cfg.tar_temperature,
        two_sided=cfg.tar_two_sided,
    )


class BNMoments(NamedTuple):
    """Per-layer channel moments of the teacher's BN inputs (lists over layers of ``[C_l]``)."""

    means: list[jax.Array]
    vars: list[jax.Array]


class SynthAux(NamedTuple):
    """What one evaluation of L_syn yields besides its value."""

    metrics: dict
    moments: BNMoments  # the batch's own moments (for an EMA over rounds)
    bn: TeacherBN  # BN inputs and running statistics (CMI's features come from them)


def synthesis_loss(
    x,
    labels,
    teacher_vars,
    student_vars,
    *,
    teacher,
    student,
    cfg,
    bn_ema=None,
    warmup=False,
    tar_ref: TarReference | None = None,
) -> tuple[jax.Array, SynthAux]:
    """L_syn of STARS.md on a normalised batch ``x [B, H, W, C]`` with targets ``labels [B]``.

    Args:
      bn_ema: optional ``(BNMoments, w)``: EMAs of past batch moments and a scalar weight; the
        moments matched are ``w * ema + (1 - w) * current`` (Fast's ``bn_mmt``; ``w = 0``
        before the EMA holds any batch).
      warmup: the synthesis-only warm-up of the reference Fast: BN + CE only, the student is
        not run (no adversarial, RCA or TAR term).
      tar_ref: percentile-TAR thresholds (``tar_reference``), read only when
        ``cfg.tar_thresholds == 'percentile'``.

    Returns:
      ``(total, SynthAux)``. Metrics: every term unweighted, the total, and with the student in
      the loop the fraction of samples the adversarial mask keeps (``adv_mask``) and the
      student's logit spread over the batch (``student_logit_std``, mean over classes).
    """
    (t_logits, t_feats), inter = teacher.apply(teacher_vars, x, mutable=["intermediates"])
    affine = teacher_vars["params"] if cfg.tar_thresholds == "bn_affine" else None
    bn = teacher_bn(inter["intermediates"], teacher_vars["batch_stats"], affine)
    current = [losses.batch_moments(z) for z in bn.inputs]
    terms = {
        "bn": losses.bn_loss_from_moments(_matched_moments(current, bn_ema), bn.means, bn.vars),
        "ce": losses.cross_entropy(t_logits, labels),
    }
    weights = {"bn": cfg.a_bn, "ce": cfg.a_oh}
    extra = {}
    if not warmup and (cfg.a_adv or cfg.l_rca):
        s_terms, s_weights, extra = _student_terms(
            x, t_logits, t_feats, student_vars, student=student, cfg=cfg
        )
        terms.update(s_terms)
        weights.update(s_weights)
    if not warmup and cfg.l_tar:
        terms["tar"] = tar_term(bn, cfg, tar_ref)
        weights["tar"] = cfg.l_tar
    total = sum(weights[k] * v for k, v in terms.items())
    metrics = {f"synth/{k}": v for k, v in {**terms, **extra}.items()}
    metrics["synth/loss"] = total
    moments = jax.lax.stop_gradient(BNMoments([m for m, _ in current], [v for _, v in current]))
    return total, SynthAux(metrics, moments, bn)


def _matched_moments(current, bn_ema):
    """The moments BN matching compares: the batch's own, or ``w * ema + (1 - w) * current``."""
    if bn_ema is None:
        return current
    ema, w = bn_ema
    return [
        (w * em + (1 - w) * m, w * ev + (1 - w) * v)
        for (m, v), em, ev in zip(current, ema.means, ema.vars, strict=True)
    ]


def _student_terms(x, t_logits, t_feats, student_vars, *, student, cfg):
    """The terms that run the student: adversarial and (``l_rca``) RCA, as ``(terms, weights,
    diagnostics)``; the diagnostics are the adversarial mask's keep rate and the logit spread."""
    s_logits_t, s_feats_t = student.apply(student_vars, x)
    s_logits = losses.time_mean(s_logits_t)
    terms = {"adv": losses.adversarial_loss(t_logits, s_logits)}
    weights = {"adv": cfg.a_adv}
    agree = jnp.argmax(t_logits, -1) == jnp.argmax(s_logits, -1)
    extra = {
        "adv_mask": jnp.mean(agree.astype(jnp.float32)),
        "student_logit_std": jnp.mean(jnp.std(s_logits, axis=0)),
    }
    if cfg.l_rca:
        terms["rca"] = losses.rca_loss(cfg.rca_rep, (t_logits, t_feats), (s_logits_t, s_feats_t))
        weights["rca"] = cfg.l_rca * cfg.rca_sign
    return terms, weights, extra


def update_ema(ema: BNMoments, current: BNMoments, ready, momentum: float) -> BNMoments:
    """EMA of per-layer moments (Fast's ``update_mmt``); the first batch initialises it."""
    return jax.tree.map(
        lambda e, c: jnp.where(ready, momentum * e + (1 - momentum) * c, c), ema, current
    )


def bn_channels(teacher, image_shape) -> tuple[tuple[str, ...], list[int]]:
    """The teacher's BN layer names and channel counts, from shapes only (no weights needed)."""
    x = jnp.zeros((2, *image_shape))

    def trees():
        v = teacher.init(jax.random.key(0), x)
        _, inter = teacher.apply(v, x, mutable=["intermediates"])
        return inter["intermediates"], v["batch_stats"]

    bn = teacher_bn(*jax.eval_shape(trees))
    return bn.names, [m.shape[0] for m in bn.means]


def zero_moments(teacher, image_shape) -> BNMoments:
    """Zeros shaped like the teacher's per-layer BN moments (an empty EMA)."""
    _, channels = bn_channels(teacher, image_shape)
    zeros = lambda: [jnp.zeros((c,), jnp.float32) for c in channels]
    return BNMoments(zeros(), zeros())  # distinct buffers: states are donated


# ---------------------------------------------------------------------------- augmentation


def jitter(key, x, max_shift: int):
    """DeepInversion's augmentation: one random roll of up to ``max_shift`` pixels for the
    whole batch, and a flip."""
    if max_shift <= 0:
        return x
    k_shift, k_flip = jax.random.split(key)
    dy, dx = jax.random.randint(k_shift, (2,), -max_shift, max_shift + 1)
    x = jnp.roll(x, (dy, dx), axis=(1, 2))
    return jnp.where(jax.random.bernoulli(k_flip), x[:, :, ::-1], x)


def crop_flip(key, x01, pad: int, flip: bool):
    """Per-sample RandomCrop (zero padding ``pad``) and horizontal flip of ``[0, 1]`` images,
    as kornia applies them in the reference Fast, NAYER and CMI (before normalisation)."""
    if pad <= 0 and not flip:
        return x01
    return random_crop_flip(key, x01, pad, flip=flip)


def random_resized_crop(key, x01, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3), flip=True):
    """Per-sample RandomResizedCrop (area fraction in ``scale``, aspect in ``ratio``, resized
    back bilinearly) and horizontal flip, ``[B, H, W, C]``: CMI's local view."""
    b, h, w, c = x01.shape
    k_area, k_ratio, k_y, k_x, k_flip = jax.random.split(key, 5)
    area = jax.random.uniform(k_area, (b,), minval=scale[0], maxval=scale[1]) * h * w
    log_r = jax.random.uniform(k_ratio, (b,), minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1]))
    cw = jnp.clip(jnp.sqrt(area * jnp.exp(log_r)), 1.0, w)
    ch = jnp.clip(jnp.sqrt(area / jnp.exp(log_r)), 1.0, h)
    y0 = jax.random.uniform(k_y, (b,)) * (h - ch)
    x0 = jax.random.uniform(k_x, (b,)) * (w - cw)

    def one(img, y0, x0, ch, cw):
        sy, sx = h / ch, w / cw
        return jax.image.scale_and_translate(
            img,
            (h, w, c),
            (0, 1),
            jnp.stack([sy, sx]),
            jnp.stack([-y0 * sy, -x0 * sx]),
            method="linear",
            antialias=False,
        )

    out = jax.vmap(one)(x01, y0, x0, ch, cw)
    flips = jax.random.bernoulli(k_flip, 0.5 if flip else 0.0, (b,))
    return jnp.where(flips[:, None, None, None], out[:, :, ::-1], out)
