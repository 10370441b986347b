"""LIF neuron tests: a plain-Python oracle, closed-form surrogates and a hand-derived BPTT."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stars_jax.neurons import LIFParams, lif, spike


def _python_lif(x_seq, tau, v_th, v_reset):
    """Independent oracle: the LIF equations as a scalar Python loop."""
    x_seq = np.asarray(x_seq, np.float64)
    spikes, mems = np.zeros_like(x_seq), np.zeros_like(x_seq)
    for idx in np.ndindex(x_seq.shape[1:]):
        v = 0.0 if v_reset is None else v_reset
        for t in range(x_seq.shape[0]):
            rest = 0.0 if v_reset is None else v_reset
            h = v + (x_seq[(t, *idx)] - (v - rest)) / tau
            s = 1.0 if h >= v_th else 0.0
            v = h - v_th * s if v_reset is None else (v_reset if s else h)
            spikes[(t, *idx)], mems[(t, *idx)] = s, v
    return spikes, mems


@pytest.mark.parametrize(
    "tau,v_th,v_reset", [(2.0, 1.0, 0.0), (3.0, 0.5, -0.2), (2.0, 1.0, None), (1.5, 0.8, None)]
)
def test_forward_matches_python_loop(tau, v_th, v_reset):
    x = np.random.default_rng(0).normal(0.6, 1.0, size=(6, 3, 4)).astype(np.float32)
    spikes, v = lif(jnp.asarray(x), LIFParams(tau=tau, v_threshold=v_th, v_reset=v_reset))
    ref_s, ref_v = _python_lif(x, tau, v_th, v_reset)
    assert ref_s.mean() > 0.05  # The example must actually fire.
    np.testing.assert_array_equal(np.asarray(spikes), ref_s)
    np.testing.assert_allclose(np.asarray(v), ref_v, rtol=1e-5, atol=1e-6)


SURROGATE_CLOSED_FORMS = {
    "atan": lambda x, a: a / 2 / (1 + (math.pi / 2 * a * x) ** 2),
    "sigmoid": lambda x, a: a * np.exp(-a * x) / (1 + np.exp(-a * x)) ** 2,
    "triangle": lambda x, a: np.maximum(0.0, a - a * a * np.abs(x)),
}


@pytest.mark.parametrize("name", sorted(SURROGATE_CLOSED_FORMS))
@pytest.mark.parametrize("alpha", [1.0, 2.0, 4.0])
def test_surrogate_gradient_closed_form(name, alpha):
    x = np.linspace(-2.0, 2.0, 41).astype(np.float32)
    out = spike(jnp.asarray(x), name, alpha)
    np.testing.assert_array_equal(np.asarray(out), (x >= 0).astype(np.float32))
    grad = jax.grad(lambda z: jnp.sum(spike(z, name, alpha)))(jnp.asarray(x))
    np.testing.assert_allclose(
        np.asarray(grad),
        SURROGATE_CLOSED_FORMS[name](x.astype(np.float64), alpha),
        rtol=1e-5,
        atol=1e-6,
    )


def _atan_g(x):  # ATan surrogate with alpha = 2.
    return 1.0 / (1.0 + (math.pi * x) ** 2)


@pytest.mark.parametrize("detach", [True, False])
def test_bptt_three_steps_hand_derived(detach):
    # tau = 2, V_th = 1, hard reset to 0, loss = sum_t S_t; x chosen so that only step 2 fires.
    x = jnp.array([1.5, 3.0, 0.4])
    p = LIFParams(tau=2.0, v_threshold=1.0, v_reset=0.0, detach_reset=detach)
    spikes, _ = lif(x, p)
    np.testing.assert_array_equal(np.asarray(spikes), [0.0, 1.0, 0.0])
    # H = [0.75, 1.875, 0.2]; dH_t/dx_t = dH_t/dV_{t-1} = 1/2; V_t = H_t (1 - S_t).
    h = [0.75, 1.875, 0.2]
    g = [_atan_g(hi - 1.0) for hi in h]
    s = [0.0, 1.0, 0.0]
    # dV_t/dH_t = (1 - S_t), plus -H_t * g_t through the spike when the reset is attached.
    dv_dh = [(1 - s[t]) - (0.0 if detach else h[t] * g[t]) for t in range(3)]
    dl_dh3 = g[2]
    dl_dh2 = g[1] + 0.5 * dl_dh3 * dv_dh[1]
    dl_dh1 = g[0] + 0.5 * dl_dh2 * dv_dh[0]
    expected = 0.5 * np.array([dl_dh1, dl_dh2, dl_dh3])
    grad = jax.grad(lambda z: jnp.sum(lif(z, p)[0]))(x)
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5)


def test_bptt_soft_reset_differs_from_detached():
    x = jnp.array([1.5, 3.0, 0.4])
    grads = [
        jax.grad(lambda z, d=d: jnp.sum(lif(z, LIFParams(v_reset=None, detach_reset=d))[0]))(x)
        for d in (True, False)
    ]
    assert not np.allclose(grads[0], grads[1])


class JitParityTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_eager_agree(self):
        x = jax.random.normal(jax.random.key(0), (4, 2, 5)) + 0.8
        p = LIFParams(surrogate="sigmoid", v_reset=None)

        def f(z):
            s, v = lif(z, p)
            return s, v, jax.grad(lambda q: jnp.sum(lif(q, p)[0] * jnp.arange(5.0)))(z)

        ref = f(x)
        out = self.variant(f)(x)
        chex.assert_trees_all_close(out, ref, rtol=1e-6)


def test_bad_params_raise():
    with pytest.raises(ValueError, match="surrogate"):
        LIFParams(surrogate="relu")
    with pytest.raises(ValueError, match="tau"):
        LIFParams(tau=0.0)
