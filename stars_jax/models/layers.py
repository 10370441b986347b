"""Layers shared by the ANN teachers and the SNN students.

Convolutions use PyTorch's explicit symmetric padding (``SAME`` pads stride-2 convolutions
asymmetrically, which would break numerical parity with converted PyTorch weights).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

BN_INPUT = (
    "bn_input"  # Name under which every BatchNorm sows its input (collection "intermediates").
)


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
