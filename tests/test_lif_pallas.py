"""The fused Pallas LIF (interpret mode on CPU) against the lax.scan LIF: values and BPTT."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stars_jax.lif_pallas import lif_pallas, lif_spikes_pallas
from stars_jax.models.students import LIF
from stars_jax.neurons import LIFParams, lif

BLOCK = 32  # Small, so that the test shapes span several programs and a padded tail.


def _inputs(shape, dtype=jnp.float32, seed=0):
    kx, ks, kv = jax.random.split(jax.random.key(seed), 3)
    x = (jax.random.normal(kx, shape) + 1.2).astype(dtype)
    # Cotangents for both outputs, so that the V-output path of the backward is checked too.
    return x, jax.random.normal(ks, shape).astype(dtype), jax.random.normal(kv, shape)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _values_and_grad(fn, params, x, gs, gv):
    (s, v), vjp = jax.vjp(lambda z: fn(z, params), x)
    return s, v, vjp((gs, gv.astype(v.dtype)))[0]


def _pallas(x, params):
    return lif_pallas(x, params, block=BLOCK, interpret=True)


def _assert_matches_scan(params, shape, dtype=jnp.float32, grad_tol=1e-5):
    x, gs, gv = _inputs(shape, dtype)
    s_ref, v_ref, g_ref = _values_and_grad(lif, params, x, gs, gv)
    s, v, g = _values_and_grad(_pallas, params, x, gs, gv)
    assert 0.05 < float(jnp.mean(s_ref.astype(jnp.float32))) < 0.95  # It must fire, not always.
    assert s.dtype == s_ref.dtype and v.dtype == v_ref.dtype and g.dtype == g_ref.dtype
    np.testing.assert_array_equal(np.asarray(s), np.asarray(s_ref))
    f32 = lambda a: np.asarray(a, np.float32)
    np.testing.assert_allclose(f32(v), f32(v_ref), rtol=1e-6, atol=1e-6)
    scale = float(np.abs(f32(g_ref)).max())
    np.testing.assert_allclose(f32(g), f32(g_ref), rtol=grad_tol, atol=grad_tol * scale)


@pytest.mark.parametrize("surrogate", ["atan", "sigmoid", "triangle"])
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("v_reset", [-0.2, None], ids=["hard", "soft"])
def test_matches_scan_every_reset_and_surrogate(v_reset, detach, surrogate):
    params = LIFParams(tau=3.0, v_reset=v_reset, detach_reset=detach, surrogate=surrogate)
    _assert_matches_scan(params, (4, 3, 29))  # 87 neurons: 3 blocks of 32, the last padded.


@pytest.mark.parametrize("shape", [(1, 5), (6, 2, 3, 5), (3, 64), (2, 2, 4, 4, 3)])
def test_matches_scan_across_shapes(shape):
    # T = 1; one block smaller than BLOCK; an exact multiple of BLOCK; a conv-like layout.
    _assert_matches_scan(LIFParams(v_reset=None, surrogate="sigmoid"), shape)


@pytest.mark.parametrize("v_reset", [0.0, None], ids=["hard", "soft"])
def test_bfloat16_membrane_matches_scan(v_reset):
    # Both keep the membrane in bfloat16; the scan's backward also runs in bfloat16, the
    # kernel's in float32, hence the loose gradient tolerance.
    _assert_matches_scan(LIFParams(v_reset=v_reset), (4, 2, 21), jnp.bfloat16, grad_tol=3e-2)


def test_spikes_only_and_float32_membrane_for_bfloat16_input():
    # The students' path: bfloat16 currents, float32 membrane, bfloat16 spikes and gradient.
    params = LIFParams(surrogate="triangle", detach_reset=True)
    x, gs, _ = _inputs((4, 3, 19), jnp.bfloat16)

    def scan(z):
        return lif(z.astype(jnp.float32), params)[0].astype(z.dtype)

    def fused(z):
        return lif_spikes_pallas(z, params, jnp.float32, block=BLOCK, interpret=True)

    outs = [jax.jit(lambda z, f=f: jax.vjp(f, z)[0:2])(x) for f in (scan, fused)]
    (s_ref, vjp_ref), (s, vjp) = outs
    np.testing.assert_array_equal(np.asarray(s), np.asarray(s_ref))
    g_ref, g = vjp_ref(gs)[0], vjp(gs)[0]
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(g_ref, np.float32), rtol=1e-2)


def test_kernel_switch_in_lif_and_student_layer():
    x, gs, _ = _inputs((2 * 3, 4, 4, 5))  # time-folded [T * B, H, W, C], T = 2
    results = []
    for kernel in ("scan", "pallas"):
        params = LIFParams(v_reset=None, kernel=kernel)
        layer = LIF(time_steps=2, params=params)
        layer_fn, lif_fn = (
            (lambda z, m=layer: m.apply({}, z)),
            functools.partial(lif, params=params),
        )
        out, vjp = jax.jit(lambda z, f=layer_fn: jax.vjp(f, z))(x)
        results.append((out, vjp(gs)[0], jax.jit(lif_fn)(x.reshape(2, 3, 4, 4, 5))[0]))
    for ref, got in zip(*results, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="kernel"):
        LIFParams(kernel="cuda")
    with pytest.raises(ValueError, match="power of two"):
        lif_pallas(x, LIFParams(), block=100)
