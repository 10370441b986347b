"""Leaky integrate-and-fire neurons with surrogate gradients.

Axis convention, used everywhere in stars_jax: neuron inputs are **time-major**,
``[T, B, ...]``. Models fold time into the batch (``[T * B, ...]``, time-major blocks of
``B``) for convolutions and BatchNorm, and unfold it only around the neuron scan.

The dynamics follow SpikingJelly's ``LIFNode`` (``decay_input=True``):

    H_t = V_{t-1} + (X_t - (V_{t-1} - V_reset)) / tau      (charge)
    S_t = Heaviside(H_t - V_th)                             (fire; Heaviside(0) = 1)
    V_t = H_t * (1 - S_t) + V_reset * S_t                   (hard reset)
    V_t = H_t - V_th * S_t                                  (soft reset, ``v_reset=None``)

with ``V_0 = V_reset`` (0 for the soft reset). The Heaviside's backward pass is a surrogate
derivative attached with ``jax.custom_vjp``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


def _atan_grad(x, alpha):
    return alpha / 2 / (1 + (math.pi / 2 * alpha * x) ** 2)


def _sigmoid_grad(x, alpha):
    s = jax.nn.sigmoid(alpha * x)
    return alpha * s * (1 - s)


def _triangle_grad(x, alpha):
    # Triangle of half-width 1/alpha and unit area: alpha * max(0, 1 - alpha*|x|).
    return alpha * jnp.maximum(0.0, 1 - alpha * jnp.abs(x))


SURROGATES: dict[str, Callable] = {
    "atan": _atan_grad,
    "sigmoid": _sigmoid_grad,
    "triangle": _triangle_grad,
}
DEFAULT_ALPHA = {"atan": 2.0, "sigmoid": 4.0, "triangle": 1.0}
KERNELS = ("scan", "pallas")
# ``neuron.reset``: the reset potential a config's ``v_reset`` becomes (``LIFParams.v_reset``):
# itself (hard reset) or None (soft reset, subtract ``V_th``).
RESETS: dict[str, Callable] = {"hard": lambda v_reset: v_reset, "soft": lambda v_reset: None}


def surrogate_grad_fn(name: str) -> Callable:
    """Returns the surrogate derivative ``g(x, alpha)`` registered under ``name``."""
    try:
        return SURROGATES[name]
    except KeyError:
        raise ValueError(
            f"Unknown surrogate {name!r}; valid names: {sorted(SURROGATES)}."
        ) from None


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def spike(x: jax.Array, surrogate: str = "atan", alpha: float = 2.0) -> jax.Array:
    """Heaviside step ``1[x >= 0]`` whose gradient is the named surrogate derivative."""
    return (x >= 0).astype(x.dtype)


def _spike_fwd(x, surrogate, alpha):
    return spike(x, surrogate, alpha), x


def _spike_bwd(surrogate, alpha, x, g):
    grad = surrogate_grad_fn(surrogate)(x.astype(jnp.float32), alpha)
    return ((g * grad).astype(x.dtype),)


spike.defvjp(_spike_fwd, _spike_bwd)


@dataclasses.dataclass(frozen=True)
class LIFParams:
    """Static LIF hyper-parameters (hashable, so they can be jit-static and module fields).

    Attributes:
      tau: membrane time constant (in steps); the leak is ``1 / tau`` per step.
      v_threshold: firing threshold ``V_th``.
      v_reset: hard-reset potential; ``None`` selects the soft reset (subtract ``V_th``).
      detach_reset: if True, no gradient flows through the spike used in the reset.
      surrogate: name of the surrogate derivative (see ``SURROGATES``).
      alpha: surrogate sharpness; ``None`` takes the surrogate's default.
      kernel: ``"scan"`` (``lax.scan`` over :func:`lif_cell`) or ``"pallas"`` (the fused
        kernel of :mod:`stars_jax.lif_pallas`); same values, an implementation choice only.
    """

    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: float | None = 0.0
    detach_reset: bool = False
    surrogate: str = "atan"
    alpha: float | None = None
    kernel: str = "scan"

    def __post_init__(self):
        surrogate_grad_fn(self.surrogate)  # Fail early on a typo.
        if self.kernel not in KERNELS:
            raise ValueError(f"Unknown LIF kernel {self.kernel!r}; valid: {KERNELS}.")
        if self.tau <= 0:
            raise ValueError(f"LIF tau must be > 0, got {self.tau}.")

    @property
    def surrogate_alpha(self) -> float:
        return DEFAULT_ALPHA[self.surrogate] if self.alpha is None else float(self.alpha)


class LIFState(NamedTuple):
    v: jax.Array  # membrane potential after the reset, [B, ...]


def init_lif_state(shape, params: LIFParams, dtype=jnp.float32) -> LIFState:
    v0 = 0.0 if params.v_reset is None else params.v_reset
    return LIFState(v=jnp.full(shape, v0, dtype))


def lif_cell(
    params: LIFParams, state: LIFState, x_t: jax.Array
) -> tuple[LIFState, tuple[jax.Array, jax.Array]]:
    """One LIF step. Returns the new state and ``(spike_t, v_t)``, each ``[B, ...]``."""
    v = state.v
    v_rest = 0.0 if params.v_reset is None else params.v_reset
    h = v + (x_t - (v - v_rest)) / params.tau
    s = spike(h - params.v_threshold, params.surrogate, params.surrogate_alpha)
    s_reset = jax.lax.stop_gradient(s) if params.detach_reset else s
    if params.v_reset is None:
        v_new = h - params.v_threshold * s_reset
    else:
        v_new = h * (1 - s_reset) + params.v_reset * s_reset
    return LIFState(v_new), (s, v_new)


def lif(
    x_seq: jax.Array, params: LIFParams = LIFParams(), unroll: int | bool = True
) -> tuple[jax.Array, jax.Array]:
    """Runs LIF neurons over a time-major input sequence.

    Args:
      x_seq: input currents, ``[T, B, ...]``.
      params: neuron hyper-parameters.
      unroll: passed to ``jax.lax.scan``; full unrolling is cheapest at the small T of SNNs.
        The fused kernel (``params.kernel == "pallas"``) ignores it.

    Returns:
      ``(spikes, v)``, both ``[T, B, ...]``: the spikes and the membrane after each reset.
    """
    if params.kernel == "pallas":
        from stars_jax.lif_pallas import lif_pallas  # Lazy: lif_pallas imports this module.

        return lif_pallas(x_seq, params)
    state = init_lif_state(x_seq.shape[1:], params, x_seq.dtype)
    _, (spikes, v) = jax.lax.scan(functools.partial(lif_cell, params), state, x_seq, unroll=unroll)
    return spikes, v
