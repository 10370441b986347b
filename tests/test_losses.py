"""Tests of stars_jax.losses: each invariant is checked so that a wrong formula fails it."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import absltest

from stars_jax import losses as L

RNG = np.random.default_rng(0)


def _np_sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_kl(p_logits, q_logits, t=1.0):
    lp, lq = _np_log_softmax(p_logits / t), _np_log_softmax(q_logits / t)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def _matched_batch(shape, mu, var, rng):
    """A batch whose per-channel mean / biased variance equal (mu, var) exactly (up to fp)."""
    z = rng.standard_normal(shape)
    axes = tuple(range(len(shape) - 1))
    z = (z - z.mean(axes)) / z.std(axes)  # np.std is the biased one
    return (z * np.sqrt(var) + mu).astype(np.float32)


def _bn_stats(c, rng):
    return (
        rng.uniform(-1.0, 1.0, c).astype(np.float32),
        rng.uniform(0.25, 4.0, c).astype(np.float32),
    )


# -------------------------------------------------------------------- chex-variant kernels


class KernelVariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_batch_moments_match_numpy(self):
        z = RNG.standard_normal((4, 3, 5, 6)).astype(np.float32) * 2 + 1
        m, v = self.variant(L.batch_moments)(z)
        np.testing.assert_allclose(m, z.mean((0, 1, 2)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v, z.var((0, 1, 2)), rtol=1e-5, atol=1e-6)
        m2, v2 = self.variant(L.batch_moments)(z.reshape(-1, 6))
        np.testing.assert_allclose(v2, z.reshape(-1, 6).var(0), rtol=1e-5, atol=1e-6)
        mb, vb = self.variant(L.batch_moments)(jnp.asarray(z, jnp.bfloat16))
        self.assertEqual(mb.dtype, jnp.float32)
        self.assertEqual(vb.dtype, jnp.float32)

    @chex.variants(with_jit=True, without_jit=True)
    def test_soft_exceedance_matches_numpy(self):
        c = 5
        z = RNG.standard_normal((3, 4, 4, c)).astype(np.float32) * 1.5
        mu, var = _bn_stats(c, RNG)
        k, t, eps = 0.7, 0.3, 1e-5
        f = self.variant(functools.partial(L.soft_exceedance, two_sided=True))
        q = f(z, mu, var, k, t, eps)
        s = np.sqrt(var.astype(np.float64) + eps)
        up = _np_sigmoid((z - (mu + k * s)) / (t * s)).mean((0, 1, 2))
        lo = _np_sigmoid(((mu - k * s) - z) / (t * s)).mean((0, 1, 2))
        chex.assert_shape(q, (2, c))
        np.testing.assert_allclose(q, np.stack([up, lo]), atol=1e-6)
        q1 = self.variant(L.soft_exceedance)(z, mu, var, k, t, eps)
        np.testing.assert_allclose(q1, up, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_relational_discrepancy_matches_numpy(self):
        rt = RNG.standard_normal((6, 10)).astype(np.float32)
        rs = RNG.standard_normal((6, 7)).astype(np.float32)

        def g(r):
            r = r / np.linalg.norm(r, axis=1, keepdims=True)
            return r @ r.T

        ref = ((g(rt) - g(rs)) ** 2).sum() / 36
        np.testing.assert_allclose(self.variant(L.relational_discrepancy)(rt, rs), ref, rtol=1e-5)


# ------------------------------------------------------------------------------------- BN


def test_bn_loss_zero_on_matched_batch_and_exact_shift():
    c1, c2 = 8, 5
    (mu1, v1), (mu2, v2) = _bn_stats(c1, RNG), _bn_stats(c2, RNG)
    z1 = _matched_batch((6, 4, 4, c1), mu1, v1, RNG)
    z2 = _matched_batch((6, 2, 2, c2), mu2, v2, RNG)
    base = float(L.bn_loss([z1, z2], [mu1, mu2], [v1, v2]))
    assert base < 1e-5
    # A mean shift by delta on every channel of layer 1 leaves its variance unchanged, so the
    # loss is |delta| * sqrt(C) (a squared norm would give delta^2 * C).
    prev = base
    for delta in (0.1, 0.5, 1.0, 2.0):
        val = float(L.bn_loss([z1 + delta, z2], [mu1, mu2], [v1, v2]))
        np.testing.assert_allclose(val, abs(delta) * math.sqrt(c1), rtol=1e-4, atol=2e-5)
        assert val > prev
        prev = val
    # Scaling layer 2 by a multiplies its batch variance by a^2: loss = |a^2 - 1| * ||var||_2
    # plus the mean term ||(a - 1) mu||_2.
    a = 1.5
    val = float(L.bn_loss([z1, a * z2], [mu1, mu2], [v1, v2]))
    ref = (a**2 - 1) * np.linalg.norm(v2) + (a - 1) * np.linalg.norm(mu2)
    np.testing.assert_allclose(val, ref, rtol=1e-4)


def test_bn_loss_from_moments_and_safe_gradient():
    mu, var = _bn_stats(4, RNG)
    z = RNG.standard_normal((5, 3, 3, 4)).astype(np.float32)
    direct = L.bn_loss([z], [mu], [var])
    via = L.bn_loss_from_moments([L.batch_moments(z)], [mu], [var])
    np.testing.assert_allclose(direct, via, rtol=1e-6)
    # At an exact match the L2 norm's gradient must stay finite (plain sqrt gives inf/NaN).
    g = jax.grad(lambda m: L.bn_loss_from_moments([m], [mu], [var]))((jnp.asarray(mu), var))
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(g))
    with pytest.raises(ValueError):
        L.bn_loss([z], [mu, mu], [var])


# --------------------------------------------------------------------------- logit terms


def test_cross_entropy_and_kl():
    logits = RNG.standard_normal((7, 5)).astype(np.float32) * 3
    labels = RNG.integers(0, 5, 7)
    ref = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    np.testing.assert_allclose(L.cross_entropy(logits, labels), ref, rtol=1e-6)
    q = RNG.standard_normal((7, 5)).astype(np.float32)
    for t in (1.0, 3.0):
        np.testing.assert_allclose(
            L.kl_div(logits, q, t), _np_kl(logits, q, t).mean(), rtol=1e-5, atol=1e-7
        )
    assert abs(float(L.kl_div(logits, logits))) < 1e-6


def test_adversarial_loss_mask():
    b, k = 6, 4
    teacher = RNG.standard_normal((b, k)).astype(np.float32)
    top = teacher.argmax(-1)
    # Student puts its max on a different class for every sample -> exactly 0.
    student = np.zeros((b, k), np.float32)
    student[np.arange(b), (top + 1) % k] = 5.0
    assert float(L.adversarial_loss(teacher, student)) == 0.0
    # Student agrees everywhere -> -mean KL.
    student = RNG.standard_normal((b, k)).astype(np.float32) * 0.1
    student[np.arange(b), top] += 10.0
    ref = -_np_kl(teacher, student).mean()
    np.testing.assert_allclose(L.adversarial_loss(teacher, student), ref, rtol=1e-5)
    assert ref < 0
    # Mixed: mean over all B (not over agreeing samples); time-major input is averaged first.
    student[:3] = 0.0
    student[np.arange(3), (top[:3] + 1) % k] = 5.0
    mask = (teacher.argmax(-1) == student.argmax(-1)).astype(np.float64)
    ref = -(mask * _np_kl(teacher, student)).mean()
    np.testing.assert_allclose(L.adversarial_loss(teacher, student), ref, rtol=1e-5)
    st = np.stack([student - 1.0, student + 1.0])  # time mean == student, softmax-shifted
    np.testing.assert_allclose(L.adversarial_loss(teacher, st), ref, rtol=1e-5)


def test_kd_loss_zero_reference_and_temperature():
    b, k, t_steps = 5, 6, 3
    teacher = RNG.standard_normal((b, k)).astype(np.float32) * 2
    const = np.broadcast_to(teacher, (t_steps, b, k))
    for pts in (False, True):
        assert abs(float(L.kd_loss(teacher, const, 4.0, per_time_step=pts))) < 1e-6
    student = RNG.standard_normal((t_steps, b, k)).astype(np.float32) * 2
    for t in (1.0, 4.0):
        ref = t**2 * _np_kl(teacher, student.mean(0), t).mean()
        np.testing.assert_allclose(L.kd_loss(teacher, student, t), ref, rtol=1e-5)
        ref_pts = t**2 * _np_kl(teacher[None], student, t).mean()
        got = L.kd_loss(teacher, student, t, per_time_step=True)
        np.testing.assert_allclose(got, ref_pts, rtol=1e-5)
    # Varying-over-time logits distinguish the two variants.
    assert not np.isclose(
        float(L.kd_loss(teacher, student, 1.0)),
        float(L.kd_loss(teacher, student, 1.0, per_time_step=True)),
    )


def test_kd_loss_gradient_finite_difference_x64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        teacher = jnp.asarray(rng.standard_normal((3, 4)))
        student = jnp.asarray(rng.standard_normal((2, 3, 4)))
        for pts in (False, True):
            f = lambda s, pts=pts: L.kd_loss(teacher, s, 2.0, per_time_step=pts)
            assert f(student).dtype == jnp.float64
            g = np.asarray(jax.grad(f)(student))
            h = 1e-6
            fd = np.zeros(student.size)
            flat = np.asarray(student).ravel()
            for i in range(flat.size):
                e = np.zeros_like(flat)
                e[i] = h
                plus = f(jnp.asarray((flat + e).reshape(student.shape)))
                minus = f(jnp.asarray((flat - e).reshape(student.shape)))
                fd[i] = (plus - minus) / (2 * h)
            np.testing.assert_allclose(g.ravel(), fd, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------------------------- RCA


def test_relation_matrix_properties():
    r = RNG.standard_normal((5, 3)).astype(np.float32)
    r[2] = 0.0
    g = np.asarray(L.relation_matrix(r))
    np.testing.assert_allclose(g, g.T, atol=1e-7)
    np.testing.assert_allclose(np.diag(g)[[0, 1, 3, 4]], 1.0, rtol=1e-6)
    assert np.all(g[2] == 0.0) and np.all(np.isfinite(g))
    grad = jax.grad(lambda x: L.relational_discrepancy(x, x[::-1]))(jnp.asarray(r))
    assert np.all(np.isfinite(grad))


def test_rca_gradient_is_exact_for_long_rows_and_capped_for_faint_ones():
    """An untrained spiking student can output faint, identical logits: D_rel must not push
    them ~1/||r|| hard (it blew a CIFAR-10 student up), yet keep the exact cosine gradient
    for rows as long as real logits."""
    b = 8
    rt = jnp.asarray(RNG.standard_normal((b, 10)).astype(np.float32)) * 5
    d = lambda s, floor=L.RCA_GRAD_FLOOR: L.relational_discrepancy(rt, s, grad_floor=floor)
    long_rows = jnp.asarray(RNG.standard_normal((b, 10)).astype(np.float32)) * 3  # norms ~ 9
    np.testing.assert_allclose(
        jax.grad(d)(long_rows), jax.grad(d)(long_rows, 0.0), rtol=1e-4, atol=1e-7
    )  # two float32 formulas of one gradient
    # Faint rows (a student whose logits have barely left 0): the exact gradient is huge, the
    # capped one at most ~8 / B per entry (|dD/du| <= 8 / B, divided by max(||r||, 1) = 1).
    faint = jnp.asarray(RNG.standard_normal((b, 10)).astype(np.float32)) * 1e-4
    np.testing.assert_allclose(d(faint), d(faint, 0.0), rtol=1e-6)  # same value
    exact, capped = jax.grad(d)(faint, 0.0), jax.grad(d)(faint)
    assert float(jnp.abs(exact).max()) > 100 and float(jnp.abs(capped).max()) < 8 / b
    # Zero rows are zero rows of G with no gradient; the others are unaffected.
    mixed = long_rows.at[3].set(0.0)
    g = jax.grad(d)(mixed)
    np.testing.assert_array_equal(g[3], 0.0)
    assert np.all(np.isfinite(g)) and float(jnp.abs(g).max()) > 0
    np.testing.assert_array_equal(L.relation_matrix(mixed)[3], 0.0)


def test_relational_discrepancy_invariances_and_bounds():
    b = 6
    rt = RNG.standard_normal((b, 8)).astype(np.float32)
    rs = RNG.standard_normal((b, 5)).astype(np.float32)
    d = float(L.relational_discrepancy(rt, rs))
    assert 0.0 < d <= 4.0
    assert float(L.relational_discrepancy(rt, rt)) < 1e-10
    # Positive per-sample scaling of either representation.
    scale = RNG.uniform(0.1, 10.0, (b, 1)).astype(np.float32)
    np.testing.assert_allclose(L.relational_discrepancy(rt * scale, rs), d, rtol=1e-5)
    np.testing.assert_allclose(L.relational_discrepancy(rt, rs * scale), d, rtol=1e-5)
    # A joint permutation of the batch permutes both G's rows and columns alike.
    perm = RNG.permutation(b)
    np.testing.assert_allclose(L.relational_discrepancy(rt[perm], rs[perm]), d, rtol=1e-5)
    # ... while permuting only one side changes it.
    assert abs(float(L.relational_discrepancy(rt[perm], rs)) - d) > 1e-3
    # Closed forms. B = 2, identical rows vs antipodal rows: the off-diagonals differ by 2,
    # D = 2 * 2^2 / 2^2 = 2 (= 4 (B - 1) / B, the max for non-zero rows).
    same = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    anti = np.array([[1.0, 0.0], [-1.0, 0.0]], np.float32)
    np.testing.assert_allclose(L.relational_discrepancy(same, anti), 2.0, rtol=1e-6)
    # B = 4, identical rows vs a regular simplex (off-diagonals -1/(B-1)):
    # D = B (B - 1) (1 + 1/(B-1))^2 / B^2 = B / (B - 1).
    simplex = np.eye(4, dtype=np.float32) - 0.25
    ones = np.ones((4, 3), np.float32)
    np.testing.assert_allclose(L.relational_discrepancy(ones, simplex), 4 / 3, rtol=1e-5)
    # Random batches never leave [0, 4].
    many = [
        float(L.relational_discrepancy(*RNG.standard_normal((2, 3, 2)).astype(np.float32)))
        for _ in range(20)
    ]
    assert min(many) >= 0.0 and max(many) <= 4.0


# ------------------------------------------------------------------------------------- TAR

TAR_CASES = [(1.0, 0.25), (1.0, 1.0), (0.5, 0.5), (2.0, 0.1), (1.0, 0.05), (-0.5, 0.3)]


def test_tar_target_matches_monte_carlo():
    u = np.random.default_rng(123).standard_normal(2_000_000)
    for k, t in TAR_CASES:
        mc = _np_sigmoid((u - k) / t).mean()
        # MC std <= 0.5 / sqrt(2e6) = 3.5e-4, so 1e-3 is ~3 sigma.
        assert abs(L.tar_target(k, t) - mc) < 1e-3, (k, t)
        mc_low = _np_sigmoid((-u - k) / t).mean()
        assert abs(L.tar_target(k, t, two_sided=True) - mc_low) < 1e-3, (k, t)


def test_tar_target_exact_against_mpmath_and_limits():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 30
    for k, t in [(1.0, 0.25), (1.0, 0.01), (2.0, 0.02), (0.3, 3.0)]:
        f = lambda v, k=k, t=t: mpmath.npdf(v) / (1 + mpmath.exp(-(v - k) / t))
        ref = float(mpmath.quad(f, [-mpmath.inf, k - 5 * t, k, k + 5 * t, mpmath.inf]))
        # Plain 256-node Gauss-Hermite is off by >1e-3 at t = 0.01 / 0.02.
        assert abs(L.tar_target(k, t) - ref) < 1e-12, (k, t)
        assert abs(L.tar_target(k, t, two_sided=True) - ref) < 1e-12, (k, t)
    assert abs(L.tar_target(0.0, 0.7) - 0.5) < 1e-14
    for k in (0.5, 1.0, 2.0):  # hard limit: P(u > k)
        assert abs(L.tar_target(k, 1e-6) - 0.5 * math.erfc(k / math.sqrt(2))) < 1e-9
    vals = [L.tar_target(k, 0.25) for k in (0.0, 0.5, 1.0, 1.5)]
    assert all(a > b for a, b in zip(vals, vals[1:], strict=False))
    with pytest.raises(ValueError):
        L.tar_target(1.0, 0.0)


def _gaussian_layers(rng, n=4096):
    """Two layers drawn from N(mu, var) per channel; n = B*H*W samples per channel."""
    shapes = [(64, 8, 8, 16), (n, 12)]
    layers, mus, vars_ = [], [], []
    for shape in shapes:
        mu, var = _bn_stats(shape[-1], rng)
        layers.append((rng.standard_normal(shape) * np.sqrt(var) + mu).astype(np.float32))
        mus.append(mu)
        vars_.append(var)
    return layers, mus, vars_, n


def test_tar_loss_near_zero_on_bn_gaussian_and_positive_when_off():
    layers, mus, vars_, n = _gaussian_layers(np.random.default_rng(7))
    # Each (layer, k, tail) term is a mean over channels of (q_hat - q*)^2 with
    # E = Var[sigmoid] / n <= 1 / (4 n); over >= 12 channels it concentrates, so 3x that
    # bound per term is a safe tolerance (4096 samples -> 1.8e-4 per term).
    tol = 3.0 / (4 * n)
    assert float(L.tar_loss(layers, mus, vars_)) < 2 * tol
    assert float(L.tar_loss(layers, mus, vars_, two_sided=True)) < 4 * tol
    ks = (0.5, 1.0, 2.0)
    assert float(L.tar_loss(layers, mus, vars_, ks=ks, two_sided=True)) < 12 * tol
    # Shift every channel by delta * sqrt(var): q -> tar_target(k - delta) in expectation.
    k, t, delta = 1.0, L.TAR_TEMPERATURE, 0.5
    shifted = [z + delta * np.sqrt(v) for z, v in zip(layers, vars_, strict=True)]
    val = float(L.tar_loss(shifted, mus, vars_, k=k, temperature=t))
    ref = 2 * (L.tar_target(k - delta, t) - L.tar_target(k, t)) ** 2
    assert val > 50 * tol
    np.testing.assert_allclose(val, ref, rtol=0.1)
    # Tails and k values add up: the lower tail moves to tar_target(k + delta).
    val = float(L.tar_loss(shifted, mus, vars_, temperature=t, ks=(0.5, 1.0), two_sided=True))
    q0 = {kk: L.tar_target(kk, t) for kk in (0.5, 1.0)}
    ref = 2 * sum(
        (L.tar_target(kk - delta, t) - q0[kk]) ** 2 + (L.tar_target(kk + delta, t) - q0[kk]) ** 2
        for kk in (0.5, 1.0)
    )
    np.testing.assert_allclose(val, ref, rtol=0.1)
    # Scaling by a around mu: upper-tail q -> E sigmoid((a u - k)/t) = tar_target(k/a, t/a).
    a = 1.5
    scaled = [(z - m) * a + m for z, m in zip(layers, mus, strict=True)]
    val = float(L.tar_loss(scaled, mus, vars_, k=k, temperature=t))
    ref = 2 * (L.tar_target(k / a, t / a) - L.tar_target(k, t)) ** 2
    assert val > 50 * tol
    np.testing.assert_allclose(val, ref, rtol=0.1)


def test_tar_loss_jit_and_bf16():
    layers, mus, vars_, _ = _gaussian_layers(np.random.default_rng(3), n=256)
    f = jax.jit(functools.partial(L.tar_loss, k=1.0, temperature=0.5, two_sided=True))
    eager = L.tar_loss(layers, mus, vars_, k=1.0, temperature=0.5, two_sided=True)
    np.testing.assert_allclose(f(layers, mus, vars_), eager, rtol=1e-5)
    bf = [jnp.asarray(z, jnp.bfloat16) for z in layers]
    out = L.tar_loss(bf, mus, vars_)
    assert out.dtype == jnp.float32 and np.isfinite(float(out))
    g = jax.grad(lambda zs: L.tar_loss(zs, mus, vars_))(layers)
    assert all(np.all(np.isfinite(x)) for x in g)


def test_percentile_thresholds():
    rng = np.random.default_rng(5)
    mu, var = _bn_stats(6, rng)
    z_ref = (rng.standard_normal((32, 8, 8, 6)) * np.sqrt(var) + mu).astype(np.float32)
    q = 1 - 0.5 * math.erfc(1 / math.sqrt(2))  # the k = 1 quantile of a Gaussian
    tau, scale, target = L.percentile_thresholds(z_ref, q, temperature=0.25)
    np.testing.assert_allclose(tau, mu + np.sqrt(var), atol=0.1 * np.sqrt(var).max())
    np.testing.assert_allclose(
        tau, np.quantile(z_ref.reshape(-1, 6).astype(np.float64), q, axis=0), rtol=1e-4
    )
    np.testing.assert_allclose(scale, np.sqrt(z_ref.reshape(-1, 6).var(0) + 1e-5), rtol=1e-5)
    # Hard limit of the target is 1 - quantile (exceedance fraction of the reference).
    _, _, hard = L.percentile_thresholds(z_ref, q, temperature=1e-4)
    np.testing.assert_allclose(hard, 1 - q, atol=2e-3)
    thr = [(tau, scale, target)]
    assert float(L.tar_loss_percentile([z_ref], thr, 0.25)) < 1e-12
    assert float(L.tar_loss_percentile([z_ref + np.sqrt(var)], thr, 0.25)) > 1e-2


# ------------------------------------------------------------------------------ pixel priors


def test_tv_and_l2_closed_forms():
    x = np.array([[1.0, 2.0], [4.0, 8.0]], np.float32)[None, :, :, None]
    # vertical diffs 3, 6; horizontal diffs 1, 4.
    np.testing.assert_allclose(L.tv_loss(x), (9 + 36) / 2 + (1 + 16) / 2)
    np.testing.assert_allclose(L.tv_loss(x, order=1), (3 + 6) / 2 + (1 + 4) / 2)
    assert float(L.tv_loss(np.full((2, 3, 3, 2), 5.0, np.float32))) == 0.0
    x2 = np.concatenate([x, -2 * x])  # B = 2
    np.testing.assert_allclose(L.l2_prior(x2), (85 + 4 * 85) / 2)
    assert L.l2_prior(jnp.asarray(x2, jnp.bfloat16)).dtype == jnp.float32


if __name__ == "__main__":
    absltest.main()


# --------------------------------------------------------------------------- BN-affine TAR


@pytest.mark.parametrize("t", [0.1, 0.25, 1.0])
def test_traced_tail_target_equals_the_quadrature_one(t):
    ks = np.array([-4.0, -1.5, 0.0, 0.5, 1.0, 2.5, 4.0])
    got = np.asarray(L.tar_target_traced(jnp.asarray(ks), t))
    want = np.array([L.tar_target(k, t) for k in ks])
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_affine_offsets_are_where_the_bn_output_turns_positive():
    """k = -beta / |gamma| along sign(gamma): for any z, gamma (z - mu)/s + beta > 0 exactly
    when sign(gamma) (z - mu)/s > k (checked on samples); a near-zero gamma is left out, an
    offset beyond 4 stds clipped."""
    gamma = jnp.array([2.0, -2.0, 0.5, 1e-6, 0.1])
    beta = jnp.array([1.0, 1.0, -0.3, 0.2, 1.0])
    k, d, valid = L.affine_offsets(gamma, beta)
    np.testing.assert_allclose(k, [-0.5, -0.5, 0.6, -4.0, -4.0], rtol=1e-6)
    np.testing.assert_array_equal(d, [1, -1, 1, 1, 1])
    np.testing.assert_array_equal(valid, [True, True, True, False, True])
    u = np.random.default_rng(0).standard_normal((1000, 3))  # (z - mu)/s
    fires = np.asarray(gamma[:3]) * u + np.asarray(beta[:3]) > 0
    np.testing.assert_array_equal(fires, np.asarray(d[:3]) * u > np.asarray(k[:3]))


def test_affine_tar_is_zero_on_the_teachers_gaussian_and_ignores_dead_channels():
    """z ~ N(mu, var) per channel meets every channel's own tail target (loss ~ 0, sampling
    error only); shifting the inputs raises it; a channel with gamma ~ 0 does not count."""
    rng = np.random.default_rng(1)
    mu, var = jnp.array([0.5, -1.0, 0.0]), jnp.array([4.0, 0.25, 1.0])
    gamma, beta = jnp.array([1.5, -0.7, 1e-8]), jnp.array([0.4, 0.9, 0.0])
    z = jnp.asarray(mu + jnp.sqrt(var) * rng.standard_normal((20000, 3)), jnp.float32)
    at_teacher = float(L.tar_loss_affine([z], [mu], [var], [gamma], [beta], temperature=0.25))
    assert at_teacher < 1e-4
    shifted = float(L.tar_loss_affine([z + 1.0], [mu], [var], [gamma], [beta], temperature=0.25))
    assert shifted > 100 * at_teacher and shifted > 1e-3
    dead_moved = z.at[:, 2].add(5.0)
    again = float(L.tar_loss_affine([dead_moved], [mu], [var], [gamma], [beta], temperature=0.25))
    assert again == pytest.approx(at_teacher, rel=1e-6)


def test_rca_on_probabilities_is_softmax_at_its_temperature_with_the_exact_gradient():
    """rep 'probs': D_rel of softmax(logits / 4) (the student's logits averaged over time
    first), its gradient the exact one; a per-sample shift of the logits leaves it unchanged
    (softmax is shift-invariant) while it moves RCA on the logits themselves."""
    rng = np.random.default_rng(3)
    t_logits = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    s_logits_t = jnp.asarray(rng.normal(size=(2, 6, 5)), jnp.float32)  # [T, B, K]
    feats = jnp.zeros((6, 3))
    got = lambda s: L.rca_loss("probs", (t_logits, feats), (s, jnp.zeros((2, 6, 3))))
    soft = lambda z: jax.nn.softmax(z / L.RCA_PROB_TEMPERATURE, axis=-1)
    want = lambda s: L.relational_discrepancy(soft(t_logits), soft(s.mean(0)), grad_floor=0.0)
    np.testing.assert_allclose(got(s_logits_t), want(s_logits_t), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(got)(s_logits_t), jax.grad(want)(s_logits_t), rtol=1e-5)
    shifted = s_logits_t + jnp.asarray(rng.normal(size=(1, 6, 1)) * 3, jnp.float32)
    np.testing.assert_allclose(got(shifted), got(s_logits_t), rtol=1e-5)
    on_logits = lambda s: L.rca_loss("logits", (t_logits, feats), (s, jnp.zeros((2, 6, 3))))
    assert abs(float(on_logits(shifted)) - float(on_logits(s_logits_t))) > 1e-3
