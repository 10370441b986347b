"""Synthesis: the kept batch, each synthesizer's round mechanics (descent, frozen networks,
resets, meta steps, conditioning, CMI's contrastive term and bank)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stars_jax.synthesis import SYNTHESIZERS, StepInputs
from stars_jax.synthesizers.cmi import contrastive_loss
from stars_jax.synthesizers.common import balanced_labels
from tests.synth_nets import SHAPE, K, _cfg, _synth


def _round(nets, syn, state, key, round_=0, steps=3, warmup=False):
    """begin, ``steps`` steps, end, jitted and donated as ``distill.make_round_steps`` does
    (a state holding one buffer twice fails there); returns (state, images, labels, per-step
    losses, the last work)."""
    _, tv, _, sv = nets
    state, work = jax.jit(syn.begin, donate_argnums=0)(state, key, round_)
    step = jax.jit(syn.step, donate_argnums=1)
    history = []
    for i in range(steps):
        inputs = StepInputs(tv, sv, jax.random.fold_in(key, i + 1), warmup=warmup)
        work, m = step(state, work, inputs)
        history.append(float(m["synth/loss"]))
    last = jax.tree.map(jnp.copy, work)
    state, images, labels = jax.jit(syn.end, donate_argnums=0)(state, work)
    return state, images, labels, history, last


def _copy(tree):
    """A copy to keep when a round donates the original."""
    return jax.tree.map(jnp.copy, tree)


def _cfg_for(method):
    lr = {"deepinversion": 0.05, "cmi": 5e-3}.get(method, 5e-3)
    return _cfg(method, steps=8, lr=lr, jitter=0, a_adv=1.1, l_rca=1.0, l_tar=1.0)


@pytest.mark.parametrize("method", sorted(SYNTHESIZERS))
def test_synthesis_descends_and_freezes_the_networks(nets, method):
    teacher, tv, student, sv = nets
    syn = _synth(nets, _cfg_for(method))
    state = syn.init(jax.random.key(3), tv)
    before = jax.tree.map(np.array, (tv, sv))
    _, images, labels, history, work = _round(nets, syn, state, jax.random.key(4), steps=8)
    assert np.mean(history[-3:]) < history[0], history
    assert images.dtype == jnp.uint8 and images.shape == (8, *SHAPE) and labels.shape == (8,)
    jax.tree.map(np.testing.assert_array_equal, before, (tv, sv))
    # The kept batch is the lowest-loss one, and the loss recorded for it is that minimum.
    np.testing.assert_allclose(float(work.best.loss), min(history), rtol=1e-6)


def test_kept_batch_is_the_lowest_loss_one(nets):
    """DeepInversion's pixels before each step are the batch that step's loss scores."""
    _, tv, _, sv = nets
    syn = _synth(nets, _cfg("deepinversion", lr=0.3, jitter=0))
    state = syn.init(jax.random.key(5), tv)
    state, work = syn.begin(state, jax.random.key(6), 0)
    seen, history = [], []
    for i in range(6):
        seen.append(np.asarray(work.trainable) * 0.25 + 0.5)
        work, m = syn.step(state, work, StepInputs(tv, sv, jax.random.key(7 + i)))
        history.append(float(m["synth/loss"]))
    _, images, _ = syn.end(state, work)
    best = int(np.argmin(history))
    assert best != len(history) - 1 or history[-1] < history[-2]  # not simply the last
    want = np.clip(np.round(seen[best] * 255), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(images, want)


def test_fast_resets_its_first_layer_and_bn_once(nets):
    _, tv, _, _ = nets
    syn = _synth(nets, _cfg("fast", reset_l0_round=3))
    state = syn.init(jax.random.key(8), tv)
    params = jax.tree.map(np.asarray, state.params)
    for round_ in (0, 1, 3):  # rounds 1, 2 and 4 (1-based): untouched
        s, _ = syn.begin(state, jax.random.key(9), round_)
        jax.tree.map(np.testing.assert_array_equal, s.params, params)
    s, work = syn.begin(state, jax.random.key(9), 2)  # round 3: as the reference's reset_l0
    for layer, w in (("l1", "kernel"), ("bn0", "scale")):  # weights N(0, 0.02), biases 0
        k = np.asarray(s.params[layer][w])
        assert not np.allclose(k, params[layer][w]) and 0.01 < k.std() < 0.03, layer
        assert abs(k.mean()) < 0.01, layer  # the BN's scale no longer near 1
        np.testing.assert_array_equal(s.params[layer]["bias"], 0.0)
    for layer in set(params) - {"l1", "bn0"}:  # the rest of the generator stays
        jax.tree.map(np.testing.assert_array_equal, s.params[layer], params[layer])
    jax.tree.map(np.testing.assert_array_equal, s.batch_stats, state.batch_stats)
    np.testing.assert_array_equal(work.trainable["g"]["bn0"]["scale"], s.params["bn0"]["scale"])


def test_fast_meta_state_persists_and_ema_fills(nets):
    _, tv, _, _ = nets
    syn = _synth(nets, _cfg("fast"))
    state = syn.init(jax.random.key(10), tv)
    assert not bool(state.ema.ready)
    s1, *_ = _round(nets, syn, _copy(state), jax.random.key(11), warmup=True)
    assert bool(s1.ema.ready)
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), state.params, s1.params)
    assert all(jax.tree.leaves(moved))  # the meta step moved every generator weight
    s2, *_ = _round(nets, syn, _copy(s1), jax.random.key(12), round_=1)
    # The second round's batch moments blend into the EMA (0.9 old + 0.1 new).
    m1, m2 = np.asarray(s1.ema.moments.means[0]), np.asarray(s2.ema.moments.means[0])
    assert not np.allclose(m1, m2)


def test_balanced_labels():
    y = np.asarray(balanced_labels(jax.random.key(0), 23, 5))
    np.testing.assert_array_equal(y[:20], np.arange(20) % 5)
    assert y.shape == (23,) and ((0 <= y) & (y < 5)).all()


@pytest.mark.parametrize("embed", ["fixed", "learned"])
def test_nayer_noisy_layer_embeddings_and_reinit(nets, embed):
    _, tv, _, _ = nets
    syn = _synth(nets, _cfg("nayer", embed=embed, reinit_every=3))
    state = syn.init(jax.random.key(13), tv)
    s1, images, labels, _, work = _round(nets, syn, _copy(state), jax.random.key(14), round_=1)
    np.testing.assert_array_equal(labels, np.arange(8) % K)  # two chunks of the K classes
    changed = not np.allclose(s1.embed, state.embed)
    assert changed == (embed == "learned")
    # The body persists across rounds: the next round starts where this one ended ...
    s2, work2 = syn.begin(s1, jax.random.key(15), 2)
    np.testing.assert_array_equal(
        work2.trainable["g"]["body"]["l1"]["kernel"], s1.params["body"]["l1"]["kernel"]
    )
    # ... but its noisy layers are drawn anew every round, from N(0, 1),
    nk = np.asarray(work2.trainable["g"]["noise_kernel"])
    assert not np.allclose(nk, s1.params["noise_kernel"]) and 0.8 < nk.std() < 1.2
    # and the whole generator is re-initialised every reinit_every rounds (round 3 here).
    s3, _ = syn.begin(s1, jax.random.key(15), 3)
    assert not np.allclose(s3.params["body"]["l1"]["kernel"], s1.params["body"]["l1"]["kernel"])
    np.testing.assert_array_equal(s3.embed, s1.embed)  # the embeddings are kept


def test_nayer_images_depend_on_the_label(nets):
    from stars_jax.models.generators import NoisyLayerGenerator

    gen = NoisyLayerGenerator(SHAPE, 8, 16, chunk=K)
    e = jax.random.normal(jax.random.key(16), (K, 8))
    idx = jnp.array([0, 1, 2, 3, 0, 0, 0, 0])
    v = gen.init(jax.random.key(17), e[idx])
    # Same chunk, different labels -> different images; one label in two chunks differs too.
    x, _ = gen.apply(v, e[idx], mutable=["batch_stats"])
    x = np.asarray(x)
    assert not np.allclose(x[0], x[1]) and not np.allclose(x[0], x[4])
    np.testing.assert_allclose(x[4], x[5], atol=1e-6)  # same label, same chunk: same latent


def _np_contrastive(local, glob, neg_local, neg_glob, valid, t):
    """CMI's loss as the reference writes it, in numpy, over the valid bank rows only."""
    nl, ng = neg_local[valid], neg_glob[valid]
    q = np.concatenate([local, nl])
    k = np.concatenate([glob, ng])
    logits = q @ k.T / t
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.diagonal(logp)
    b = local.shape[0]
    return ce[:b].mean() + (ce[b:].mean() if len(nl) else 0.0)


@pytest.mark.parametrize("n_valid", [0, 3, 6])
def test_contrastive_loss_matches_the_reference_formula(n_valid):
    rng = np.random.default_rng(n_valid)
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    local, glob = unit(rng.normal(size=(5, 4))), unit(rng.normal(size=(5, 4)))
    neg_l, neg_g = unit(rng.normal(size=(6, 4))), unit(rng.normal(size=(6, 4)))
    valid = np.arange(6) < n_valid
    got = contrastive_loss(lambda f: f, local, glob, neg_l, neg_g, jnp.asarray(valid), 0.2)
    np.testing.assert_allclose(
        got, _np_contrastive(local, glob, neg_l, neg_g, valid, 0.2), rtol=1e-5
    )


def test_cmi_bank_fills_and_negatives_are_valid_rows(nets):
    _, tv, _, _ = nets
    cfg = _cfg("cmi", a_cr=0.8)
    syn = _synth(nets, cfg)
    state = syn.init(jax.random.key(18), tv)
    assert int(state.count) == 0
    s1, *_, work = _round(nets, syn, _copy(state), jax.random.key(19), steps=2)
    assert int(s1.count) == 8 and int(s1.cursor) == 8
    np.testing.assert_array_equal(s1.feats[:8], work.best.keep)
    assert not np.allclose(s1.feats[:8], 0) and np.allclose(s1.feats[8:], 0)
    s2, *_ = _round(nets, syn, _copy(s1), jax.random.key(20), steps=2)
    s3, *_ = _round(nets, syn, s2, jax.random.key(21), steps=2)
    assert int(s3.count) == 24 and int(s3.cursor) == 0  # the ring wrapped
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), state.head, s3.head)
    assert all(jax.tree.leaves(moved))  # the projection head trains across rounds
