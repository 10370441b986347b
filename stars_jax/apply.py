"""Running a model on images, written once for every entry point (training, evaluation, the
teacher trainer, the converter, the benchmarks): the dataset statistics, normalisation, the
forward pass to logits (time-averaged for spiking students), and the check that a dataset fits
a model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from stars_jax.losses import time_mean

# Per-channel (mean, std) of pixels scaled to [0, 1]. cifar10: the values the teachers in
# shared/teachers were trained with (std is the widespread 0.2023 variant, not the exact one).
# fashion_mnist: computed here on the 60k training images. Others are left out until checked.
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}


def normalize(images: jax.Array, mean, std, dtype=jnp.float32) -> jax.Array:
    """uint8 pixels (0..255) or floats in [0, 1] -> per-channel normalised floats."""
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    return ((x - jnp.asarray(mean)) / jnp.asarray(std)).astype(dtype)


def logits_fn(model, kind: str, mean, std, with_rates: bool = False) -> Callable:
    """``fn(variables, images [B, H, W, C]) -> logits [B, K]`` (float32) in inference mode.

    Images are uint8 or floats in [0, 1] (``normalize``). A student's per-step logits
    ``[T, B, K]`` are averaged over time (rate decoding); ``with_rates`` (students) also
    returns its firing rates per spiking layer (``{"layer1_0/sn1": rate}``).
    """
    if kind not in ("teacher", "student"):
        raise ValueError(f"kind must be 'teacher' or 'student', got {kind!r}.")

    def fn(variables, images):
        x = normalize(images, mean, std)
        if kind == "teacher":
            return model.apply(variables, x)[0].astype(jnp.float32)
        (logits_t, _), state = model.apply(variables, x, mutable=["firing_rates"])
        logits = time_mean(logits_t)
        if not with_rates:
            return logits
        from stars_jax.models.students import firing_rates  # students only

        return logits, firing_rates(state["firing_rates"])

    return fn


def check_dataset(images_shape: Sequence[int], num_classes: int | None, meta: Mapping) -> None:
    """Raises ValueError when images ``[N, H, W, C]`` (and, if given, a class count) do not
    fit a model directory's ``meta`` (its ``input_shape`` and ``num_classes``)."""
    want = tuple(meta["input_shape"])
    got = tuple(images_shape[1:])
    if got != want:
        raise ValueError(
            f"Dataset images are {got} (H, W, C) but the model ({meta['arch']}) expects {want}; "
            "use a dataset of that resolution and channel count, or convert/train a model for "
            "this one."
        )
    if num_classes is not None and num_classes != meta["num_classes"]:
        raise ValueError(
            f"Dataset has {num_classes} classes but the model ({meta['arch']}) has "
            f"num_classes={meta['num_classes']}; use the dataset the model was trained for."
        )
