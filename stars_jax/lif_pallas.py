"""Fused LIF neurons: the whole T-step membrane update in one Pallas kernel, BPTT in another.

Same dynamics and surrogate gradients as :func:`stars_jax.neurons.lif` (the ``lax.scan``
version), selected with ``LIFParams(kernel="pallas")``. The time-major input ``[T, B, ...]``
is flattened to ``[T, N]`` and N is padded up to a multiple of the block; the grid runs over
blocks of neurons and each program loops over the T steps (static, unrolled) with the
membrane held in registers, so the input is read once and the spikes written once:

    forward   H_t = V_{t-1} + (X_t - (V_{t-1} - V_rest)) / tau
              S_t = 1[H_t - V_th >= 0]
              V_t = H_t (1 - S_t) + V_reset S_t     (hard)   or   H_t - V_th S_t  (soft)

    backward  (t = T-1 .. 0, gV = 0 after the last step; g = surrogate'(H_t - V_th))
              gV_t  = gV + dL/dV_t                         (the carry plus V's own cotangent)
              gS_t  = dL/dS_t + gV_t dV_t/dS_t             (second term only without detach)
              gH_t  = gS_t g + gV_t dV_t/dH_t
              dL/dX_t = gH_t / tau,   gV = gH_t (1 - 1/tau)   (dL/dV_{t-1})

with dV/dH = 1 - S and dV/dS = V_reset - H (hard), dV/dH = 1 and dV/dS = -V_th (soft). The
backward kernel recomputes H from X (the only residual), so nothing but X is kept between the
passes. Tested against the scan in Pallas interpret mode on CPU (tests/test_lif_pallas.py):
spikes equal bit for bit, membranes to an ulp (XLA may fold ``/ tau`` or ``- V_rest``
differently in the two programs), gradients to float tolerance.

GPU: the kernels use only loads, stores and elementwise math (no host callbacks) and
power-of-two neuron blocks, as Triton needs; the block's time axis is the whole T (not
necessarily a power of two; only rows ``[t]`` of it are loaded). They have only been run in
interpret mode: compiled GPU (Triton / Mosaic GPU, or TPU Mosaic) correctness and speed are
unmeasured.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from stars_jax.neurons import LIFParams, surrogate_grad_fn

DEFAULT_BLOCK = 1024  # neurons per program (a power of two, as Triton blocks must be)


class _Spec(NamedTuple):
    """Everything static about one fused call (hashable: a custom_vjp nondiff argument)."""

    params: LIFParams
    membrane_dtype: jnp.dtype
    block: int
    interpret: bool
    with_v: bool


def _charge_fire_reset(p: LIFParams, v, x):
    """One step, op for op as ``neurons.lif_cell`` so that spikes match the scan bit for bit."""
    v_rest = 0.0 if p.v_reset is None else p.v_reset
    h = v + (x - (v - v_rest)) / p.tau
    s = (h - p.v_threshold >= 0).astype(h.dtype)
    v_new = h - p.v_threshold * s if p.v_reset is None else h * (1 - s) + p.v_reset * s
    return h, s, v_new


def _v0(p: LIFParams, shape, dtype):
    return jnp.full(shape, 0.0 if p.v_reset is None else p.v_reset, dtype)


def _forward_kernel(spec: _Spec, x_ref, s_ref, *v_ref):
    p, dtype = spec.params, spec.membrane_dtype
    v = _v0(p, x_ref.shape[1:], dtype)
    for t in range(x_ref.shape[0]):  # T is static and small: unroll, V stays in registers.
        _, s, v = _charge_fire_reset(p, v, x_ref[t].astype(dtype))
        s_ref[t] = s.astype(s_ref.dtype)
        if spec.with_v:
            v_ref[0][t] = v.astype(v_ref[0].dtype)


def _bptt_step(p: LIFParams, h, gs, gv):
    """dL/dH_t from the membrane dtype's H_t and the float32 cotangents of S_t and V_t."""
    over = h - p.v_threshold  # in the membrane dtype, as the scan's spike() sees it
    s = (over >= 0).astype(jnp.float32)
    sg = surrogate_grad_fn(p.surrogate)(over.astype(jnp.float32), p.surrogate_alpha)
    h = h.astype(jnp.float32)
    if p.v_reset is None:
        dv_dh, dv_ds = 1.0, -p.v_threshold
    else:
        dv_dh, dv_ds = 1 - s, p.v_reset - h
    if not p.detach_reset:  # The reset's spike passes gradient back into H as well.
        gs = gs + gv * dv_ds
    return gs * sg + gv * dv_dh


def _backward_kernel(spec: _Spec, x_ref, gs_ref, *refs):
    p, dtype = spec.params, spec.membrane_dtype
    gv_ref, gx_ref = refs if spec.with_v else (None, refs[0])
    n_steps = x_ref.shape[0]
    v, hs = _v0(p, x_ref.shape[1:], dtype), []
    for t in range(n_steps):  # Recompute H (cheaper than storing it: X is read anyway).
        h, _, v = _charge_fire_reset(p, v, x_ref[t].astype(dtype))
        hs.append(h)
    g_carry = jnp.zeros(x_ref.shape[1:], jnp.float32)  # dL/dV_t through H_{t+1}
    for t in reversed(range(n_steps)):
        gv = g_carry
        if spec.with_v:
            gv = gv + gv_ref[t].astype(jnp.float32)
        gh = _bptt_step(p, hs[t], gs_ref[t].astype(jnp.float32), gv)
        gx = gh / p.tau
        gx_ref[t] = gx.astype(gx_ref.dtype)
        g_carry = gh - gx  # dH_t/dV_{t-1} = 1 - 1/tau


def _call(kernel, spec: _Spec, out_dtypes, *arrays):
    """pallas_call over blocks of the flattened neuron axis; every operand is ``[T, N]``."""
    n_steps, n = arrays[0].shape
    block_spec = pl.BlockSpec((n_steps, spec.block), lambda i: (0, i))
    return pl.pallas_call(
        functools.partial(kernel, spec),
        out_shape=[jax.ShapeDtypeStruct((n_steps, n), d) for d in out_dtypes],
        grid=(n // spec.block,),
        in_specs=[block_spec] * len(arrays),
        out_specs=[block_spec] * len(out_dtypes),
        interpret=spec.interpret,
    )(*arrays)


def _forward(x, spec: _Spec):
    out_dtypes = [x.dtype] + ([spec.membrane_dtype] if spec.with_v else [])
    return tuple(_call(_forward_kernel, spec, out_dtypes, x))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _fused(x, spec: _Spec):
    """``[T, N]`` padded input -> ``(spikes,)`` or ``(spikes, v)``, each ``[T, N]``."""
    return _forward(x, spec)


def _fused_fwd(x, spec):
    return _forward(x, spec), x


def _fused_bwd(spec, x, cotangents):
    (gx,) = _call(_backward_kernel, spec, [x.dtype], x, *cotangents)
    return (gx,)


_fused.defvjp(_fused_fwd, _fused_bwd)


def _block_size(n: int, block: int) -> int:
    if block <= 0 or block & (block - 1):
        raise ValueError(f"block must be a power of two, got {block}.")
    return min(block, pl.next_power_of_2(max(n, 1)))


def _run(x_seq, params, membrane_dtype, block, interpret, with_v):
    n_steps, shape = x_seq.shape[0], x_seq.shape[1:]
    x = x_seq.reshape(n_steps, -1)
    n = x.shape[1]
    block = _block_size(n, block)
    x = jnp.pad(x, ((0, 0), (0, -n % block)))  # Padded neurons see 0 input; stripped below.
    spec = _Spec(
        params=params,
        membrane_dtype=jnp.dtype(membrane_dtype or x_seq.dtype),
        block=block,
        interpret=jax.default_backend() == "cpu" if interpret is None else interpret,
        with_v=with_v,
    )
    return tuple(y[:, :n].reshape((n_steps,) + shape) for y in _fused(x, spec))


def lif_pallas(
    x_seq: jax.Array,
    params: LIFParams = LIFParams(),
    membrane_dtype=None,
    block: int = DEFAULT_BLOCK,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Fused :func:`stars_jax.neurons.lif`: ``[T, B, ...]`` -> ``(spikes, v)``, same shapes.

    Args:
      x_seq: input currents, time-major.
      params: neuron hyper-parameters (``params.kernel`` is not read here).
      membrane_dtype: dtype of the membrane (and of ``v``); ``None`` = ``x_seq.dtype``, as in
        the scan. Spikes and the input gradient keep ``x_seq.dtype``.
      block: neurons per program, a power of two (smaller for small layers).
      interpret: Pallas interpret mode; ``None`` = on CPU only (no compiled CPU backend).
    """
    return _run(x_seq, params, membrane_dtype, block, interpret, with_v=True)


def _options(membrane_dtype=None, block: int = DEFAULT_BLOCK, interpret: bool | None = None):
    return membrane_dtype, block, interpret


def lif_spikes_pallas(x_seq: jax.Array, params: LIFParams = LIFParams(), *args, **kwargs):
    """As :func:`lif_pallas` (same optional arguments) but returns only the spikes: the
    membrane is never written out."""
    membrane_dtype, block, interpret = _options(*args, **kwargs)
    (spikes,) = _run(x_seq, params, membrane_dtype, block, interpret, with_v=False)
    return spikes
