"""Memory bank (ring buffer) and on-device augmentation."""

import jax
import jax.numpy as jnp
import numpy as np

from stars_jax.apply import normalize
from stars_jax.bank import bank_add, bank_sample, init_bank, random_crop_flip, to_uint8


def test_ring_buffer_wraps_and_counts():
    bank = init_bank(5, (2, 2, 1))
    for i in range(3):  # 3 batches of 2 into 5 slots: the last write wraps to slot 0.
        imgs = jnp.full((2, 2, 2, 1), 10 * (i + 1), jnp.uint8)
        bank = bank_add(bank, imgs, jnp.array([i, i]))
    assert int(bank.count) == 5 and int(bank.cursor) == 1
    np.testing.assert_array_equal(bank.labels, [2, 0, 1, 1, 2])
    np.testing.assert_array_equal(bank.images[:, 0, 0, 0], [30, 10, 20, 20, 30])


def test_sample_draws_only_filled_entries():
    bank = init_bank(100, (1, 1, 1))
    bank = bank_add(bank, jnp.full((3, 1, 1, 1), 7, jnp.uint8), jnp.array([1, 2, 3]))
    imgs, labels = bank_sample(bank, jax.random.key(0), 500)
    assert set(np.asarray(labels).tolist()) == {1, 2, 3}
    assert np.all(np.asarray(imgs) == 7)


def test_crop_and_flip():
    x = jnp.arange(2 * 6 * 6 * 1, dtype=jnp.uint8).reshape(2, 6, 6, 1)
    np.testing.assert_array_equal(random_crop_flip(jax.random.key(0), x, 0, flip=False), x)
    out = np.asarray(random_crop_flip(jax.random.key(1), x, 2, flip=False))
    padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)))
    for b in range(2):  # Every output is some 6x6 window of the zero-padded image.
        windows = [padded[b, i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
        assert any(np.array_equal(out[b], w) for w in windows)
    flips = [random_crop_flip(jax.random.key(k), x, 0)[0] for k in range(16)]
    assert any(np.array_equal(f, x[0, :, ::-1]) for f in flips)
    assert any(np.array_equal(f, x[0]) for f in flips)


def test_uint8_round_trip_and_normalize():
    x01 = jnp.array([0.0, 0.5, 1.0, 1.2, -0.1])
    np.testing.assert_array_equal(to_uint8(x01), [0, 128, 255, 255, 0])
    u8 = jnp.array([[[[0, 255]]]], jnp.uint8)
    np.testing.assert_allclose(normalize(u8, (0.5, 0.5), (0.25, 0.5)), [[[[-2.0, 1.0]]]])
