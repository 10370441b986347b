"""The synthesis objective (stars_jax.objective): L_syn as the weighted sum of its terms,
warm-up, percentile TAR against numpy, the layer selection, and the augmentations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from stars_jax import losses
from stars_jax.objective import (
    crop_flip,
    gaussian_quantile,
    random_resized_crop,
    select_layers,
    synthesis_loss,
    tar_reference,
    teacher_bn,
)
from tests.synth_nets import SHAPE, K, _cfg, _synth


def test_loss_is_the_weighted_sum_of_its_terms(nets):
    teacher, tv, student, sv = nets
    cfg = _cfg(a_bn=0.7, a_oh=0.3, a_adv=1.3, l_rca=0.5, rca_sign=-1.0, l_tar=2.0)
    x = jax.random.normal(jax.random.key(2), (8, *SHAPE))
    y = jnp.arange(8) % K
    total, aux = synthesis_loss(x, y, tv, sv, teacher=teacher, student=student, cfg=cfg)
    # Reference computed term by term, from the public loss functions.
    (t_logits, _), inter = teacher.apply(tv, x, mutable=["intermediates"])
    bn = teacher_bn(inter["intermediates"], tv["batch_stats"])
    s_logits = student.apply(sv, x)[0].mean(0)
    ref = (
        0.7 * losses.bn_loss(bn.inputs, bn.means, bn.vars)
        + 0.3 * losses.cross_entropy(t_logits, y)
        + 1.3 * losses.adversarial_loss(t_logits, s_logits)
        - 0.5 * losses.relational_discrepancy(t_logits, s_logits)
        + 2.0 * losses.tar_loss(bn.inputs, bn.means, bn.vars, ks=(1.0,), temperature=0.25)
    )
    np.testing.assert_allclose(total, ref, rtol=1e-5)
    m = aux.metrics
    assert {"synth/bn", "synth/ce", "synth/adv", "synth/rca", "synth/tar"} <= set(m)
    agree = np.mean(np.argmax(t_logits, -1) == np.argmax(s_logits, -1))
    np.testing.assert_allclose(m["synth/adv_mask"], agree)
    np.testing.assert_allclose(m["synth/student_logit_std"], np.std(s_logits, 0).mean(), rtol=1e-5)
    _, aux0 = synthesis_loss(
        x, y, tv, sv, teacher=teacher, student=student, cfg=_cfg(l_rca=0.0, l_tar=0.0)
    )
    assert "synth/rca" not in aux0.metrics and "synth/tar" not in aux0.metrics  # the baseline


def test_warmup_is_bn_and_ce_only_without_the_student(nets):
    teacher, tv, _, _ = nets
    cfg = _cfg(a_bn=0.7, a_oh=0.3, a_adv=1.3, l_rca=0.5, l_tar=2.0)
    x = jax.random.normal(jax.random.key(3), (8, *SHAPE))
    y = jnp.arange(8) % K
    # student=None: a warm-up loss that ran the student would fail here.
    total, aux = synthesis_loss(x, y, tv, None, teacher=teacher, student=None, cfg=cfg, warmup=True)
    assert set(aux.metrics) == {"synth/bn", "synth/ce", "synth/loss"}
    ref = 0.7 * aux.metrics["synth/bn"] + 0.3 * aux.metrics["synth/ce"]
    np.testing.assert_allclose(total, ref, rtol=1e-6)


def _np_sigmoid(u):
    return 1.0 / (1.0 + np.exp(-u))


@pytest.mark.parametrize("two_sided", [False, True])
def test_percentile_tar_matches_numpy_and_vanishes_on_its_reference(nets, two_sided):
    teacher, tv, student, sv = nets
    t, k = 0.3, 0.5
    cfg = _cfg(
        a_bn=0.0,
        a_oh=0.0,
        a_adv=0.0,
        l_rca=0.0,
        l_tar=1.0,
        tar_thresholds="percentile",
        tar_temperature=t,
        tar_k=(k,),
        tar_two_sided=two_sided,
        tar_layers="stage_last",
    )
    x = jax.random.normal(jax.random.key(2), (8, *SHAPE))
    x_ref = 0.5 + 2.0 * jax.random.normal(jax.random.key(3), (8, *SHAPE))
    y = jnp.arange(8) % K
    loss = lambda xx, ref: synthesis_loss(
        xx, y, tv, sv, teacher=teacher, student=student, cfg=cfg, tar_ref=ref
    )[1].metrics["synth/tar"]
    ref = tar_reference(x_ref, tv, teacher=teacher, cfg=cfg)
    # Reference in numpy: per channel the Phi(k) quantile of the reference batch (lower tail:
    # its 1 - Phi(k) quantile), scale its std, target its own soft exceedance.
    bn_of = lambda xx: teacher_bn(
        teacher.apply(tv, xx, mutable=["intermediates"])[1]["intermediates"], tv["batch_stats"]
    )
    bn, bn_ref = bn_of(x), bn_of(x_ref)
    p = scipy.stats.norm.cdf(k)
    np.testing.assert_allclose(gaussian_quantile(k), p, rtol=1e-12)
    want = 0.0
    for i in select_layers(bn.names, "stage_last"):
        z = np.asarray(bn.inputs[i], np.float64).reshape(-1, bn.inputs[i].shape[-1])
        zr = np.asarray(bn_ref.inputs[i], np.float64).reshape(z.shape[0], -1)
        s = np.sqrt(zr.var(0) + 1e-5)
        tails = [(np.quantile(zr, p, axis=0), 1.0)]
        if two_sided:
            tails.append((np.quantile(zr, 1 - p, axis=0), -1.0))
        for tau, sign in tails:
            q = _np_sigmoid(sign * (z - tau) / (t * s)).mean(0)
            target = _np_sigmoid(sign * (zr - tau) / (t * s)).mean(0)
            want += np.mean((q - target) ** 2)
    assert want > 1e-4  # the batches differ: the check below can fail
    np.testing.assert_allclose(loss(x, ref), want, rtol=2e-3)
    np.testing.assert_allclose(loss(x_ref, ref), 0.0, atol=1e-10)  # its own reference
    not_ready = tar_reference(x_ref, tv, teacher=teacher, cfg=cfg, ready=False)
    assert float(loss(x, not_ready)) == 0.0  # an empty bank: no thresholds yet
    with pytest.raises(ValueError, match="needs a reference"):
        loss(x, None)


def test_unknown_tar_thresholds_is_a_clear_error(nets):
    with pytest.raises(ValueError, match="tar_thresholds.*valid"):
        _synth(nets, _cfg(tar_thresholds="quantile"))


def test_stage_last_selection():
    names = ("bn1", "layer1_0/bn1", "layer1_0/bn2", "layer2_0/bn1", "layer2_0/shortcut_1", "fc")
    assert select_layers(names, "stage_last") == [0, 2, 4, 5]
    assert select_layers(names, "all") == list(range(6))
    with pytest.raises(ValueError, match="stage_last"):
        select_layers(names, "last")


def test_crop_flip_is_per_sample_with_zero_fill():
    x = jnp.ones((16, 8, 8, 1))
    out = np.asarray(crop_flip(jax.random.key(0), x, 2, True))
    zeros = (out == 0).reshape(16, -1).sum(-1)
    assert len(set(zeros.tolist())) > 1  # different samples, different crops
    assert crop_flip(jax.random.key(0), x, 0, False) is x


def test_random_resized_crop():
    x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 3))
    same = random_resized_crop(jax.random.key(2), x, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    np.testing.assert_allclose(same, x, atol=1e-5)  # the whole image, resized to itself
    out = np.asarray(random_resized_crop(jax.random.key(3), x))
    assert out.shape == x.shape and out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    assert not np.allclose(out, x)
