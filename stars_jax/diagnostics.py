"""Health of synthetic data, measured the same way on synthetic and on real batches.

- class validity: the teacher's top-1 on a batch against the labels it was synthesised for;
- class coverage: entropy (nats) of the histogram of the teacher's predicted classes
  (``ln K`` when every class is predicted equally often, 0 when one class takes all);
- intra-batch diversity: mean pairwise cosine distance ``1 - cos(f_i, f_j)`` over ``i != j`` of
  the teacher's penultimate features (0 when every image looks alike to the teacher).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stars_jax.apply import normalize


def feature_diversity(feats) -> jax.Array:
    """Mean pairwise cosine distance of ``feats [B, D]`` over the B (B - 1) ordered pairs."""
    f = feats.astype(jnp.float32)
    f = f * jax.lax.rsqrt(jnp.maximum(jnp.sum(f * f, -1, keepdims=True), 1e-24))
    b = f.shape[0]
    cos = jnp.matmul(f, f.T, precision=jax.lax.Precision.HIGHEST)
    return (b * b - jnp.sum(cos) - (b - jnp.trace(cos))) / (b * (b - 1))


def class_entropy(preds, num_classes: int, valid=None) -> jax.Array:
    """Entropy (nats) of the histogram of int ``preds [N]``; ``valid [N]`` masks entries."""
    w = jnp.ones(preds.shape, jnp.float32) if valid is None else valid.astype(jnp.float32)
    counts = jnp.zeros((num_classes,), jnp.float32).at[preds].add(w)
    p = counts / jnp.maximum(jnp.sum(counts), 1.0)
    return jnp.sum(jnp.where(p > 0, -p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))


def batch_health(teacher, teacher_vars, images_u8, labels, mean, std, num_classes):
    """``(teacher preds [B], {teacher_acc, class_entropy, diversity})`` of a uint8 batch."""
    logits, feats = teacher.apply(teacher_vars, normalize(images_u8, mean, std))
    preds = jnp.argmax(logits, -1).astype(jnp.int32)
    return preds, {
        "teacher_acc": jnp.mean((preds == labels).astype(jnp.float32)),
        "class_entropy": class_entropy(preds, num_classes),
        "diversity": feature_diversity(feats),
    }


def real_batch_health(teacher, teacher_vars, ds, batch_size, mean, std, num_classes, seed=0):
    """The same figures on ``batch_size`` real images drawn at random (fixed ``seed``) from
    ``ds``: the reference a synthetic batch of that size is compared with."""
    n = min(batch_size, len(ds.images))
    idx = np.random.default_rng(seed).choice(len(ds.images), n, replace=False)
    _, m = jax.jit(lambda v, x, y: batch_health(teacher, v, x, y, mean, std, num_classes))(
        teacher_vars, ds.images[idx], ds.labels[idx]
    )
    return {k: float(v) for k, v in m.items()}
