"""The round (stars_jax.distill): percentile TAR's reference from the bank, a round without
KD steps, and the KD step with RCA on a faint student."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.default import get_config
from stars_jax.bank import init_bank
from stars_jax.distill import (
    KDContext,
    init_train_state,
    make_optimizer,
    make_round_steps,
    run_round,
)
from stars_jax.synthesis import make_synthesizer
from tests.synth_nets import MEAN, SHAPE, STD, K, _cfg


def _ctx(nets, opt):
    teacher, _, student, _ = nets
    return KDContext(
        teacher,
        student,
        opt,
        MEAN,
        STD,
        b_rca=1.0,
        crop_pad=2,
        flip=True,
        lr=1e-3,
        warmup_steps=1,
        num_classes=K,
    )


def test_percentile_tar_takes_its_thresholds_from_the_bank(nets):
    teacher, tv, student, _ = nets
    cfg = get_config()
    opt = make_optimizer(cfg.distill)
    st = init_train_state(student, opt, jax.random.key(5), SHAPE, 10)
    scfg = _cfg(steps=1, warmup_rounds=0, tar_thresholds="percentile")
    syn = make_synthesizer(scfg, teacher, student, SHAPE, K, MEAN, STD)
    steps = make_round_steps(syn, _ctx(nets, opt), 8, scfg)
    assert steps.tar_reference is not None
    assert make_round_steps(syn, _ctx(nets, opt), 8, _cfg()).tar_reference is None  # gaussian
    carry = (st, syn.init(jax.random.key(6), tv), init_bank(32, SHAPE))
    carry, out = run_round(steps, carry, tv, jax.random.key(7), 0, 1, 0)
    assert float(out.metrics["synth/tar"]) == 0.0  # the bank was empty: no reference yet
    _, out = run_round(steps, carry, tv, jax.random.key(8), 1, 1, 0)
    assert 0.0 < float(out.metrics["synth/tar"]) < 1.0  # thresholds from round 0's batch


def test_round_without_kd_leaves_student_bit_identical(nets):
    teacher, tv, student, _ = nets
    cfg = get_config()
    opt = make_optimizer(cfg.distill)
    st = init_train_state(student, opt, jax.random.key(5), SHAPE, 10)
    ctx = _ctx(nets, opt)
    syn = make_synthesizer(_cfg(steps=2), teacher, student, SHAPE, K, MEAN, STD)
    steps = make_round_steps(syn, ctx, batch_size=8)
    before = jax.tree.map(np.array, st)
    carry = (st, syn.init(jax.random.key(6), tv), init_bank(32, SHAPE))
    (st2, syn_state, bank), out = run_round(
        steps, carry, tv, jax.random.key(7), 0, 2, 0, warmup=True
    )
    jax.tree.map(np.testing.assert_array_equal, before, st2)  # student frozen in synthesis
    assert int(bank.count) == 8 and out.images.shape == (8, *SHAPE)
    np.testing.assert_array_equal(bank.preds[:8], out.preds)  # the teacher's classes kept
    assert {
        "synth/teacher_acc",
        "synth/class_entropy",
        "synth/diversity",
        "synth/bank_entropy",
    } <= set(out.metrics)
    assert all(np.isfinite(float(v)) for v in out.metrics.values())
    # With KD steps the student does change: the check above can fail.
    (st3, _, _), out = run_round(steps, (st2, syn_state, bank), tv, jax.random.key(8), 1, 1, 2)
    assert not np.allclose(before.params["fc"]["kernel"], st3.params["fc"]["kernel"])
    assert np.isfinite(out.metrics["kd/loss"]) and "synth/bn" in out.metrics


def test_kd_step_with_rca_survives_a_faint_student(nets):
    """A student whose logits have barely left 0 (few spikes reach its classifier yet): the KD
    step with RCA (b_rca = 1) must stay KD-sized (the exact cosine gradient made it ~1e4 times
    larger and blew a CIFAR-10 student up in its first KD round)."""
    from stars_jax.distill import kd_step

    teacher, tv, student, _ = nets
    cfg = get_config()
    cfg.distill.optimizer = "sgd"
    opt = make_optimizer(cfg.distill)
    st = init_train_state(student, opt, jax.random.key(30), SHAPE, 10)
    fc = {"kernel": 1e-4 * st.params["fc"]["kernel"], "bias": 0 * st.params["fc"]["bias"]}
    st = st.replace(params={**st.params, "fc": fc})
    silent = student
    images = jax.random.randint(jax.random.key(31), (8, *SHAPE), 0, 256).astype(jnp.uint8)
    norms = {}
    for b_rca in (0.0, 1.0):
        ctx = KDContext(
            teacher, silent, opt, MEAN, STD, t_kd=20.0, b_rca=b_rca, lr=0.2, num_classes=K
        )
        step = jax.jit(lambda s, x, k, c=ctx: kd_step(c, s, tv, x, k))
        _, m = step(st, images, jax.random.key(32))
        norms[b_rca] = float(m["kd/grad_norm"])
    assert np.isfinite(norms[1.0]) and norms[1.0] < 2 * norms[0.0], norms


def test_student_weight_average_is_the_hand_computed_one_and_leaves_training_alone(nets):
    """With ``ema_decay`` 0.2 the average after each of 4 KD steps equals the recurrence
    ``e = d e + (1 - d) v`` with ``d = min(0.2, t / (t + 9))`` (0.1, 0.18, then 0.2), computed
    in NumPy from the raw student's variables, BN statistics included; the raw student is
    bit-identical to a run without the average, and a state without it has none."""
    from stars_jax.distill import kd_step

    teacher, tv, student, _ = nets
    opt = make_optimizer(get_config().distill)
    images = jax.random.randint(jax.random.key(41), (8, *SHAPE), 0, 256).astype(jnp.uint8)
    runs = {}
    for decay in (0.0, 0.2):
        ctx = KDContext(teacher, student, opt, MEAN, STD, lr=1e-2, ema_decay=decay, num_classes=K)
        st = init_train_state(student, opt, jax.random.key(40), SHAPE, 10, ema=bool(decay))
        step = jax.jit(lambda s, k, c=ctx: kd_step(c, s, tv, images, k)[0])
        seen = [jax.tree.map(np.asarray, st.variables)]
        for t in range(4):
            st = step(st, jax.random.key(t))
            seen.append(jax.tree.map(np.asarray, st.variables))
        runs[decay] = (st, seen)
    assert runs[0.0][0].ema is None
    jax.tree.map(np.testing.assert_array_equal, runs[0.0][1], runs[0.2][1])
    st, seen = runs[0.2]
    want = seen[0]
    for t in range(1, 5):
        d = min(0.2, t / (t + 9))
        want = jax.tree.map(lambda e, v, d=d: d * e + (1 - d) * v, want, seen[t])
    assert jax.tree.structure(st.ema) == jax.tree.structure(want)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), st.ema, want)
    assert jax.tree.leaves(st.variables["batch_stats"])  # BN statistics are averaged too
    assert not np.allclose(st.ema["params"]["fc"]["kernel"], seen[-1]["params"]["fc"]["kernel"])


def test_round_logs_the_terms_gradient_ratios_as_strength_measures_them(nets):
    """``ratios`` adds synth/grad_ratio/<term> for every weighted term, equal to
    ``strength.gradient_ratios`` on the kept batch at the round's student; never in warm-up."""
    from stars_jax import strength
    from stars_jax.apply import normalize

    teacher, tv, student, _ = nets
    opt = make_optimizer(get_config().distill)
    st = init_train_state(student, opt, jax.random.key(5), SHAPE, 10)
    scfg = _cfg(steps=1, warmup_rounds=0, l_tar=3.0, l_rca=2.0)
    syn = make_synthesizer(scfg, teacher, student, SHAPE, K, MEAN, STD)
    steps = make_round_steps(syn, _ctx(nets, opt), 8, scfg)
    fresh = lambda: (st, syn.init(jax.random.key(6), tv), init_bank(32, SHAPE))  # donated
    _, warm = run_round(steps, fresh(), tv, jax.random.key(7), 0, 1, 0, warmup=True, ratios=True)
    assert not any("grad_ratio" in k for k in warm.metrics)
    _, out = run_round(steps, fresh(), tv, jax.random.key(7), 0, 1, 0, ratios=True)
    got = {k.rsplit("/", 1)[1]: float(v) for k, v in out.metrics.items() if "grad_ratio" in k}
    x = normalize(out.images, MEAN, STD)
    grads = strength.term_gradients(
        x, out.labels, tv, st.variables, teacher=teacher, student=student, cfg=scfg
    )
    want = {k: float(v) for k, v in strength.gradient_ratios(grads).items()}
    assert got.keys() == want.keys() and {"bn", "rca", "tar"} <= got.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, err_msg=k)


def test_per_time_step_kd_composes_with_rca_in_kd(nets):
    """TET-style KD (every time step) with STARS's RCA in KD: the loss is KD + b_rca RCA, the
    KD part is the per-time-step one (it differs from KD on the time mean), and RCA, which
    compares time-averaged outputs, is the same either way."""
    from stars_jax.distill import kd_step

    teacher, tv, student, _ = nets
    opt = make_optimizer(get_config().distill)
    st = init_train_state(student, opt, jax.random.key(50), SHAPE, 10)
    images = jax.random.randint(jax.random.key(51), (8, *SHAPE), 0, 256).astype(jnp.uint8)
    out = {}
    for per_t in (False, True):
        ctx = KDContext(
            teacher, student, opt, MEAN, STD, lr=1e-3, b_rca=0.5, per_time_step=per_t, num_classes=K
        )
        _, m = jax.jit(lambda s, c=ctx: kd_step(c, s, tv, images, jax.random.key(52)))(st)
        out[per_t] = {k: float(v) for k, v in m.items()}
    for m in out.values():
        assert m["kd/loss"] == pytest.approx(m["kd/kd"] + 0.5 * m["kd/rca"], rel=1e-6)
    assert out[True]["kd/rca"] == pytest.approx(out[False]["kd/rca"], rel=1e-6)
    assert abs(out[True]["kd/kd"] - out[False]["kd/kd"]) > 1e-6 * abs(out[False]["kd/kd"])
