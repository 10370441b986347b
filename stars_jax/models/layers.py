"""Layers shared by the ANN teachers and the SNN students.

Convolutions use PyTorch's explicit symmetric padding (``SAME`` pads stride-2 convolutions
asymmetrically, which would break numerical parity with converted PyTorch weights).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

BN_INPUT = (
    "bn_input"  # Name under which every BatchNorm sows its input (collection "intermediates").
)
ACT_INPUT = "act_input"  # ... and every teacher ReLU its input (stars_jax.student_tar).


class BatchNorm(nn.BatchNorm):
    """BatchNorm that sows its *input* into the ``intermediates`` collection.

    BN-statistics matching and TAR need the pre-normalisation activations of every BN layer;
    sowing them here keeps the intermediates tree aligned with the ``batch_stats`` tree.
    Defaults are PyTorch's: momentum 0.1 (Flax's 0.9) and eps 1e-5.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, **kwargs):
        self.sow("intermediates", BN_INPUT, x)
        return super().__call__(x, use_running_average=use_running_average, **kwargs)


def conv(
    features: int,
    kernel: int,
    stride: int = 1,
    *,
    use_bias: bool = False,
    dtype: Any = jnp.float32,
    name: str | None = None,
) -> nn.Conv:
    """A PyTorch-style ``k x k`` convolution with padding ``k // 2`` on every side."""
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=use_bias,
        dtype=dtype,
        name=name,
    )


def batch_norm(train: bool, dtype: Any = jnp.float32, name: str | None = None) -> BatchNorm:
    return BatchNorm(use_running_average=not train, dtype=dtype, name=name)


def global_avg_pool(x):
    """[B, H, W, C] -> [B, C], averaged in float32."""
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


max_pool2 = functools.partial(nn.max_pool, window_shape=(2, 2), strides=(2, 2))
avg_pool2 = functools.partial(nn.avg_pool, window_shape=(2, 2), strides=(2, 2))


Activation = Callable[[str], Callable]
"""``act(name)`` -> the activation layer ``name`` of a residual block (``sn1``, ``sn2``): LIF
neurons in the students, ReLU (no parameters, name unused) in the teachers."""


class ReLU(nn.Module):
    """ReLU that sows its input into ``intermediates``: where the teacher's units fire, which
    the student-side TAR reads (``stars_jax.student_tar``). Named as the students' LIF layers
    (``sn1``, ``sn2``), so teacher and student activations pair by module path."""

    @nn.compact
    def __call__(self, x):
        self.sow("intermediates", ACT_INPUT, x)
        return nn.relu(x)


def relu(name: str) -> Callable:
    """The teachers' :data:`Activation`."""
    return ReLU(name=name)


# The residual bodies below create their layers in the caller's compact ``__call__``, so the
# layers are the caller's submodules and keep its parameter paths (``conv1``, ``bn1``, ...).


def basic_block(x, features: int, stride: int, train: bool, dtype: Any, act: Activation):
    """Post-activation ResNet block: act2(bn2(conv2(act1(bn1(conv1 x)))) + shortcut(x))."""
    y = conv(features, 3, stride, dtype=dtype, name="conv1")(x)
    y = batch_norm(train, dtype, "bn1")(y)
    y = act("sn1")(y)
    y = conv(features, 3, dtype=dtype, name="conv2")(y)
    y = batch_norm(train, dtype, "bn2")(y)
    if stride != 1 or x.shape[-1] != features:
        x = conv(features, 1, stride, dtype=dtype, name="shortcut_0")(x)
        x = batch_norm(train, dtype, "shortcut_1")(x)
    return act("sn2")(y + x)


def wide_basic(
    x, features: int, stride: int, train: bool, dtype: Any, act: Activation, *, identity: bool
):
    """Pre-activation WRN block: conv2(act2(bn2(conv1 o))) plus ``x`` (``identity``) or
    convShortcut(o), where o = act1(bn1(x)): the public code's shortcut on the activation."""
    o = act("sn1")(batch_norm(train, dtype, "bn1")(x))
    y = conv(features, 3, stride, dtype=dtype, name="conv1")(o)
    y = act("sn2")(batch_norm(train, dtype, "bn2")(y))
    y = conv(features, 3, dtype=dtype, name="conv2")(y)
    if identity:
        return x + y
    return conv(features, 1, stride, dtype=dtype, name="convShortcut")(o) + y
