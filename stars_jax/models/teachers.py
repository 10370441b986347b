"""ANN teachers: CIFAR ResNet, WideResNet and VGG-BN, numerically identical to the public
data-free-KD PyTorch definitions (see ../shared/teachers/README.md).

Module names mirror the PyTorch state-dict keys with numeric indices joined by ``_``
(``layer1.0.shortcut.1`` -> ``layer1_0/shortcut_1``; ``block1.layer.0.bn1`` ->
``block1/layer_0/bn1``), so converting a checkpoint is a tree mapping.

Every model maps ``x [B, H, W, C]`` (normalised images) to ``(logits [B, K], features [B, F])``
where ``features`` are the penultimate (pooled) activations; every BatchNorm sows its input,
and the ResNets' ReLUs sow theirs under the names of the students' LIF layers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from stars_jax.models.graph import GRAPH_ARCH
from stars_jax.models.layers import (
    basic_block,
    batch_norm,
    conv,
    global_avg_pool,
    max_pool2,
    relu,
    wide_basic,
)


class _Block(nn.Module):
    """The fields of a residual block."""

    features: int
    stride: int = 1
    dtype: Any = jnp.float32


class BasicBlock(_Block):
    """Post-activation ResNet block: relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x))."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return basic_block(x, self.features, self.stride, train, self.dtype, relu)


class ResNet(nn.Module):
    """CIFAR ResNet (3x3 stem, no max-pool); ``stage_sizes`` blocks per stage."""

    stage_sizes: Sequence[int]
    num_classes: int = 10
    widths: Sequence[int] = (64, 128, 256, 512)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = conv(self.widths[0], 3, dtype=self.dtype, name="conv1")(x.astype(self.dtype))
        x = relu("sn1")(batch_norm(train, self.dtype, "bn1")(x))
        for i, (n, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                x = BasicBlock(width, stride, self.dtype, name=f"layer{i + 1}_{j}")(x, train)
        feats = global_avg_pool(x)
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, name="linear")(feats)
        return logits, feats


class WideBasic(_Block):
    """Pre-activation WRN block with the public code's shortcut on relu(bn1(x))."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        # As the public code, identity whenever in == out (a stride alone does not project).
        identity = x.shape[-1] == self.features
        return wide_basic(x, self.features, self.stride, train, self.dtype, relu, identity=identity)


class WideGroup(nn.Module):
    """PyTorch ``NetworkBlock``: a sequence ``layer`` of ``num_blocks`` WideBasic blocks."""

    num_blocks: int
    features: int
    stride: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i in range(self.num_blocks):
            stride = self.stride if i == 0 else 1
            x = WideBasic(self.features, stride, self.dtype, name=f"layer_{i}")(x, train)
        return x


class WideResNet(nn.Module):
    """WRN-depth-widen for CIFAR: three groups of (depth - 4) / 6 pre-activation blocks."""

    depth: int = 40
    widen: int = 2
    num_classes: int = 10
    base: int = 16
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        if (self.depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {self.depth}.")
        n = (self.depth - 4) // 6
        widths = [self.base * self.widen * m for m in (1, 2, 4)]
        x = conv(self.base, 3, dtype=self.dtype, name="conv1")(x.astype(self.dtype))
        for i, width in enumerate(widths):
            x = WideGroup(n, width, 1 if i == 0 else 2, self.dtype, name=f"block{i + 1}")(x, train)
        x = nn.relu(batch_norm(train, self.dtype, "bn1")(x))
        feats = global_avg_pool(x)
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, name="fc")(feats)
        return logits, feats


VGG11_GROUPS = ((64,), (128,), (256, 256), (512, 512), (512, 512))


class VGG(nn.Module):
    """VGG-BN of the public DFKD code: groups of conv(bias)-BN[-ReLU-conv-BN], ReLU, pooling.

    Group ``g`` holds PyTorch modules ``blockG.0`` (conv), ``.1`` (BN) and, for a second conv,
    ``.3`` and ``.4`` (``.2`` is the ReLU). Max-pool after the first three groups, after the
    fourth only for inputs of 64 pixels or more, then global average pooling.
    """

    groups: Sequence[Sequence[int]] = VGG11_GROUPS
    num_classes: int = 10
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        input_size = x.shape[1]
        x = x.astype(self.dtype)
        for g, widths in enumerate(self.groups):
            for j, width in enumerate(widths):
                if j:
                    x = nn.relu(x)
                x = conv(width, 3, use_bias=True, dtype=self.dtype, name=f"block{g}_{3 * j}")(x)
                x = batch_norm(train, self.dtype, f"block{g}_{3 * j + 1}")(x)
            x = nn.relu(x)
            if g < 3 or (g == 3 and input_size >= 64):
                x = max_pool2(x)
        feats = global_avg_pool(x)
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, name="classifier")(feats)
        return logits, feats


_TINY_VGG_GROUPS = ((8,), (16,), (16, 16), (32,), (32,))

TEACHERS = {
    "resnet18": functools.partial(ResNet, stage_sizes=(2, 2, 2, 2)),
    "resnet34": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3)),
    "wrn16_2": functools.partial(WideResNet, depth=16, widen=2),
    "wrn40_2": functools.partial(WideResNet, depth=40, widen=2),
    "vgg11": functools.partial(VGG, groups=VGG11_GROUPS),
    # He et al.'s CIFAR ResNet-14 (6n + 2, n = 2; 16/32/64 wide, 0.18 M parameters, projection
    # shortcuts): the CPU CIFAR-10 teacher (stars_jax/assets/teachers/cifar10_resnet14).
    "resnet14": functools.partial(ResNet, stage_sizes=(2, 2, 2), widths=(16, 32, 64)),
    # Tiny variants for tests and CPU demos; same code paths (shortcuts, pooling) at small width.
    "resnet_tiny": functools.partial(ResNet, stage_sizes=(1, 1), widths=(8, 16)),
    "resnet_small": functools.partial(ResNet, stage_sizes=(1, 1), widths=(16, 32)),
    "wrn_tiny": functools.partial(WideResNet, depth=10, widen=1, base=8),
    "vgg_tiny": functools.partial(VGG, groups=_TINY_VGG_GROUPS),
}


def _graph_teacher(num_classes: int, dtype: Any = jnp.float32) -> nn.Module:
    raise ValueError(
        f"teacher arch {GRAPH_ARCH!r} is rebuilt from its model directory's graph spec, not "
        "trained here: set teacher.dir to a directory written by `python -m stars_jax.convert "
        "--arch torchvision/NAME` or `--torch_module PKG.MODULE:CALLABLE` (docs/own_teacher.md)."
    )


# A converted PyTorch CNN (stars_jax.models.graph): valid as teacher.arch with a teacher.dir.
TEACHERS[GRAPH_ARCH] = _graph_teacher


def make_teacher(arch: str, num_classes: int, dtype: Any = jnp.float32) -> nn.Module:
    """Builds the ANN teacher registered under ``arch``."""
    if arch not in TEACHERS:
        raise ValueError(f"Unknown teacher arch {arch!r}; valid: {sorted(TEACHERS)}.")
    return TEACHERS[arch](num_classes=num_classes, dtype=dtype)
