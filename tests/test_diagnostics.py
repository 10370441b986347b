"""Synthetic-data health: diversity and class entropy closed forms, the labelled grid."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from stars_jax.data import Dataset
from stars_jax.diagnostics import (
    batch_health,
    class_entropy,
    feature_diversity,
    real_batch_health,
)
from stars_jax.metrics import save_image_grid
from stars_jax.models.teachers import make_teacher


def test_feature_diversity_closed_forms():
    same = jnp.tile(jnp.array([[1.0, 2.0, 3.0]]), (5, 1))
    np.testing.assert_allclose(feature_diversity(same), 0.0, atol=1e-6)
    np.testing.assert_allclose(feature_diversity(jnp.eye(4)), 1.0, atol=1e-6)  # orthogonal
    np.testing.assert_allclose(feature_diversity(jnp.array([[1.0, 0], [-2.0, 0]])), 2.0)
    f = np.random.default_rng(0).normal(size=(7, 5))
    u = f / np.linalg.norm(f, axis=1, keepdims=True)
    brute = np.mean([1 - u[i] @ u[j] for i in range(7) for j in range(7) if i != j])
    np.testing.assert_allclose(feature_diversity(jnp.asarray(f)), brute, rtol=1e-5)


def test_class_entropy_closed_forms():
    np.testing.assert_allclose(class_entropy(jnp.arange(20) % 10, 10), np.log(10), rtol=1e-6)
    np.testing.assert_allclose(class_entropy(jnp.full(9, 3), 10), 0.0, atol=1e-7)
    np.testing.assert_allclose(class_entropy(jnp.array([0, 0, 1, 1]), 5), np.log(2), rtol=1e-6)
    # Masked entries do not count: only the two valid ones (classes 0 and 1) remain.
    valid = jnp.array([True, True, False, False])
    np.testing.assert_allclose(
        class_entropy(jnp.array([0, 1, 2, 2]), 3, valid), np.log(2), rtol=1e-6
    )
    assert float(class_entropy(jnp.array([1, 2]), 3, jnp.zeros(2, bool))) == 0.0


def test_batch_health_agrees_with_the_teacher():
    teacher = make_teacher("resnet_tiny", 3)
    tv = teacher.init(jax.random.key(0), jnp.zeros((2, 8, 8, 3)))
    images = np.random.default_rng(1).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    mean, std = (0.5,) * 3, (0.25,) * 3
    x = (images / 255.0 - 0.5) / 0.25
    logits, feats = teacher.apply(tv, jnp.asarray(x, jnp.float32))
    preds = np.argmax(logits, -1)
    labels = jnp.asarray(preds).at[0].set((preds[0] + 1) % 3)  # one wrong label of six
    got_preds, m = batch_health(teacher, tv, images, labels, mean, std, 3)
    np.testing.assert_array_equal(got_preds, preds)
    np.testing.assert_allclose(m["teacher_acc"], 5 / 6, rtol=1e-6)
    np.testing.assert_allclose(m["diversity"], feature_diversity(feats), rtol=1e-5)
    np.testing.assert_allclose(m["class_entropy"], class_entropy(jnp.asarray(preds), 3))
    ds = Dataset(images, np.asarray(labels), ("a", "b", "c"))
    real = real_batch_health(teacher, tv, ds, 4, mean, std, 3, seed=0)
    assert set(real) == {"teacher_acc", "class_entropy", "diversity"}
    assert real == real_batch_health(teacher, tv, ds, 4, mean, std, 3, seed=0)  # fixed draw


@pytest.mark.parametrize("channels", [1, 3])
def test_labelled_grid_is_sorted_and_captioned(tmp_path, channels):
    h = 8
    labels = np.array([2, 0, 1, 0, 2, 1])
    # Every image's pixels carry its label, so the order in the PNG can be read back.
    images = np.stack([np.full((h, h, channels), 40 * (y + 1), np.uint8) for y in labels])
    preds = labels.copy()
    preds[0] = 1  # one disagreement: a red caption
    save_image_grid(tmp_path / "g.png", images, labels, preds, ncol=3)
    grid = np.asarray(Image.open(tmp_path / "g.png").convert("RGB"))
    scale, cap = 64 // h, 12
    tile_h, tile_w = h * scale + cap + 2, h * scale + 2
    assert grid.shape == (2 * tile_h, 3 * tile_w, 3)
    firsts = [grid[r * tile_h + 1 + h, q * tile_w + 1 + h, 0] for r in range(2) for q in range(3)]
    np.testing.assert_array_equal(firsts, 40 * (np.sort(labels) + 1))  # sorted by label
    caption = lambda r: grid[r * tile_h + h * scale + 1 : (r + 1) * tile_h]
    red = lambda c: ((c[..., 0] > 200) & (c[..., 1] < 120)).any()
    green = lambda c: ((c[..., 1] > 200) & (c[..., 0] < 150)).any()
    # Row 1 holds labels 0, 0, 1 (all agree); row 2 labels 1, 2, 2 with the one disagreement.
    assert green(caption(0)) and not red(caption(0)) and red(caption(1))
    # Without labels: the plain, unscaled grid.
    save_image_grid(tmp_path / "plain.png", images, ncol=3)
    assert np.asarray(Image.open(tmp_path / "plain.png")).shape[:2] == (2 * (h + 2), 3 * (h + 2))
