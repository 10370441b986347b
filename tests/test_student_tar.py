"""TAR on the student's side (stars_jax.student_tar): the loss's closed form and gradient, both
sides' rates against the models computed another way, which layers pair (the CPU CIFAR-10
pair included), a clear error when none do, and the term inside the KD step."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs.default import get_config
from stars_jax import errors, student_tar
from stars_jax.apply import normalize
from stars_jax.distill import KDContext, init_train_state, kd_step, make_optimizer
from stars_jax.models.layers import BN_INPUT
from stars_jax.models.students import firing_rates, make_student
from stars_jax.models.teachers import make_teacher
from tests.synth_nets import MEAN, SHAPE, STD, K

RESNET_PAIRS = ["layer1_0/sn1", "layer1_0/sn2", "layer2_0/sn1", "layer2_0/sn2", "sn1"]


def test_loss_is_the_mean_squared_rate_gap_over_paired_layers():
    teacher = {"a": jnp.array([0.5, 0.25]), "c": jnp.array([0.1, 0.2, 0.3])}
    student = {"a": jnp.array([0.3, 0.25]), "b": jnp.array([0.9]), "c": jnp.array([0.1, 0.2])}
    assert student_tar.paired(teacher, student) == ["a"]  # "c" differs in width, "b" is alone
    chex.assert_trees_all_close(student_tar.loss(teacher, student), 0.02, rtol=1e-6)
    g_t, g_s = jax.grad(student_tar.loss, argnums=(0, 1))(teacher, student)
    chex.assert_trees_all_close(g_s["a"], jnp.array([-0.2, 0.0]), atol=1e-7)  # 2 (r - f) / C
    chex.assert_trees_all_close(g_t["a"], jnp.zeros(2))  # the teacher side is a constant
    assert float(jnp.abs(g_s["b"]).sum()) == 0.0


def _batch(seed=3, n=8):
    return jax.random.normal(jax.random.key(seed), (n, *SHAPE))


def test_rates_are_where_the_models_fire(nets):
    teacher, tv, student, sv = nets
    x = _batch()
    t_fire, s_rates = student_tar.collect(teacher, tv, student, sv, x)
    assert student_tar.paired(t_fire, s_rates) == RESNET_PAIRS
    # Teacher, another way: the stem's ReLU input is BN(bn1's input) with its running stats.
    _, inter = teacher.apply(tv, x, mutable=["intermediates"])
    z = inter["intermediates"]["bn1"][BN_INPUT][0]
    bn, stats = tv["params"]["bn1"], tv["batch_stats"]["bn1"]
    a = (z - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-5) * bn["scale"] + bn["bias"]
    chex.assert_trees_all_close(t_fire["sn1"], jnp.mean(a > 0, axis=(0, 1, 2)), atol=1e-6)
    assert 0.0 < float(jnp.mean(t_fire["sn1"])) < 1.0
    # Student, another way: each layer's channel mean is the rate its firing_rates sow.
    _, state = student.apply(sv, x, train=True, mutable=["batch_stats", "firing_rates"])
    rates = firing_rates(state["firing_rates"])
    assert sorted(rates) == sorted(s_rates)
    for path, r in s_rates.items():
        assert float(jnp.mean(r)) == pytest.approx(float(rates[path]), abs=1e-6), path


def test_the_cpu_cifar_pair_shares_the_stem_and_first_blocks():
    teacher = make_teacher("resnet14", 10)
    student = make_student("resnet_small", 10, time_steps=2)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    tv = jax.eval_shape(lambda: teacher.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3))))
    sv = jax.eval_shape(lambda: student.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3))))
    names = student_tar.check_pairs(teacher, tv, student, sv, x)
    assert names == RESNET_PAIRS  # resnet14's layer1_1, layer2_1 and layer3 have no partner


def test_models_that_share_no_layer_are_refused():
    teacher = make_teacher("resnet_tiny", K)  # widths 8, 16 against the student's 16, 32
    student = make_student("resnet_small", K, time_steps=2)
    x = jax.ShapeDtypeStruct((2, *SHAPE), jnp.float32)
    tv = jax.eval_shape(lambda: teacher.init(jax.random.key(0), jnp.zeros((2, *SHAPE))))
    sv = jax.eval_shape(lambda: student.init(jax.random.key(0), jnp.zeros((2, *SHAPE))))
    with pytest.raises(errors.ConfigError, match="none pair here.*b_tar=0"):
        student_tar.check_pairs(teacher, tv, student, sv, x)


def test_kd_step_adds_the_term_at_its_weight(nets):
    teacher, tv, student, _ = nets
    opt = make_optimizer(get_config().distill)
    state = init_train_state(student, opt, jax.random.key(5), SHAPE, 10)
    images = np.asarray(jax.random.randint(jax.random.key(1), (8, *SHAPE), 0, 256), np.uint8)
    key = jax.random.key(2)

    def step(b_tar):
        ctx = KDContext(teacher, student, opt, MEAN, STD, lr=1e-2, num_classes=K, b_tar=b_tar)
        return kd_step(ctx, state, tv, images, key)

    base, m0 = step(0.0)
    tarred, m1 = step(2.0)
    assert "kd/tar" not in m0
    x = normalize(images, MEAN, STD)  # KDContext's default: no crop, no flip
    expected = student_tar.loss(*student_tar.collect(teacher, tv, student, state.variables, x))
    assert float(m1["kd/tar"]) == pytest.approx(float(expected), rel=1e-4)
    assert float(m1["kd/tar"]) > 0
    assert float(m1["kd/loss"]) == pytest.approx(float(m1["kd/kd"]) + 2.0 * float(expected), 1e-4)
    assert float(m1["kd/kd"]) == pytest.approx(float(m0["kd/kd"]), rel=1e-6)  # same forward
    # The term moves the student (its gradient reaches the weights through the surrogate).
    moved = traverse_util.flatten_dict(
        jax.tree.map(lambda a, b: jnp.abs(a - b).max(), base.params, tarred.params)
    )
    assert max(float(v) for v in moved.values()) > 0
