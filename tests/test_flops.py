"""benchmarks/flops.py: analytic FLOPs against hand counts and published figures."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import flops
from stars_jax.config import base_config, set_all_methods, synth_view
from stars_jax.energy import op_counts_fn
from stars_jax.models.generators import Generator
from stars_jax.models.students import SpikingResNet
from stars_jax.models.teachers import ResNet


class ConvDense(nn.Module):
    """One strided conv and one dense layer: small enough to count by hand."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), strides=2, padding=1, name="conv")(x)
        return nn.Dense(10, name="dense")(jnp.mean(x, axis=(1, 2)))


def test_layer_macs_and_pass_convention_match_a_hand_count():
    # conv: [2, 8, 8, 3] -> [2, 4, 4, 4]; each of the 2*4*4*4 = 128 outputs has a fan-in of
    # 3*3*3 = 27 -> 3456 MACs. dense: [2, 4] -> [2, 10]: 2*10 outputs x fan-in 4 -> 80 MACs.
    conv, dense = 2 * 4 * 4 * 4 * (3 * 3 * 3), 2 * 10 * 4
    assert (conv, dense) == (3456, 80)
    assert flops.layer_macs(ConvDense(), (2, 8, 8, 3)) == [("conv", conv), ("dense", dense)]
    fwd = conv + dense
    layers = [conv, dense]
    assert flops.pass_macs(layers) == fwd  # forward only
    # Frozen, differentiated back to its input (a teacher in synthesis): + 1x.
    assert flops.pass_macs(layers, to_input=True) == 2 * fwd
    # Trained, input not differentiated (the KD student): weight grads of both layers, the
    # input gradient of the dense layer only (the conv's input is the network's input).
    assert flops.pass_macs(layers, weights=True) == fwd + fwd + dense
    # Trained and differentiated to its input (a generator on its latents): 3x.
    assert flops.pass_macs(layers, weights=True, to_input=True) == 3 * fwd
    assert flops.FLOPS_PER_MAC == 2


def test_cifar_resnets_match_published_mac_counts():
    """CIFAR ResNet-18 / -34 (3x3 stem, no max-pool): 0.56 / 1.16 GMACs per 32x32 image, the
    figures the CIFAR literature quotes (e.g. kuangliu/pytorch-cifar with thop)."""
    per_image = lambda stages: sum(m for _, m in flops.layer_macs(ResNet(stages), (1, 32, 32, 3)))
    assert per_image((2, 2, 2, 2)) / 1e9 == pytest.approx(0.556, abs=0.002)
    assert per_image((3, 4, 6, 3)) / 1e9 == pytest.approx(1.160, abs=0.002)


def _tiny():
    teacher = ResNet(stage_sizes=(1, 1), widths=(8, 16))
    student = SpikingResNet(stage_sizes=(1, 1), widths=(8, 16), time_steps=2)
    return teacher, student


def test_forward_macs_agree_with_energy_op_counts():
    """The shape-only count equals stars_jax.energy's MACs, counted on real arrays (every
    layer as a dense MAC layer: kind 'teacher')."""
    teacher, student = _tiny()
    x = jnp.zeros((3, 16, 16, 3), jnp.uint8)
    for model in (teacher, student):
        variables = model.init(jax.random.key(0), jnp.zeros((2, 16, 16, 3)))
        counts = op_counts_fn(model, "teacher", (0.5,) * 3, (0.25,) * 3)(variables, x)
        energy_macs = {k: float(m) for k, (_, m) in counts.items()}
        ours = dict(flops.layer_macs(model, (3, 16, 16, 3)))
        assert ours.keys() == energy_macs.keys()
        np.testing.assert_allclose([ours[k] for k in ours], [energy_macs[k] for k in ours])


def test_step_and_round_flops_compose_the_passes():
    teacher, student = _tiny()
    b, shape = 8, (16, 16, 3)
    t = [m for _, m in flops.layer_macs(teacher, (b, *shape))]
    s = [m for _, m in flops.layer_macs(student, (b, *shape))]
    # The student's stem runs once on [B], its other layers on [T * B].
    assert s[0] == b * 16 * 16 * 8 * 27
    assert flops.kd_step_flops(teacher, student, b, shape) == 2 * (sum(t) + 3 * sum(s) - s[0])
    cfg = base_config().synth
    cfg.method = "deepinversion"
    cfg = synth_view(cfg)
    cfg.batch_size, cfg.a_adv, cfg.l_rca = b, 0.5, 0.0
    synth = flops.synthesis_step_flops(cfg, teacher, student, shape, 10)
    assert synth == 2 * (2 * sum(t) + 2 * sum(s))
    warm = flops.synthesis_step_flops(cfg, teacher, student, shape, 10, warmup=True)
    assert warm == 2 * 2 * sum(t)  # no student in a warm-up step
    cfg.l_tar = 0.0
    got = flops.round_flops(cfg, teacher, student, shape, 10, b, 3, 5)
    kd = flops.kd_step_flops(teacher, student, b, shape)
    assert got == 3 * synth + 2 * sum(t) + 5 * kd


@pytest.mark.parametrize("method", ["fast", "nayer", "cmi"])
def test_generator_methods_add_a_trained_generator(method):
    teacher, student = _tiny()
    cfg = base_config()
    cfg.synth.method, cfg.synth.batch_size = method, 8
    set_all_methods(cfg, generator_width=8, latent_dim=16)
    cfg.synth.nayer.embed_dim = 16
    cfg.synth.cmi.bank_size, cfg.synth.cmi.negatives, cfg.synth.cmi.head_dim = 64, 16, 16
    syn = synth_view(cfg.synth)
    got = flops.synthesis_step_flops(syn, teacher, student, (16, 16, 3), 10)
    method, syn.method = syn.method, "deepinversion"
    pixels = flops.synthesis_step_flops(syn, teacher, student, (16, 16, 3), 10)
    assert got > pixels
    if method == "fast":  # the generator's weights and its latents train: 3x its forward
        gen = Generator((16, 16, 3), 8)
        fwd = sum(m for _, m in flops.layer_macs(gen, (8, 16), mutable=["batch_stats"]))
        assert got - pixels == 2 * 3 * fwd
