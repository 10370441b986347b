"""TAR on the student's side (``distill.b_tar``): in the KD loss, each spiking layer's
per-channel firing rate is pulled toward the fraction of the teacher's units that fire at the
same place in the network, on the same batch.

STARS's TAR (``losses.tar_loss``) shapes the synthetic images so that the teacher's activation
tails match what its BN statistics describe; this variant hands the tail to the student
directly. A LIF neuron fires when its membrane crosses V_th, a teacher unit "fires" when its
ReLU input is positive; per channel, the student's rate of threshold crossings should be the
teacher's rate of firing:

    L_TAR_S = sum_{paired l} mean_c (r_lc - f_lc)^2
    r_lc = mean_{t,b,h,w} S_t[..., c]     the student's spikes (gradient through the surrogate)
    f_lc = mean_{b,h,w} 1(a_l[..., c] > 0)  the teacher's ReLU input a_l (a constant in KD)

Layers pair by module path: the ResNet teachers name their ReLUs as the spiking ResNets name
their LIF layers (``sn1``, ``layer2_0/sn2``), and a pair needs equal channel counts, so a
deeper teacher pairs with a shallower student on the blocks they share (resnet14 with
resnet_small: the stem and the first block of each of the student's two stages). A teacher
and student with no pair are refused (``check_pairs``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import traverse_util

from stars_jax.errors import ConfigError
from stars_jax.models.layers import ACT_INPUT
from stars_jax.models.students import CHANNEL_RATES, RATE


def teacher_firing(intermediates) -> dict[str, jax.Array]:
    """``{path: [C]}``: per channel, the fraction of the teacher's ReLU inputs above 0."""
    flat = traverse_util.flatten_dict(intermediates)
    out = {}
    for key, (a, *_) in flat.items():
        if key[-1] == ACT_INPUT:
            fired = (a > 0).astype(jnp.float32)
            out["/".join(key[:-1])] = jnp.mean(fired, axis=tuple(range(a.ndim - 1)))
    return out


def student_rates(channel_rates) -> dict[str, jax.Array]:
    """``{path: [C]}`` from the student's ``channel_rates`` collection."""
    flat = traverse_util.flatten_dict(channel_rates)
    return {"/".join(k[:-1]): v[0] for k, v in flat.items() if k[-1] == RATE}


def paired(teacher: dict, student: dict) -> list[str]:
    """The paths both sides have, with equal channel counts, sorted."""
    return sorted(p for p in teacher if p in student and teacher[p].shape == student[p].shape)


def loss(teacher: dict, student: dict) -> jax.Array:
    """``L_TAR_S`` over the paired layers (the teacher side held constant)."""
    total = jnp.zeros((), jnp.float32)
    for p in paired(teacher, student):
        f = jax.lax.stop_gradient(teacher[p])
        total = total + jnp.mean(jnp.square(student[p].astype(jnp.float32) - f))
    return total


def collect(teacher_model, teacher_vars, student_model, student_vars, x) -> tuple[dict, dict]:
    """Both sides' per-channel rates on a normalised batch ``x`` (training-mode student, as
    in KD); for checks and tests, the KD step gathers them inside its own applies."""
    _, t_inter = teacher_model.apply(teacher_vars, x, mutable=["intermediates"])
    _, s_state = student_model.apply(
        student_vars, x, train=True, mutable=["batch_stats", CHANNEL_RATES]
    )
    return teacher_firing(t_inter["intermediates"]), student_rates(s_state[CHANNEL_RATES])


def check_pairs(teacher_model, teacher_vars, student_model, student_vars, x) -> list[str]:
    """The paired paths for these two models (shapes only: nothing runs), or a ConfigError
    when there are none."""
    teacher, student = jax.eval_shape(
        lambda tv, sv, x: collect(teacher_model, tv, student_model, sv, x),
        teacher_vars,
        student_vars,
        x,
    )
    names = paired(teacher, student)
    if not names:
        raise ConfigError(
            "distill.b_tar > 0 matches the student's LIF layers to the teacher's ReLUs at the "
            f"same module path with equal widths, and none pair here (teacher ReLUs: "
            f"{sorted(teacher) or 'none sown'}; student LIF layers: {sorted(student)}). It "
            "needs a built-in ResNet teacher and a spiking ResNet student that share their "
            "first blocks' widths; use --config.distill.b_tar=0 otherwise."
        )
    return names
