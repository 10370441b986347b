"""CMI: contrastive model inversion over a bank of the teacher's features."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from stars_jax.models.generators import Generator, ProjectionHead
from stars_jax.objective import bn_channels, random_resized_crop, select_layers, teacher_bn
from stars_jax.synthesizers.common import (
    GeneratorMethod,
    StepInputs,
    Synthesizer,
    SynthSetup,
    Work,
    generator_adam,
    kept_batch,
    random_labels,
)


class CMIState(NamedTuple):
    head: Any  # the projection head (persistent, as in the reference)
    head_opt: Any
    feats: jax.Array  # [N, 2 D] (local, global) teacher features of kept batches, a ring
    count: jax.Array  # int32: valid rows
    cursor: jax.Array  # int32: next row written


# A round's work: trainable {"g": a freshly reset generator, "z": latents}; extra: the
# projection head and its Adam state (persistent, trained in every step); the best batch
# keeps its (local, global) features [B, 2 D] for the bank.


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


def make_cmi(s: SynthSetup) -> CMI:
    """CMI (contrastive model inversion): every round a freshly initialised generator and its
    latents take ``synth.cmi.steps`` Adam steps on L_syn plus ``synth.cmi.a_cr`` times a contrastive
    term that pushes each image's teacher features (spatial means of the BN inputs of
    ``synth.cmi.layers``) away from those of the other images and of up to
    ``synth.cmi.negatives`` earlier kept images (a bank of ``synth.cmi.bank_size``), through a
    persistent projection head; positives are a global (crop + flip) and a local
    (random-resized-crop, area 25-100 %) view of the same image."""
    cfg = s.cfg
    names, channels = bn_channels(s.teacher, s.image_shape)
    idx = tuple(select_layers(names, cfg.layers))
    dim = sum(channels[i] for i in idx)
    gen = Generator(tuple(s.image_shape), cfg.generator_width)
    return CMI(
        s,
        method=GeneratorMethod(s, gen, generator_adam(cfg.lr), lambda tr, labels: tr["z"]),
        head=ProjectionHead(hidden=dim, out=cfg.head_dim),
        idx=idx,
        dim=dim,
        n_neg=min(cfg.negatives, cfg.bank_size),
        head_opt=optax.adam(cfg.lr),
    )


@dataclasses.dataclass(frozen=True)
class CMI(Synthesizer):
    s: SynthSetup
    method: GeneratorMethod  # the generator's steps (no BN EMA)
    head: Any  # the projection head module
    idx: tuple  # the BN layers whose inputs give the features
    dim: int  # their channels, summed
    n_neg: int  # bank negatives per step
    head_opt: optax.GradientTransformation

    def init(self, key, teacher_vars):
        cfg = self.s.cfg
        hp = self.head.init(key, jnp.zeros((2, self.dim)))["params"]
        feats = jnp.zeros((cfg.bank_size, 2 * self.dim), jnp.float32)
        count, cursor = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)  # distinct: donated
        return CMIState(hp, self.head_opt.init(hp), feats, count, cursor)

    def begin(self, state, key, round_):
        s, cfg = self.s, self.s.cfg
        k_g, k_r, k_z, k_y = jax.random.split(key, 4)
        v = self.method.gen.init(k_g, jnp.zeros((2, cfg.latent_dim)))
        g = {
            "g": _cmi_reset(v["params"], k_r),
            "z": s.batch(jax.random.normal(k_z, (cfg.batch_size, cfg.latent_dim))),
        }
        labels = s.batch(random_labels(k_y, cfg.batch_size, s.num_classes))
        keep = s.zeros(2 * self.dim)
        extra = (state.head, state.head_opt)
        return state, self.method.begin(g, v["batch_stats"], labels, keep=keep, extra=extra)

    def negatives(self, state, key):
        n = state.feats.shape[0]
        order = jnp.where(jnp.arange(n) < state.count, jax.random.uniform(key, (n,)), 2.0)
        _, pick = jax.lax.top_k(-order, self.n_neg)  # n_neg distinct rows, filled ones first
        neg = state.feats[pick]
        return neg[:, : self.dim], neg[:, self.dim :], jnp.arange(self.n_neg) < state.count

    def contrastive_term(self, negatives, teacher_vars, key, hp, x01, aux):
        """``a_cr`` times the contrastive term (a ``common.Term`` once the first three are
        bound), and the batch's (local, global) features."""
        s, cfg = self.s, self.s.cfg
        glob = instance_means(aux.bn.inputs, self.idx)
        local_view = random_resized_crop(key, x01, flip=cfg.flip)
        _, inter = s.teacher.apply(teacher_vars, s.normalize(local_view), mutable=["intermediates"])
        local_bn = teacher_bn(inter["intermediates"], teacher_vars["batch_stats"])
        local = instance_means(local_bn.inputs, self.idx)
        project = lambda f: self.head.apply({"params": hp}, f)
        cr = contrastive_loss(project, local, glob, *negatives, cfg.cr_temperature)
        feats = jax.lax.stop_gradient(jnp.concatenate([local, glob], axis=-1))
        return cfg.a_cr * cr, {"synth/cr": cr}, feats

    def step(self, state, work: Work, inputs: StepInputs):
        k_g, k_l, k_n = jax.random.split(inputs.key, 3)
        term = functools.partial(
            self.contrastive_term, self.negatives(state, k_n), inputs.teacher_vars, k_l
        )
        head, head_opt = work.extra
        new, (_, g_head), metrics = self.method.step(
            work, inputs, term=term, term_params=head, key=k_g
        )
        up_h, head_opt = self.head_opt.update(g_head, head_opt, head)
        return new._replace(extra=(optax.apply_updates(head, up_h), head_opt)), metrics

    def end(self, state, work: Work):
        feats = work.best.keep
        n, b = state.feats.shape[0], feats.shape[0]
        rows = (state.cursor + jnp.arange(b)) % n
        head, head_opt = work.extra
        new_state = CMIState(
            head,
            head_opt,
            state.feats.at[rows].set(feats),
            jnp.minimum(state.count + b, n),
            (state.cursor + b) % n,
        )
        return new_state, *kept_batch(work)
