"""Model structure tests: BN intermediates, shapes, and the spiking students' time folding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from stars_jax.models.layers import BN_INPUT
from stars_jax.models.students import STUDENTS, firing_rates, make_student
from stars_jax.models.teachers import make_teacher

# BatchNorm layers per teacher: stem + 2 per block + projection shortcuts (+ WRN's final BN).
BN_COUNTS = {"resnet18": 20, "resnet34": 36, "wrn16_2": 13, "wrn40_2": 37, "vgg11": 8}


@pytest.mark.parametrize("arch", sorted(BN_COUNTS))
def test_teacher_sows_every_bn_input(arch):
    model = make_teacher(arch, num_classes=7)
    x = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    (logits, feats), state = jax.eval_shape(
        lambda v: model.apply(v, x, mutable=["intermediates"]), variables
    )
    assert logits.shape == (2, 7) and feats.ndim == 2
    bn_in = traverse_util.flatten_dict(state["intermediates"])
    stats = traverse_util.flatten_dict(variables["batch_stats"])
    bn_paths = {k[:-1] for k in bn_in if k[-1] == BN_INPUT}
    assert bn_paths == {k[:-1] for k in stats} and len(bn_paths) == BN_COUNTS[arch]
    for path in bn_paths:  # The sown input has the BN's channel count.
        assert bn_in[path + (BN_INPUT,)][0].shape[-1] == stats[path + ("mean",)].shape[0]


def test_teacher_input_size_and_channels():
    model = make_teacher("vgg_tiny", num_classes=3)
    for shape in [(1, 28, 28, 1), (1, 64, 64, 3)]:
        v = jax.eval_shape(lambda s=shape: model.init(jax.random.key(0), jnp.zeros(s)))
        out, _ = jax.eval_shape(lambda v, s=shape: model.apply(v, jnp.zeros(s)), v)
        assert out.shape == (1, 3)


@pytest.mark.parametrize("arch", ["resnet18", "resnet19", "vgg11", "wrn16_2"])
def test_student_shapes(arch):
    model = make_student(arch, num_classes=10, time_steps=2)
    x = jnp.zeros((3, 32, 32, 3))
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    (logits, feats), state = jax.eval_shape(
        lambda v: model.apply(v, x, mutable=["firing_rates"]), v
    )
    assert logits.shape == (2, 3, 10) and feats.shape[:2] == (2, 3)
    assert len(firing_rates(state["firing_rates"])) > 3


def _init_student(arch, t):
    model = make_student(arch, num_classes=5, time_steps=t)
    x = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
    variables = model.init(jax.random.key(0), x)
    variables = {k: variables[k] for k in ("params", "batch_stats")}  # drop sown rates
    # Larger BN gains make the tiny nets fire, so the checks below see real spikes.
    variables = jax.tree_util.tree_map_with_path(
        lambda p, a: a * 3.0 if getattr(p[-1], "key", None) == "scale" else a, variables
    )
    return model, variables, x


@pytest.mark.parametrize("arch", ["resnet_tiny", "vgg_tiny", "wrn_tiny"])
def test_student_time_folding(arch):
    """Causality over time and independence across the batch: both break if the
    time-folded batch were unfolded in the wrong (batch-major) order."""
    model4, v, x = _init_student(arch, 4)
    model2 = make_student(arch, num_classes=5, time_steps=2)
    (l4, _), st = model4.apply(v, x, mutable=["firing_rates"])
    l2, _ = model2.apply(v, x)
    np.testing.assert_allclose(l4[:2], l2, rtol=1e-5, atol=1e-5)
    assert not np.allclose(l4[2:], l4[:2].mean(0))  # later steps do differ
    x_other = x.at[1:].set(jax.random.normal(jax.random.key(9), x[1:].shape))
    l4b, _ = model4.apply(v, x_other)
    np.testing.assert_allclose(l4[:, 0], l4b[:, 0], rtol=1e-5, atol=1e-5)
    rates = firing_rates(st["firing_rates"])
    assert all(0.0 <= float(r) <= 1.0 for r in rates.values())
    assert max(float(r) for r in rates.values()) > 0.01


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError, match="resnet19"):
        make_student("resnet50", 10)
    with pytest.raises(ValueError, match="wrn40_2"):
        make_teacher("resnet50", 10)
    assert set(STUDENTS) >= {"resnet18", "resnet19", "vgg11", "wrn16_2"}
