"""stars_jax.strength: per-term gradients on the images add up to L_syn's, scale with their
weights, and ratio scales make a term act at the ratio asked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stars_jax import strength
from stars_jax.config import base_config, synth_view
from stars_jax.models.students import make_student
from stars_jax.models.teachers import make_teacher
from stars_jax.objective import synthesis_loss

K, SHAPE = 4, (8, 8, 3)


@pytest.fixture(scope="module")
def setup():
    teacher, student = make_teacher("resnet_tiny", K), make_student("resnet_tiny", K, time_steps=2)
    tv = teacher.init(jax.random.key(0), jnp.zeros((2, *SHAPE)))
    tv = {"params": tv["params"], "batch_stats": jax.tree.map(lambda a: a + 0.3, tv["batch_stats"])}
    sv = student.init(jax.random.key(1), jnp.zeros((2, *SHAPE)))
    x = jax.random.normal(jax.random.key(2), (8, *SHAPE))
    y = jnp.arange(8) % K
    cfg = synth_view(base_config().synth)  # the flat view the trainer reads
    cfg.a_bn, cfg.a_oh, cfg.a_adv, cfg.l_rca, cfg.l_tar = 10.0, 0.5, 1.1, 2.0, 3.0
    kw = dict(teacher=teacher, student=student)
    return x, y, tv, sv, cfg, kw


def test_term_gradients_add_up_to_the_total(setup):
    x, y, tv, sv, cfg, kw = setup
    grads = strength.term_gradients(x, y, tv, sv, cfg=cfg, **kw)
    assert sorted(grads) == ["adv", "bn", "ce", "rca", "tar"]
    total = jax.grad(lambda x_: synthesis_loss(x_, y, tv, sv, cfg=cfg, **kw)[0])(x)
    summed = sum(grads.values())
    np.testing.assert_allclose(summed, total, rtol=1e-4, atol=1e-6 * float(jnp.abs(total).max()))


def test_ratios_scale_with_the_weights(setup):
    x, y, tv, sv, cfg, kw = setup
    r1 = strength.gradient_ratios(strength.term_gradients(x, y, tv, sv, cfg=cfg, **kw))
    cfg2 = cfg.copy_and_resolve_references()
    cfg2.l_tar, cfg2.a_oh = 30.0, 0.0  # TAR x10, CE off
    r2 = strength.gradient_ratios(strength.term_gradients(x, y, tv, sv, cfg=cfg2, **kw))
    assert float(r1["bn"]) == pytest.approx(1.0) and "ce" not in r2
    assert float(r2["tar"]) == pytest.approx(10 * float(r1["tar"]), rel=1e-4)
    assert float(r2["rca"]) == pytest.approx(float(r1["rca"]), rel=1e-4)


def test_ratio_scales_make_stars_act_at_the_asked_ratio(setup):
    x, y, tv, sv, cfg, kw = setup
    unit = strength.unit_stars_weights(cfg)
    unit_ratios = strength.gradient_ratios(
        strength.term_gradients(x, y, tv, sv, cfg=cfg, weights=unit, **kw)
    )
    scales = strength.ratio_scales(unit_ratios, cfg)
    target = {"rca": 0.05, "tar": 0.2}  # l_rca, l_tar read as ratios
    weights = {"bn": cfg.a_bn, **{t: unit[t] * target[t] * scales[t] for t in target}}
    got = strength.gradient_ratios(
        strength.term_gradients(x, y, tv, sv, cfg=cfg, weights=weights, **kw)
    )
    for t in target:
        assert float(got[t]) == pytest.approx(target[t], rel=1e-4), t


def test_bn_affine_tar_reads_the_teachers_own_affine(setup):
    """tar_thresholds='bn_affine' on a real teacher: the TAR term is the affine loss on its BN
    inputs (checked against losses.tar_loss_affine fed by hand) and has a gradient on x."""
    from stars_jax import losses
    from stars_jax.objective import teacher_bn

    x, y, tv, sv, cfg, kw = setup
    c = cfg.copy_and_resolve_references()
    c.tar_thresholds = "bn_affine"
    _, aux = synthesis_loss(x, y, tv, sv, cfg=c, **kw)
    _, inter = kw["teacher"].apply(tv, x, mutable=["intermediates"])
    bn = teacher_bn(inter["intermediates"], tv["batch_stats"], tv["params"])
    want = losses.tar_loss_affine(
        bn.inputs, bn.means, bn.vars, bn.scales, bn.biases, temperature=c.tar_temperature
    )
    assert float(aux.metrics["synth/tar"]) == pytest.approx(float(want), rel=1e-5)
    g = strength.term_gradients(x, y, tv, sv, cfg=c, **kw)["tar"]
    assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).max()) > 0
