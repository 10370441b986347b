"""CMI: contrastive model inversion over a bank of the teacher's features."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from stars_jax.bank import to_uint8
from stars_jax.models.generators import Generator, ProjectionHead
from stars_jax.objective import bn_channels, random_resized_crop, select_layers, teacher_bn
from stars_jax.synthesizers.common import (
    Best,
    Synthesizer,
    SynthSetup,
    generator_adam,
    keep_best,
    no_best,
    random_labels,
)


class CMIState(NamedTuple):
    head: Any  # the projection head (persistent, as in the reference)
    head_opt: Any
    feats: jax.Array  # [N, 2 D] (local, global) teacher features of kept batches, a ring
    count: jax.Array  # int32: valid rows
    cursor: jax.Array  # int32: next row written


class CMIWork(NamedTuple):
    gen: Any  # {"g": generator params, "z": latents}
    batch_stats: Any
    opt: Any
    labels: jax.Array
    head: Any
    head_opt: Any
    best: Best
    best_feats: jax.Array  # [B, 2 D] features of the best batch


def _cmi_reset(params, key):
    """CMI's ``reset_model``: weights N(0, 0.02), biases 0, BN scales N(1, 0.02)."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(key, len(leaves))
    out = []
    for (path, leaf), k in zip(leaves, keys, strict=True):
        name = path[-1].key
        noise = 0.02 * jax.random.normal(k, leaf.shape, leaf.dtype)
        out.append({"kernel": noise, "scale": 1.0 + noise}.get(name, jnp.zeros_like(leaf)))
    return jax.tree_util.tree_unflatten(tree, out)


def instance_means(bn_inputs, idx) -> jax.Array:
    """CMI's features: the spatial means of the selected BN inputs, concatenated ``[B, D]``."""
    return jnp.concatenate(
        [jnp.mean(bn_inputs[i].astype(jnp.float32), axis=(1, 2)) for i in idx], axis=-1
    )


def contrastive_loss(project, local, glob, neg_local, neg_glob, valid, temperature):
    """CMI's loss: each local view's projection must pick its own global view's (detached)
    among the batch's and the bank negatives'. ``local, glob [B, D]``, ``neg_* [M, D]``,
    ``valid [M]`` (bank rows that hold a batch). Mean over the batch plus, once the bank holds
    any, mean over the bank rows."""
    b = local.shape[0]
    q = project(jnp.concatenate([local, neg_local]))
    k = jax.lax.stop_gradient(project(jnp.concatenate([glob, neg_glob])))
    cols = jnp.concatenate([jnp.ones((b,), bool), valid])
    logits = jnp.where(cols[None, :], q @ k.T / temperature, -jnp.inf)
    ce = jax.nn.logsumexp(logits, axis=-1) - jnp.diagonal(logits)
    n_bank = jnp.sum(valid)
    bank_term = jnp.sum(jnp.where(valid, ce[b:], 0.0)) / jnp.maximum(n_bank, 1)
    return jnp.mean(ce[:b]) + jnp.where(n_bank > 0, bank_term, 0.0)


def make_cmi(s: SynthSetup) -> Synthesizer:
    """CMI (contrastive model inversion): every round a freshly initialised generator and its
    latents take ``synth.steps`` Adam steps on L_syn plus ``synth.a_cr`` times a contrastive
    term that pushes each image's teacher features (spatial means of the BN inputs of
    ``synth.cmi_layers``) away from those of the other images and of up to
    ``synth.cmi_negatives`` earlier kept images (a bank of ``synth.cmi_bank_size``), through a
    persistent projection head; positives are a global (crop + flip) and a local
    (random-resized-crop, area 25-100 %) view of the same image."""
    cfg = s.cfg
    names, channels = bn_channels(s.teacher, s.image_shape)
    idx = tuple(select_layers(names, cfg.cmi_layers))
    dim = sum(channels[i] for i in idx)
    c = _CMI(
        s,
        gen=Generator(tuple(s.image_shape), cfg.generator_width),
        head=ProjectionHead(hidden=dim, out=cfg.cmi_head_dim),
        idx=idx,
        dim=dim,
        n_neg=min(cfg.cmi_negatives, cfg.cmi_bank_size),
        gen_opt=generator_adam(cfg.lr),
        head_opt=optax.adam(cfg.lr),
    )
    return Synthesizer(c.init, c.begin, c.step, c.end)


@dataclasses.dataclass(frozen=True)
class _CMI:
    s: SynthSetup
    gen: Any  # the generator module
    head: Any  # the projection head module
    idx: tuple  # the BN layers whose inputs give the features
    dim: int  # their channels, summed
    n_neg: int  # bank negatives per step
    gen_opt: optax.GradientTransformation
    head_opt: optax.GradientTransformation

    def init(self, key, teacher_vars):
        cfg = self.s.cfg
        hp = self.head.init(key, jnp.zeros((2, self.dim)))["params"]
        feats = jnp.zeros((cfg.cmi_bank_size, 2 * self.dim), jnp.float32)
        count, cursor = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)  # distinct: donated
        return CMIState(hp, self.head_opt.init(hp), feats, count, cursor)

    def begin(self, state, key, round_):
        s, cfg = self.s, self.s.cfg
        k_g, k_r, k_z, k_y = jax.random.split(key, 4)
        v = self.gen.init(k_g, jnp.zeros((2, cfg.latent_dim)))
        g = {
            "g": _cmi_reset(v["params"], k_r),
            "z": s.batch(jax.random.normal(k_z, (cfg.batch_size, cfg.latent_dim))),
        }
        x01 = s.batch(jnp.zeros((cfg.batch_size, *s.image_shape)))
        work = CMIWork(
            gen=g,
            batch_stats=v["batch_stats"],
            opt=self.gen_opt.init(g),
            labels=s.batch(random_labels(k_y, cfg.batch_size, s.num_classes)),
            head=state.head,
            head_opt=state.head_opt,
            best=no_best(x01),
            best_feats=s.batch(jnp.zeros((cfg.batch_size, 2 * self.dim))),
        )
        return state, work

    def negatives(self, state, key):
        n = state.feats.shape[0]
        order = jnp.where(jnp.arange(n) < state.count, jax.random.uniform(key, (n,)), 2.0)
        _, pick = jax.lax.top_k(-order, self.n_neg)  # n_neg distinct rows, filled ones first
        neg = state.feats[pick]
        return neg[:, : self.dim], neg[:, self.dim :], jnp.arange(self.n_neg) < state.count

    def loss(self, g, hp, work, negatives, teacher_vars, student_vars, keys, warmup, tar_ref):
        """L_syn + a_cr * the contrastive term; aux: metrics, generator BN stats, images and
        their (local, global) features."""
        s, cfg = self.s, self.s.cfg
        k_g, k_l = keys
        variables = {"params": g["g"], "batch_stats": work.batch_stats}
        x01, new_vars = self.gen.apply(variables, g["z"], mutable=["batch_stats"])
        total, aux = s.loss(
            x01, work.labels, teacher_vars, student_vars, k_g, warmup, tar_ref=tar_ref
        )
        glob = instance_means(aux.bn.inputs, self.idx)
        local_view = random_resized_crop(k_l, x01, flip=cfg.flip)
        _, inter = s.teacher.apply(teacher_vars, s.normalize(local_view), mutable=["intermediates"])
        local_bn = teacher_bn(inter["intermediates"], teacher_vars["batch_stats"])
        local = instance_means(local_bn.inputs, self.idx)
        project = lambda f: self.head.apply({"params": hp}, f)
        cr = contrastive_loss(project, local, glob, *negatives, cfg.cr_temperature)
        feats = jax.lax.stop_gradient(jnp.concatenate([local, glob], axis=-1))
        metrics = {**aux.metrics, "synth/cr": cr, "synth/loss": total + cfg.a_cr * cr}
        return total + cfg.a_cr * cr, (metrics, new_vars["batch_stats"], x01, feats)

    def step(self, state, work, teacher_vars, student_vars, key, warmup=False, tar_ref=None):
        k_g, k_l, k_n = jax.random.split(key, 3)
        negatives = self.negatives(state, k_n)
        grad_fn = jax.value_and_grad(self.loss, argnums=(0, 1), has_aux=True)
        args = (work, negatives, teacher_vars, student_vars, (k_g, k_l), warmup, tar_ref)
        (loss, (metrics, batch_stats, x01, feats)), (g_gen, g_head) = grad_fn(
            work.gen, work.head, *args
        )
        up_g, opt_state = self.gen_opt.update(g_gen, work.opt, work.gen)
        up_h, head_state = self.head_opt.update(g_head, work.head_opt, work.head)
        better = loss < work.best.loss
        new = CMIWork(
            gen=optax.apply_updates(work.gen, up_g),
            batch_stats=batch_stats,
            opt=opt_state,
            labels=work.labels,
            head=optax.apply_updates(work.head, up_h),
            head_opt=head_state,
            best=keep_best(work.best, loss, x01),
            best_feats=jnp.where(better, feats, work.best_feats),
        )
        return new, metrics

    def end(self, state, work):
        n, b = state.feats.shape[0], work.best_feats.shape[0]
        rows = (state.cursor + jnp.arange(b)) % n
        new_state = CMIState(
            work.head,
            work.head_opt,
            state.feats.at[rows].set(work.best_feats),
            jnp.minimum(state.count + b, n),
            (state.cursor + b) % n,
        )
        return new_state, to_uint8(work.best.x01), work.labels
