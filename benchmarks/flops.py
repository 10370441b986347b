"""Analytic FLOPs of the two hot steps and of a whole DFKD round, from the architectures.

Why not XLA's ``cost_analysis``: on a GPU most convolutions become cuDNN custom calls whose
FLOPs it does not count, so TFLOP/s from it understate the work (and vary with dtype and
device). These counts depend only on the models and the shapes, so both implementations of a
step get the same number.

Convention:
- 1 MAC = 2 FLOPs. Only convolutions and dense layers count (NAYER's noisy layer, an einsum,
  as one dense layer); BN, LIF, activations, pooling, losses and optimizer updates are
  elementwise and left out.
- Forward: each ``nn.Conv`` / ``nn.Dense`` call's MACs on its actual shapes, found by tracing
  the model with ``jax.eval_shape`` (nothing is computed) under ``flax.linen.intercept_methods``
  (as ``stars_jax.energy`` counts ops): output elements x fan-in. A spiking student's stem runs
  once on ``[B, ...]``, its other layers on ``[T * B, ...]``.
- Backward: per layer, the forward's MACs once for the weight gradient (if its weights are
  trained) and once for the input gradient (if one is needed). So 2x forward for a trained
  layer; 1x for a frozen network differentiated back to its input (the teacher, and the
  student in synthesis); and the first layer of a trained network whose input is not
  differentiated (the student's stem in KD) costs 1x, its weight gradient only.

What each step runs (``stars_jax.distill.kd_step``, ``stars_jax.objective.synthesis_loss``, the
synthesizers):
- KD step: teacher forward; student forward and backward (weights).
- synthesis step: teacher forward and backward to its input; the student likewise when the
  adversarial or RCA term runs it (not in warm-up rounds); a generator forward and backward
  (weights and its trained input: latents or label embeddings; DeepInversion has none, the
  pixels are the input); CMI adds a teacher pass on the local view and its projection head.
- round (``stars_jax.distill.run_round``): ``synth_steps`` synthesis steps, the teacher's
  forward on the kept batch (``add_synthetic``'s health), ``kd_steps`` KD steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from stars_jax.models.generators import Generator, NoisyLayerGenerator, ProjectionHead
from stars_jax.objective import bn_channels, select_layers

FLOPS_PER_MAC = 2


def _call_macs(module, x, y) -> int:
    """MACs of one conv or dense call: output elements x the fan-in of each."""
    if isinstance(module, nn.Dense):
        return y.size * x.shape[-1]
    return y.size * math.prod(module.kernel_size) * x.shape[-1] // module.feature_group_count


def layer_macs(model: nn.Module, *shapes, **apply_kwargs) -> list[tuple[str, int]]:
    """``[(layer path, forward MACs)]`` of every ``nn.Conv`` / ``nn.Dense`` call of
    ``model.apply(variables, *inputs, **apply_kwargs)``, in call order, for float32 inputs of
    ``shapes`` (the whole batch). Shapes only: nothing is computed."""
    inputs = [jax.ShapeDtypeStruct(tuple(s), jnp.float32) for s in shapes]
    variables = jax.eval_shape(model.init, jax.random.key(0), *inputs)
    calls = []

    def intercept(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and isinstance(module, nn.Conv | nn.Dense):
            calls.append(("/".join(module.path), _call_macs(module, args[0], out)))
        return out

    def apply(v, *xs):
        with nn.intercept_methods(intercept):
            return model.apply(v, *xs, **apply_kwargs)

    jax.eval_shape(apply, variables, *inputs)
    return calls


def pass_macs(layers: Sequence[int], *, weights: bool = False, to_input: bool = False) -> int:
    """MACs of one pass over a network (``layers``: forward MACs per call, in call order):
    the forward, plus the backward the convention gives; forward only when neither the
    weights nor the input get gradients."""
    fwd = sum(layers)
    weight_grads = fwd if weights else 0
    if to_input:
        input_grads = fwd
    elif weights:  # gradients stop at the first layer's output: not into the network's input
        input_grads = fwd - layers[0]
    else:
        input_grads = 0
    return fwd + weight_grads + input_grads


def _macs(model, *shapes, **kwargs) -> list[int]:
    return [m for _, m in layer_macs(model, *shapes, **kwargs)]


def kd_step_flops(teacher, student, batch: int, image_shape) -> int:
    """FLOPs of one KD step on ``batch`` images of ``image_shape`` (H, W, C)."""
    x = (batch, *image_shape)
    macs = pass_macs(_macs(teacher, x)) + pass_macs(_macs(student, x), weights=True)
    return FLOPS_PER_MAC * macs


def synthesis_step_flops(cfg, teacher, student, image_shape, num_classes: int, warmup=False):
    """FLOPs of one synthesis step of ``cfg.method`` (``config.synth_view(config.synth)``:
    batch, weights and generator sizes), in a warm-up round (no student) or not."""
    x = (cfg.batch_size, *image_shape)
    macs = pass_macs(_macs(teacher, x), to_input=True)
    if not warmup and (cfg.a_adv or cfg.l_rca):
        macs += pass_macs(_macs(student, x), to_input=True)
    macs += _generator_macs(cfg, teacher, image_shape, num_classes)
    return FLOPS_PER_MAC * macs


def _generator_macs(cfg, teacher, image_shape, num_classes: int) -> int:
    """What a synthesizer adds to the teacher and student passes (trained generator, and
    CMI's local view and projection head)."""
    b, bn_train = cfg.batch_size, {"mutable": ["batch_stats"]}  # generators' BN: batch stats
    if cfg.method == "deepinversion":
        return 0
    if cfg.method == "nayer":
        gen = NoisyLayerGenerator(
            tuple(image_shape), cfg.generator_width, cfg.latent_dim, chunk=num_classes
        )
        rows = -(-b // num_classes) * num_classes  # the einsum runs on whole chunks
        noisy = rows * cfg.embed_dim * cfg.latent_dim
        layers = [noisy, *_macs(gen, (b, cfg.embed_dim), **bn_train)]
        return pass_macs(layers, weights=True, to_input=True)
    if cfg.method not in ("fast", "cmi"):
        raise ValueError(f"No FLOP count for synth.method {cfg.method!r}.")
    gen = Generator(tuple(image_shape), cfg.generator_width)
    macs = pass_macs(_macs(gen, (b, cfg.latent_dim), **bn_train), weights=True, to_input=True)
    if cfg.method == "cmi":
        macs += pass_macs(_macs(teacher, (b, *image_shape)), to_input=True)  # the local view
        names, channels = bn_channels(teacher, image_shape)
        dim = sum(channels[i] for i in select_layers(names, cfg.layers))
        rows = b + min(cfg.negatives, cfg.bank_size)
        head = _macs(ProjectionHead(hidden=dim, out=cfg.head_dim), (rows, dim))
        macs += pass_macs(head, weights=True, to_input=True) + pass_macs(head)  # query, key
    return macs


def round_flops(
    cfg,
    teacher,
    student,
    image_shape,
    num_classes: int,
    kd_batch: int,
    synth_steps: int,
    kd_steps: int,
    warmup=False,
) -> int:
    """FLOPs of one DFKD round (``stars_jax.distill.run_round``): ``synth_steps`` synthesis
    steps, the teacher's forward on the kept batch (its health, and a second one for
    percentile TAR's reference batch), ``kd_steps`` KD steps of ``kd_batch`` images."""
    synth = synthesis_step_flops(cfg, teacher, student, image_shape, num_classes, warmup)
    teacher_fwd = FLOPS_PER_MAC * sum(_macs(teacher, (cfg.batch_size, *image_shape)))
    forwards = 1 + (not warmup and bool(cfg.l_tar) and cfg.tar_thresholds == "percentile")
    kd = kd_step_flops(teacher, student, kd_batch, image_shape)
    return synth_steps * synth + forwards * teacher_fwd + kd_steps * kd
