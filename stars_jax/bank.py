"""Device-resident memory bank of synthetic images and on-device augmentation.

Images are stored as uint8 pixels in [0, 255] (NHWC), as the reference DFKD code bases store
their synthetic batches as PNG files: 4x smaller than float32, so a bank of 50k CIFAR-sized
images needs 150 MiB of device memory. The bank is a ring buffer: once full, the oldest
batches are overwritten.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Bank(NamedTuple):
    images: jax.Array  # uint8 [N, H, W, C]
    labels: jax.Array  # int32 [N], the labels the images were synthesised for
    preds: jax.Array  # int32 [N], the teacher's top-1 class on each image (its health)
    count: jax.Array  # int32 [], number of valid entries (<= N)
    cursor: jax.Array  # int32 [], next write position


def init_bank(capacity: int, image_shape: tuple[int, int, int]) -> Bank:
    if capacity < 1:
        raise ValueError(f"Memory bank capacity must be >= 1, got {capacity}.")
    return Bank(
        images=jnp.zeros((capacity, *image_shape), jnp.uint8),
        labels=jnp.zeros((capacity,), jnp.int32),
        preds=jnp.zeros((capacity,), jnp.int32),
        count=jnp.zeros((), jnp.int32),
        cursor=jnp.zeros((), jnp.int32),
    )


def to_uint8(x01: jax.Array) -> jax.Array:
    """[0, 1] floats -> uint8 pixels (round to nearest, clipped)."""
    return jnp.clip(jnp.round(x01.astype(jnp.float32) * 255.0), 0, 255).astype(jnp.uint8)


def bank_add(bank: Bank, images_u8: jax.Array, labels: jax.Array, preds=None) -> Bank:
    """Writes a batch ``[B, H, W, C]`` at the cursor, wrapping around the ring; ``preds``
    (the teacher's classes) default to ``labels``."""
    preds = labels if preds is None else preds
    capacity, b = bank.images.shape[0], images_u8.shape[0]
    if b > capacity:
        raise ValueError(f"Batch of {b} does not fit a bank of {capacity}; raise bank size.")
    idx = (bank.cursor + jnp.arange(b)) % capacity
    return Bank(
        images=bank.images.at[idx].set(images_u8),
        labels=bank.labels.at[idx].set(labels.astype(jnp.int32)),
        preds=bank.preds.at[idx].set(preds.astype(jnp.int32)),
        count=jnp.minimum(bank.count + b, capacity),
        cursor=(bank.cursor + b) % capacity,
    )


def bank_sample(bank: Bank, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Draws ``batch_size`` entries uniformly (with replacement) from the filled part."""
    idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(bank.count, 1))
    return bank.images[idx], bank.labels[idx]


def random_crop_flip(
    key: jax.Array, images: jax.Array, pad: int = 4, flip: bool = True
) -> jax.Array:
    """Per-sample random crop (zero padding ``pad``) and horizontal flip, ``[B, H, W, C]``."""
    b, h, w, _ = images.shape
    k_crop, k_flip = jax.random.split(key)
    offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1)
    flips = jax.random.bernoulli(k_flip, 0.5 if flip else 0.0, (b,))
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(img, off, flip):
        crop = jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))
        return jnp.where(flip, crop[:, ::-1], crop)

    return jax.vmap(one)(padded, offsets, flips)
