"""Losses of STARS data-free ANN-to-SNN distillation, as pure JAX functions.

Formulas follow /work/shared/STARS.md. Conventions:
  * images and BN inputs are NHWC (`[B, H, W, C]`); `[B, C]` is accepted wherever
    statistics are "over all but the channel axis";
  * student logits over time are time-major, `[T, B, K]`;
  * every float input is upcast to at least float32 before any reduction (bfloat16 in,
    float32 out; float64 stays float64 so that finite-difference tests can run in x64).

Hyperparameters that select a formula (`k`, `ks`, `temperature` of TAR, `two_sided`, `order`)
are Python values; under `jax.jit` close over them or mark them static.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# TAR temperature, in units of the channel's std s. Provisional until the ablation (STARS.md
# does not fix it). Measured on 2e6 samples with k = 1: how far the soft exceedance of a
# mean/variance-matched Laplace (heavier tail) moves from the Gaussian target is 0.037 in the
# hard limit, 0.033 at t = 0.25, 0.019 at t = 0.5 and only 0.005 at t = 1.0 (uniform: 0.052 /
# 0.034 / 0.016 / 0.003). At t = 1 the sigmoid is ~4 std wide, so q mostly re-measures the
# mean and variance that L_BN already matches; t = 0.25 keeps most of the tail signal while
# ~44% of Gaussian samples still get a non-negligible gradient (sigmoid' >= 10% of its max).
TAR_TEMPERATURE = 0.25


def _upcast(x) -> Array:
    """Casts a float array to at least float32 (bf16/f16 -> f32, f64 kept)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _safe_l2_norm(x: Array) -> Array:
    """||x||_2 with value 0 and a zero (sub)gradient at x = 0, where sqrt's gradient is inf."""
    sq = jnp.sum(jnp.square(x))
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def _reduce_axes(z: Array) -> tuple[int, ...]:
    if z.ndim < 2:
        raise ValueError(f"expected [B, ..., C], got shape {z.shape}")
    return tuple(range(z.ndim - 1))


# ----------------------------------------------------------------------------- BN matching


def batch_moments(z) -> tuple[Array, Array]:
    """Per-channel batch mean and biased variance.

    Args:
      z: `[B, H, W, C]` or `[B, C]` BN input.

    Returns:
      `(mean [C], var [C])` over all axes but the last; two-pass (no E[z^2] - E[z]^2
      cancellation), in at least float32.
    """
    z = _upcast(z)
    axes = _reduce_axes(z)
    mean = jnp.mean(z, axis=axes)
    var = jnp.mean(jnp.square(z - mean), axis=axes)
    return mean, var


def bn_loss_from_moments(
    moments: Sequence[tuple[Array, Array]],
    running_means: Sequence[Array],
    running_vars: Sequence[Array],
) -> Array:
    """L_BN from precomputed per-layer moments (e.g. EMA-blended batch statistics).

    Args:
      moments: per layer `(mean [C_l], var [C_l])` of the synthetic batch.
      running_means: per layer teacher running mean `[C_l]`.
      running_vars: per layer teacher running variance `[C_l]`.

    Returns:
      Scalar `sum_l ||m_l - mu_l||_2 + ||v_l - var_l||_2` (plain, not squared, L2 norms).
    """
    if not len(moments) == len(running_means) == len(running_vars):
        raise ValueError("moments, running_means and running_vars differ in length")
    total = jnp.zeros((), jnp.float32)
    for (m, v), mu, var in zip(moments, running_means, running_vars, strict=True):
        total = total + _safe_l2_norm(_upcast(m) - _upcast(mu))
        total = total + _safe_l2_norm(_upcast(v) - _upcast(var))
    return total


def bn_loss(
    bn_inputs: Sequence[Array], running_means: Sequence[Array], running_vars: Sequence[Array]
) -> Array:
    """L_BN of a batch: see `bn_loss_from_moments`; `bn_inputs[l]` is `[B, H, W, C_l]`."""
    return bn_loss_from_moments([batch_moments(z) for z in bn_inputs], running_means, running_vars)


# ----------------------------------------------------------------------- logit-based terms


def cross_entropy(logits, labels) -> Array:
    """Mean softmax cross-entropy; `logits [B, K]`, int `labels [B]` -> scalar."""
    logp = jax.nn.log_softmax(_upcast(logits), axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.asarray(labels)[..., None], axis=-1)[..., 0]
    return jnp.mean(nll)


def _kl_rows(p_logits: Array, q_logits: Array, temperature) -> Array:
    """KL(softmax(p/t) || softmax(q/t)) per row; `[..., K]` (broadcast) -> `[...]`."""
    logp = jax.nn.log_softmax(_upcast(p_logits) / temperature, axis=-1)
    logq = jax.nn.log_softmax(_upcast(q_logits) / temperature, axis=-1)
    return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def kl_div(p_logits, q_logits, temperature=1.0) -> Array:
    """Mean over rows of KL(softmax(p/t) || softmax(q/t)); `[B, K]` x `[B, K]` -> scalar."""
    return jnp.mean(_kl_rows(p_logits, q_logits, temperature))


def time_mean(outputs_t: Array) -> Array:
    """A spiking student's time-major outputs averaged over time, `[T, B, ...]` -> `[B, ...]`,
    in (at least) float32: f_S = (1/T) sum_t logits_t (rate decoding), the student's logits
    everywhere but in per-time-step KD."""
    return jnp.mean(_upcast(outputs_t), axis=0)


def _time_mean(student_logits: Array) -> Array:
    """`[T, B, K]` -> `[B, K]` (``time_mean``); `[B, K]` passes through."""
    s = _upcast(student_logits)
    return time_mean(s) if s.ndim == 3 else s


def adversarial_loss(teacher_logits, student_logits) -> Array:
    """L_ADV = -mean_b[ 1(argmax f_T = argmax f_S) * KL(p_T || p_S) ].

    Args:
      teacher_logits: `[B, K]`.
      student_logits: `[B, K]`, or time-major `[T, B, K]` which is averaged over T first.

    Returns:
      Scalar <= 0. The agreement mask is stop_gradient'ed: it selects samples, it is not a
      quantity to optimise. The batch mean divides by B, not by the number of agreeing samples.
    """
    t = _upcast(teacher_logits)
    s = _time_mean(student_logits)
    agree = jnp.argmax(t, axis=-1) == jnp.argmax(s, axis=-1)
    mask = jax.lax.stop_gradient(agree.astype(t.dtype))
    return -jnp.mean(mask * _kl_rows(t, s, 1.0))


def kd_loss(teacher_logits, student_logits_t, temperature, per_time_step=False) -> Array:
    """Student KD term t^2 * KL(softmax(f_T/t) || softmax(f_S/t)).

    Args:
      teacher_logits: `[B, K]`.
      student_logits_t: `[T, B, K]` per-time-step student logits.
      temperature: KD temperature t (the t^2 factor keeps gradient scale ~independent of t).
      per_time_step: if True, apply the KL to every `logits_t` and average over t (TET-style)
        instead of to the time-averaged logits.

    Returns:
      Scalar, mean over the batch (and time steps).
    """
    s = _upcast(student_logits_t)
    if s.ndim != 3:
        raise ValueError(f"student_logits_t must be [T, B, K], got {s.shape}")
    t = _upcast(teacher_logits)
    if per_time_step:
        kl = jnp.mean(_kl_rows(t[None], s, temperature))
    else:
        kl = jnp.mean(_kl_rows(t, time_mean(s), temperature))
    return temperature**2 * kl


# -------------------------------------------------------------------------------------- RCA


# What RCA compares (``synth.rca_rep``, ``distill.rca_rep``): the index of the representation
# in a model's ``(logits, features)`` outputs.
# What RCA compares: the index into (logits, penultimate features) of each representation.
RCA_REPS = {"logits": 0, "features": 1, "probs": 0}
# "probs": softmax(logits / RCA_PROB_TEMPERATURE), KD's usual softening (the embedded default's
# distill.t_kd); the relations then weigh the classes a sample is near, not the logits' scale.
RCA_PROB_TEMPERATURE = 4.0


def rca_representations(rep: str, teacher_out, student_out_t) -> tuple[Array, Array]:
    """The teacher's and the student's ``[B, D]`` representations RCA compares: their logits,
    penultimate features or temperature-scaled probabilities (``rep``), the student's logits
    or features averaged over time first (``time_mean``)."""
    i = RCA_REPS[rep]
    r_t, r_s = teacher_out[i], time_mean(student_out_t[i])
    if rep == "probs":
        soft = lambda z: jax.nn.softmax(_upcast(z) / RCA_PROB_TEMPERATURE, axis=-1)
        r_t, r_s = soft(r_t), soft(r_s)
    return r_t, r_s


def rca_loss(rep: str, teacher_out, student_out_t) -> Array:
    """D_rel on ``rca_representations``. Probability rows are never faint (norm >=
    1/sqrt(K)), so they take the exact gradient; logits and features the floored one."""
    r_t, r_s = rca_representations(rep, teacher_out, student_out_t)
    return relational_discrepancy(r_t, r_s, grad_floor=0.0 if rep == "probs" else RCA_GRAD_FLOOR)


# The row normalisation's gradient is (I - u u^T) / ||r|| (u = r / ||r||): it grows without
# bound as a row fades. An untrained spiking student can output faint, identical logits (no
# spike reaches the classifier yet; its bias is a few SGD steps old): with the exact gradient,
# D_rel's push on them was ~1e4 times the KD term's and blew the student up in its first KD
# round (H200, 2026-11-27, CIFAR-10 resnet34 -> spiking resnet18, both synthesizers, STARS on;
# not seen before because collapsed synthetic batches made G_T ~ G_S). The forward value stays
# the exact cosine; the backward divides by max(||r||, RCA_GRAD_FLOOR) instead, which changes
# nothing for rows at least that long (logits of a trained network are far longer).
RCA_GRAD_FLOOR = 1.0


def relation_matrix(r, eps=1e-8, grad_floor=RCA_GRAD_FLOOR) -> Array:
    """Cosine relation matrix of a batch of representations.

    Args:
      r: `[B, D]` (or `[B, ...]`, flattened per sample).
      eps: rows with norm <= eps are zero rows (zero gradient).
      grad_floor: the normalisation's backward uses max(||r||, grad_floor) for ||r||, which
        caps the push on faint rows (see RCA_GRAD_FLOOR); 0 gives the exact gradient.

    Returns:
      `[B, B]` matrix G = R R^T of the L2-row-normalised R.
    """
    r = _upcast(r)
    r = r.reshape(r.shape[0], -1)
    sq = jnp.sum(jnp.square(r), axis=-1, keepdims=True)
    ok = sq > eps**2
    norm = jnp.sqrt(jnp.where(ok, sq, 1.0))
    rn = jnp.where(ok, r / norm, 0.0)
    if grad_floor:
        # Same value as rn; gradient (I - u u^T) / max(||r||, grad_floor) through live rows.
        u, delta = jax.lax.stop_gradient(rn), r - jax.lax.stop_gradient(r)
        tangent = delta - u * jnp.sum(u * delta, axis=-1, keepdims=True)
        scale = jax.lax.stop_gradient(jnp.maximum(norm, grad_floor))
        rn = u + jnp.where(ok, tangent / scale, 0.0)
    # HIGHEST: accelerators' default matmul precision (bf16/tf32 passes) would put ~1e-3 noise
    # on entries whose differences are the whole signal of D_rel.
    return jnp.matmul(rn, rn.T, precision=jax.lax.Precision.HIGHEST)


def relational_discrepancy(r_t, r_s, eps=1e-8, grad_floor=RCA_GRAD_FLOOR) -> Array:
    """D_rel = ||G_T - G_S||_F^2 / B^2.

    Args:
      r_t: `[B, D_t]` teacher representation (logits or penultimate features).
      r_s: `[B, D_s]` student counterpart (time-averaged by the caller); D_s may differ.
      eps: see `relation_matrix`.

    Returns:
      Scalar in [0, 4]; for non-zero rows the diagonals agree, so it is < 4 (B - 1) / B.
    """
    if r_t.shape[0] != r_s.shape[0]:
        raise ValueError(f"batch sizes differ: {r_t.shape[0]} vs {r_s.shape[0]}")
    b = r_t.shape[0]
    diff = relation_matrix(r_t, eps, grad_floor) - relation_matrix(r_s, eps, grad_floor)
    return jnp.sum(jnp.square(diff)) / b**2


# -------------------------------------------------------------------------------------- TAR


def _stable_sigmoid_np(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@functools.lru_cache(maxsize=512)
def _gaussian_sigmoid_expectation(k: float, t: float, sign: float, num_points: int) -> float:
    """E_{u~N(0,1)} sigmoid((sign*u - k)/t) by composite Gauss-Legendre on [-L, L].

    Plain Gauss-Hermite converges only like exp(-c * t * sqrt(n)) here (the sigmoid has poles
    at distance pi*t from the real axis); measured against mpmath it is off by 3e-4 at
    t = 0.05 and 4e-3 at t = 0.02 with 256 nodes, and numpy's nodes overflow past ~500. So the
    Gaussian weight is integrated directly on panels: width <= 0.25 everywhere and <= t within
    40 t of the sigmoid's centre (outside it the sigmoid is within e^-40 of 0 or 1). With 16
    nodes a panel this is accurate to ~1e-15 for any t > 0; the truncation at L = 12 drops a
    mass of 2 Q(12) ~ 4e-33.
    """
    half_width, coarse = 12.0, 0.25
    centre = sign * k
    edges = np.arange(-half_width, half_width + coarse / 2, coarse)
    if t < coarse:
        edges = np.concatenate([edges, centre + t * np.arange(-40.0, 41.0)])
    edges = np.unique(np.clip(edges, -half_width, half_width))
    x, w = np.polynomial.legendre.leggauss(num_points)
    a, b = edges[:-1, None], edges[1:, None]
    u = 0.5 * (a + b) + 0.5 * (b - a) * x[None, :]
    f = np.exp(-0.5 * u * u) / math.sqrt(2 * math.pi) * _stable_sigmoid_np((sign * u - k) / t)
    return float(np.sum(0.5 * (b - a)[:, 0] * (f @ w)))


def tar_target(k, temperature, num_points=16, two_sided=False) -> float:
    """Target soft exceedance q* = E_{u~N(0,1)} sigmoid((u - k)/t), computed by quadrature.

    This is E[q_lc] when z_l[..., c] ~ N(mu_lc, var_lc) (up to eps << var in s_lc).

    Args:
      k: threshold offset in stds (Python float; not traceable).
      temperature: t > 0.
      num_points: Gauss-Legendre nodes per panel (see `_gaussian_sigmoid_expectation`; exact
        to ~1e-15, not sampled).
      two_sided: return the target of the lower-tail exceedance
        q_low = mean sigmoid((tau_low - z)/(t s)), tau_low = mu - k s, i.e.
        E sigmoid((-u - k)/t). It is computed from that integrand, and by the symmetry of
        N(0, 1) equals the upper-tail value, so one q* serves both rows of
        `soft_exceedance(..., two_sided=True)`.

    Returns:
      q* as a Python float in (0, 1); -> Q(k) = P(u > k) as t -> 0.
    """
    k, t = float(k), float(temperature)
    if not (t > 0 and math.isfinite(t) and math.isfinite(k)):
        raise ValueError(f"need finite k and temperature > 0, got k={k}, t={t}")
    if int(num_points) < 2:
        raise ValueError("num_points must be >= 2")
    return _gaussian_sigmoid_expectation(k, t, -1.0 if two_sided else 1.0, int(num_points))


def _soft_exceed(z: Array, tau: Array, scale: Array, temperature) -> Array:
    """mean_{b,h,w} sigmoid((z - tau)/(t*scale)); `[B, ..., C]` -> `[C]`."""
    return jnp.mean(jax.nn.sigmoid((z - tau) / (temperature * scale)), axis=_reduce_axes(z))


def soft_exceedance(z, mean, var, k, temperature, eps=1e-5, two_sided=False) -> Array:
    """Soft probability that BN inputs exceed the teacher-derived thresholds.

    Args:
      z: `[B, H, W, C]` or `[B, C]` BN input of the synthetic batch.
      mean: `[C]` teacher running mean mu.
      var: `[C]` teacher running variance.
      k: threshold offset in stds; tau = mu + k s with s = sqrt(var + eps).
      temperature: t; the sigmoid is sigmoid((z - tau)/(t s)).
      eps: as in the BN layer.
      two_sided: also return the lower tail mean sigmoid((mu - k s - z)/(t s)).

    Returns:
      `q [C]`, or `[2, C]` (row 0 upper tail, row 1 lower tail) if two_sided.
    """
    z = _upcast(z)
    mu = _upcast(mean)
    s = jnp.sqrt(_upcast(var) + eps)
    upper = _soft_exceed(z, mu + k * s, s, temperature)
    if not two_sided:
        return upper
    # sigmoid((tau_low - z)/(t s)) is the upper-tail formula applied to -z with threshold -tau_low.
    lower = _soft_exceed(-z, -(mu - k * s), s, temperature)
    return jnp.stack([upper, lower])


def tar_loss(
    bn_inputs: Sequence[Array],
    running_means: Sequence[Array],
    running_vars: Sequence[Array],
    k=1.0,
    temperature=TAR_TEMPERATURE,
    ks=None,
    two_sided=False,
    eps=1e-5,
) -> Array:
    """L_TAR = sum_l sum_{k in ks} sum_{tails} mean_c (q_lc - q*(k, t))^2.

    Args:
      bn_inputs: per selected layer `[B, H, W, C_l]` BN inputs (layer selection is the
        caller's: all BN layers or the last of each stage).
      running_means, running_vars: per layer `[C_l]` teacher statistics.
      k: threshold offset (ignored if `ks` is given).
      temperature: sigmoid temperature t (see TAR_TEMPERATURE for the default).
      ks: optional sequence of k values, each an extra term (summed, like extra layers).
      two_sided: add the lower tail at mu - k s for every k (summed with the upper one).
      eps: BN eps inside s = sqrt(var + eps).

    Returns:
      Scalar.
    """
    if not len(bn_inputs) == len(running_means) == len(running_vars):
        raise ValueError("bn_inputs, running_means and running_vars differ in length")
    k_values = tuple(ks) if ks is not None else (k,)
    total = jnp.zeros((), jnp.float32)
    for z, mu, var in zip(bn_inputs, running_means, running_vars, strict=True):
        for kv in k_values:
            q = soft_exceedance(z, mu, var, kv, temperature, eps, two_sided)
            q_star = tar_target(kv, temperature)
            # mean over channels, sum over tails: q is [C] or [2, C].
            total = total + jnp.sum(jnp.mean(jnp.square(q - q_star), axis=-1))
    return total


# The BN-affine thresholds' offsets are clipped to +-AFFINE_K_MAX stds (beyond, a channel's
# tail target is ~0 or ~1 and its gradient vanishes), and channels whose |gamma| is below
# AFFINE_GAMMA_FLOOR times the layer's largest are left out (their output is ~beta whatever
# the input: no threshold to match).
AFFINE_K_MAX = 4.0
AFFINE_GAMMA_FLOOR = 1e-3
_GRID = np.linspace(-12.0, 12.0, 2401)  # u for the traced q*(k, t): trapezoid, h = 0.01


def tar_target_traced(k: Array, temperature: float) -> Array:
    """``tar_target`` for an array of offsets ``k`` (traceable): E_{u~N(0,1)}
    sigmoid((u - k)/t) by the trapezoid rule on [-12, 12] at h = 0.01 (for t >= 0.05 the
    integrand is analytic in a strip far wider than h, so the rule is accurate to ~1e-9)."""
    u = jnp.asarray(_GRID, jnp.float32)
    h = float(_GRID[1] - _GRID[0])
    pdf = jnp.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
    f = pdf * jax.nn.sigmoid((u - jnp.asarray(k, jnp.float32)[..., None]) / temperature)
    return h * (jnp.sum(f, axis=-1) - 0.5 * (f[..., 0] + f[..., -1]))


def affine_offsets(scale: Array, bias: Array) -> tuple[Array, Array, Array]:
    """Per channel, where BN's output ``gamma (z - mu) / s + beta`` turns positive (where the
    ReLU after it starts to fire): along ``direction = sign(gamma)``, at the offset
    ``k = -beta / |gamma|`` stds, i.e. ``tau = mu - (beta / gamma) s``; clipped to
    +-AFFINE_K_MAX. ``valid``: |gamma| at least AFFINE_GAMMA_FLOOR of the layer's largest."""
    scale, bias = _upcast(scale), _upcast(bias)
    mag = jnp.abs(scale)
    valid = mag >= AFFINE_GAMMA_FLOOR * jnp.max(mag)
    k = jnp.clip(-bias / jnp.maximum(mag, 1e-30), -AFFINE_K_MAX, AFFINE_K_MAX)
    direction = jnp.where(scale < 0, -1.0, 1.0)
    return jax.lax.stop_gradient(k), direction, valid


def tar_loss_affine(
    bn_inputs, running_means, running_vars, scales, biases, temperature=TAR_TEMPERATURE, eps=1e-5
) -> Array:
    """L_TAR with per-channel thresholds from the teacher's own BN affine (``affine_offsets``):
    sum_l mean_{valid c} (q_lc - q*(k_lc, t))^2, with q_lc = mean_{b,h,w} sigmoid((d_lc (z - mu_lc)
    / s_lc - k_lc) / t) and the Gaussian tail target q* at each channel's own offset."""
    total = jnp.zeros((), jnp.float32)
    for z, mu, var, g, b in zip(
        bn_inputs, running_means, running_vars, scales, biases, strict=True
    ):
        k, direction, valid = affine_offsets(g, b)
        s = jnp.sqrt(_upcast(var) + eps)
        u = direction * (_upcast(z) - _upcast(mu)) / s
        q = jnp.mean(jax.nn.sigmoid((u - k) / temperature), axis=_reduce_axes(z))
        err = jnp.where(valid, jnp.square(q - tar_target_traced(k, temperature)), 0.0)
        total = total + jnp.sum(err) / jnp.maximum(jnp.sum(valid), 1)
    return total


def percentile_thresholds(z_ref, quantile, temperature=TAR_TEMPERATURE, eps=1e-5):
    """Per-channel thresholds from teacher activation percentiles (TAR option).

    STARS.md leaves the reference open; in the data-free setting it has to be teacher
    activations on some batch the caller picks (e.g. an earlier synthetic batch from the bank).
    The target is not approximated: it is the reference batch's own soft exceedance at the
    returned thresholds, which tends to 1 - quantile in the hard limit t -> 0.

    Args:
      z_ref: `[B, H, W, C]` or `[B, C]` teacher BN input on the reference batch.
      quantile: in (0, 1), e.g. 0.8413 (= 1 - Q(1)) to mimic k = 1 on a Gaussian.
      temperature: t used for the target (must equal the one `tar_loss_percentile` uses).
      eps: added to the reference variance in the sigmoid scale.

    Returns:
      `(tau [C], scale [C], target [C])`, all stop_gradient'ed: tau is the per-channel
      `quantile` over b, h, w (linear interpolation), scale = sqrt(var_ref + eps) so t keeps
      its "in stds" meaning, target = mean_ref sigmoid((z_ref - tau)/(t scale)).
    """
    z_ref = jax.lax.stop_gradient(_upcast(z_ref))
    _reduce_axes(z_ref)
    tau = jnp.quantile(z_ref.reshape(-1, z_ref.shape[-1]), quantile, axis=0)
    scale = jnp.sqrt(batch_moments(z_ref)[1] + eps)
    target = _soft_exceed(z_ref, tau, scale, temperature)
    return tau, scale, target


def tar_loss_percentile(
    bn_inputs: Sequence[Array],
    thresholds: Sequence[tuple[Array, Array, Array]],
    temperature=TAR_TEMPERATURE,
) -> Array:
    """sum_l mean_c (q_lc - target_lc)^2 with `thresholds[l]` from `percentile_thresholds`."""
    if len(bn_inputs) != len(thresholds):
        raise ValueError("bn_inputs and thresholds differ in length")
    total = jnp.zeros((), jnp.float32)
    for z, (tau, scale, target) in zip(bn_inputs, thresholds, strict=True):
        q = _soft_exceed(_upcast(z), tau, scale, temperature)
        total = total + jnp.mean(jnp.square(q - target))
    return total


# --------------------------------------------------------------------------- pixel priors


def tv_loss(x, order=2) -> Array:
    """Total-variation prior of NHWC images.

    tv = mean(|x[:, 1:] - x[:, :-1]|^p) + mean(|x[:, :, 1:] - x[:, :, :-1]|^p), each mean over
    all entries (B, H-1 or H, W or W-1, C) of the vertical / horizontal neighbour differences,
    p = `order` (2: squared differences, smooth; 1: anisotropic TV). Unlike DeepInversion's
    "l2" variant (unnormalised Frobenius norms, diagonal neighbours too), it does not grow
    with batch or image size, so a_tv values are not interchangeable with DeepInversion's.

    Args:
      x: `[B, H, W, C]`.
      order: 1 or 2.

    Returns:
      Scalar.
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")
    x = _upcast(x)
    dv = x[:, 1:, :, :] - x[:, :-1, :, :]
    dh = x[:, :, 1:, :] - x[:, :, :-1, :]
    pen = jnp.square if order == 2 else jnp.abs
    return jnp.mean(pen(dv)) + jnp.mean(pen(dh))


def l2_prior(x) -> Array:
    """mean_b ||x_b||_2^2 = sum(x^2) / B for `x [B, ...]` (sum over pixels, mean over batch)."""
    x = _upcast(x)
    return jnp.sum(jnp.square(x)) / x.shape[0]
