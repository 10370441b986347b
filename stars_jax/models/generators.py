"""Generators of the generator-based synthesizers, and CMI's projection head.

Layer shapes and initialisations follow the public PyTorch code (Fast-Datafree's
``Generator``, NAYER's ``NLGenerator``, CMI's ``MLPHead``): PyTorch's default init for
``Linear``/``Conv2d`` (uniform, bound 1/sqrt(fan_in), weights and biases), BN scale 1, bias 0.
All generators run their BatchNorms in training mode (batch statistics), as the references do.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's default kaiming_uniform(a=sqrt(5)) on weights is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
    """PyTorch's default bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / fan_in**0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -bound, bound
    )


def torch_dense(features: int, fan_in: int, name: str) -> nn.Dense:
    return nn.Dense(
        features, kernel_init=torch_kernel_init, bias_init=torch_bias_init(fan_in), name=name
    )


def torch_conv(features: int, fan_in: int, use_bias: bool, name: str) -> nn.Conv:
    return nn.Conv(
        features,
        (3, 3),
        padding=1,
        use_bias=use_bias,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(9 * fan_in),
        name=name,
    )


def _bn(name: str) -> nn.BatchNorm:
    # PyTorch's momentum 0.1 is Flax's 0.9; eps 1e-5.
    return nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5, name=name)


class Generator(nn.Module):
    """Fast DFKD's generator: ``z [B, D]`` -> ``[0, 1]`` images ``[B, H, W, C]`` (H, W % 4 == 0).

    ``l1`` (Linear) -> BN -> up x2 -> conv -> BN -> LeakyReLU(0.2) -> up x2 -> conv -> BN ->
    LeakyReLU(0.2) -> conv (with bias) -> sigmoid; nearest-neighbour upsampling.
    """

    image_shape: tuple[int, int, int]
    width: int = 64  # ngf

    @nn.compact
    def __call__(self, z):
        h, w, c = self.image_shape
        up = lambda y: jnp.repeat(jnp.repeat(y, 2, axis=1), 2, axis=2)
        ngf2 = 2 * self.width
        x = torch_dense(ngf2 * (h // 4) * (w // 4), z.shape[-1], "l1")(z)
        x = _bn("bn0")(x.reshape(z.shape[0], h // 4, w // 4, ngf2))
        x = torch_conv(ngf2, ngf2, False, "conv1")(up(x))
        x = nn.leaky_relu(_bn("bn1")(x), 0.2)
        x = torch_conv(self.width, ngf2, False, "conv2")(up(x))
        x = nn.leaky_relu(_bn("bn2")(x), 0.2)
        return nn.sigmoid(torch_conv(c, self.width, True, "conv3")(x))


class NoisyLayerGenerator(nn.Module):
    """NAYER's class-conditional generator: label embedding -> BN -> noisy layer -> Generator.

    ``embeddings [B, E]`` (the rows of the label-embedding table for the batch's labels) go
    through a BatchNorm1d, then through a "noisy layer": a Linear ``E -> latent_dim`` whose
    weights the synthesizer re-draws from N(0, 1) every round; sample ``i`` uses the noisy layer
    of its chunk ``i // chunk`` (one per group of ``chunk`` samples, NAYER's ``nl``), so that one
    class gets different latents in different chunks. The result feeds Fast's generator body.
    """

    image_shape: tuple[int, int, int]
    width: int = 64
    latent_dim: int = 1000  # NAYER's le_emb_size
    chunk: int = 10  # samples per noisy layer (NAYER: the number of classes)

    @nn.compact
    def __call__(self, embeddings):
        b, e = embeddings.shape
        n = -(-b // self.chunk)
        le = _bn("bn_le")(embeddings)
        kernel = self.param("noise_kernel", nn.initializers.normal(1.0), (n, e, self.latent_dim))
        bias = self.param("noise_bias", nn.initializers.zeros, (n, self.latent_dim))
        le = jnp.pad(le, ((0, n * self.chunk - b), (0, 0))).reshape(n, self.chunk, e)
        v = jnp.einsum("nke,ned->nkd", le, kernel) + bias[:, None]
        return Generator(self.image_shape, self.width, name="body")(v.reshape(-1, v.shape[-1])[:b])


class ProjectionHead(nn.Module):
    """CMI's MLP head: Linear -> ReLU -> Linear, L2-normalised rows, ``[N, D] -> [N, out]``."""

    hidden: int
    out: int = 256

    @nn.compact
    def __call__(self, x):
        x = nn.relu(torch_dense(self.hidden, x.shape[-1], "fc1")(x))
        x = torch_dense(self.out, self.hidden, "fc2")(x)
        return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-24))
