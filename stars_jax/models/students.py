"""Spiking (LIF) students with direct encoding.

Shapes: a student maps ``x [B, H, W, C]`` (normalised images, the same image at every step)
to ``(logits_t [T, B, K], features_t [T, B, F])``; the prediction is ``logits_t.mean(0)``.
Inside, convolutions and BatchNorm run on the time-folded batch ``[T * B, ...]`` (time-major
blocks of B) and only the LIF state runs over time. The stem convolution and its BN see the
same image at every step, so they run once on ``[B, ...]`` and are then tiled over T (in
training mode BN's batch statistics of T identical copies equal those of one copy).

Each LIF layer sows its mean firing rate into the ``firing_rates`` collection (see
:func:`firing_rates`) and its per-channel rate into ``channel_rates`` (``stars_jax.student_tar``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from stars_jax.lif_pallas import lif_spikes_pallas
from stars_jax.models.layers import (
    basic_block,
    batch_norm,
    conv,
    global_avg_pool,
    max_pool2,
    wide_basic,
)
from stars_jax.models.teachers import VGG11_GROUPS
from stars_jax.neurons import LIFParams, lif

RATE = "rate"
CHANNEL_RATES = "channel_rates"  # Collection of each LIF layer's per-channel rate [C].


class LIF(nn.Module):
    """LIF neurons over a time-folded input ``[T * B, ...]`` -> spikes of the same shape."""

    time_steps: int
    params: LIFParams = LIFParams()

    @nn.compact
    def __call__(self, x):
        # The membrane runs in float32 even when convolutions run in bfloat16: an 8-bit
        # mantissa would blur threshold crossings. Spikes (0/1) are exact in any dtype.
        x_seq = x.reshape((self.time_steps, -1) + x.shape[1:])
        if self.params.kernel == "pallas":  # Casts inside the kernel; the membrane stays in it.
            spikes = lif_spikes_pallas(x_seq, self.params, membrane_dtype=jnp.float32)
        else:
            spikes, _ = lif(x_seq.astype(jnp.float32), self.params)
            spikes = spikes.astype(x.dtype)
        self.sow("firing_rates", RATE, jnp.mean(spikes.astype(jnp.float32)))
        # Per channel, for the student-side TAR; a no-op unless the caller collects it.
        over = tuple(range(spikes.ndim - 1))
        self.sow(CHANNEL_RATES, RATE, jnp.mean(spikes.astype(jnp.float32), axis=over))
        return spikes.reshape(x.shape)


def _stem(x, width, time_steps, train, dtype):
    """conv-BN on [B, ...] once, tiled to [T * B, ...] (direct encoding)."""
    x = conv(width, 3, dtype=dtype, name="conv1")(x.astype(dtype))
    x = batch_norm(train, dtype, "bn1")(x)
    return jnp.tile(x, (time_steps,) + (1,) * (x.ndim - 1))


def _unfold(y, time_steps):
    return y.reshape((time_steps, -1) + y.shape[1:])


class _SpikingBlock(nn.Module):
    """The fields of a spiking residual block, and its LIF activation."""

    features: int
    stride: int
    time_steps: int
    lif_params: LIFParams
    dtype: Any = jnp.float32

    @nn.nowrap  # creates a submodule of the caller's compact __call__
    def lif_layer(self, name: str) -> LIF:
        return LIF(self.time_steps, self.lif_params, name=name)


class SpikingBasicBlock(_SpikingBlock):
    """SpikingJelly's spiking BasicBlock: sn2(bn2(conv2(sn1(bn1(conv1 x)))) + shortcut(x))."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return basic_block(x, self.features, self.stride, train, self.dtype, self.lif_layer)


class SpikingResNet(nn.Module):
    """Spiking CIFAR ResNet; ``hidden`` adds ResNet-19's FC-LIF layer before the classifier."""

    stage_sizes: Sequence[int]
    widths: Sequence[int]
    num_classes: int = 10
    time_steps: int = 4
    lif_params: LIFParams = LIFParams()
    hidden: int | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        t, p = self.time_steps, self.lif_params
        x = _stem(x, self.widths[0], t, train, self.dtype)
        x = LIF(t, p, name="sn1")(x)
        for i, (n, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                block = SpikingBasicBlock(width, stride, t, p, self.dtype, name=f"layer{i + 1}_{j}")
                x = block(x, train)
        feats = global_avg_pool(x)
        if self.hidden:
            feats = nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(feats)
            feats = LIF(t, p, name="fc1_sn")(feats).astype(jnp.float32)
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, name="fc")(feats)
        return _unfold(logits, t), _unfold(feats, t)


class SpikingVGG(nn.Module):
    """Spiking VGG-BN: conv-BN-LIF layers, max-pool after the first four groups."""

    groups: Sequence[Sequence[int]] = VGG11_GROUPS
    num_classes: int = 10
    time_steps: int = 4
    lif_params: LIFParams = LIFParams()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        t, p = self.time_steps, self.lif_params
        x = _stem(x, self.groups[0][0], t, train, self.dtype)
        x = LIF(t, p, name="sn1")(x)
        for g, widths in enumerate(self.groups):
            for j, width in enumerate(widths):
                if g == 0 and j == 0:
                    continue  # The stem is the first conv of group 0.
                x = conv(width, 3, dtype=self.dtype, name=f"block{g}_conv{j}")(x)
                x = batch_norm(train, self.dtype, f"block{g}_bn{j}")(x)
                x = LIF(t, p, name=f"block{g}_sn{j}")(x)
            if g < len(self.groups) - 1 and x.shape[1] > 1:
                x = max_pool2(x)
        feats = global_avg_pool(x)
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, name="fc")(feats)
        return _unfold(logits, t), _unfold(feats, t)


class SpikingWideBasic(_SpikingBlock):
    """Pre-activation WRN block with LIF in place of ReLU (membrane-shortcut style)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        identity = x.shape[-1] == self.features and self.stride == 1
        return wide_basic(
            x, self.features, self.stride, train, self.dtype, self.lif_layer, identity=identity
        )


class SpikingWideResNet(nn.Module):
    """Spiking WRN-depth-widen; residual streams carry real values, every conv sees spikes."""

    depth: int = 16
    widen: int = 2
    num_classes: int = 10
    time_steps: int = 4
    lif_params: LIFParams = LIFParams()
    base: int = 16
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        t, p = self.time_steps, self.lif_params
        n = (self.depth - 4) // 6
        x = _stem(x, self.base, t, train, self.dtype)
        for i, m in enumerate((1, 2, 4)):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                width = self.base * self.widen * m
                block = SpikingWideBasic(width, stride, t, p, self.dtype, name=f"block{i + 1}_{j}")
                x = block(x, train)
        x = LIF(t, p, name="sn_out")(batch_norm(train, self.dtype, "bn_out")(x))
        feats = global_avg_pool(x)
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, name="fc")(feats)
        return _unfold(logits, t), _unfold(feats, t)


STUDENTS = {
    "resnet18": functools.partial(
        SpikingResNet, stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512)
    ),
    "resnet19": functools.partial(
        SpikingResNet, stage_sizes=(3, 3, 2), widths=(128, 256, 512), hidden=256
    ),
    "vgg11": functools.partial(SpikingVGG, groups=VGG11_GROUPS),
    "wrn16_2": functools.partial(SpikingWideResNet, depth=16, widen=2),
    # Tiny variants for tests and CPU demos.
    "resnet_tiny": functools.partial(SpikingResNet, stage_sizes=(1, 1), widths=(8, 16)),
    "resnet_small": functools.partial(SpikingResNet, stage_sizes=(1, 1), widths=(16, 32)),
    "vgg_tiny": functools.partial(SpikingVGG, groups=((8,), (16,), (16,))),
    "wrn_tiny": functools.partial(SpikingWideResNet, depth=10, widen=1, base=8),
}


def make_student(
    arch: str,
    num_classes: int,
    time_steps: int = 4,
    lif: LIFParams = LIFParams(),
    dtype: Any = jnp.float32,
) -> nn.Module:
    """Builds the spiking student registered under ``arch`` with T = ``time_steps``."""
    if arch not in STUDENTS:
        raise ValueError(f"Unknown student arch {arch!r}; valid: {sorted(STUDENTS)}.")
    if time_steps < 1:
        raise ValueError(f"time_steps must be >= 1, got {time_steps}.")
    return STUDENTS[arch](
        num_classes=num_classes, time_steps=time_steps, lif_params=lif, dtype=dtype
    )


def firing_rates(collection) -> dict[str, jax.Array]:
    """Flattens a ``firing_rates`` collection to ``{"layer1_0/sn1": rate}`` (mean spikes)."""
    flat = traverse_util.flatten_dict(collection, sep="/")
    return {k.removesuffix(f"/{RATE}"): v[0] for k, v in flat.items()}
