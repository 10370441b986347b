"""Synaptic-operation counts against hand counts, and on a real spiking student."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stars_jax import energy
from stars_jax.models.layers import conv
from stars_jax.models.students import make_student


class _Net(nn.Module):
    stride: int = 1

    @nn.compact
    def __call__(self, x):
        y = conv(2, 3, self.stride, name="c")(x)  # 3x3, padding 1
        return nn.Dense(3, name="d")(y.reshape((x.shape[0], -1)))


def _counts(kind, x, stride=1):
    net = _Net(stride)
    v = net.init(jax.random.key(0), x)
    fn = energy.op_counts_fn(net, kind, (0.0,), (1.0,))
    return energy.count_ops(fn, v, x, batch_size=len(x))


def _one_spike(i, j):
    x = np.zeros((1, 4, 4, 1), np.float32)
    x[0, i, j, 0] = 1.0
    return x


@pytest.mark.parametrize(
    "where,stride,acs",
    [
        ((1, 1), 1, 9 * 2),  # an inner spike reaches 9 output positions x 2 channels
        ((0, 0), 1, 4 * 2),  # a corner spike only 4 (zero padding)
        ((0, 0), 2, 1 * 2),  # stride 2: outputs (0,0) only ...
        ((1, 1), 2, 4 * 2),  # ... an inner one the 4 outputs whose windows hold it
    ],
)
def test_spike_input_counts_exact_accumulates(where, stride, acs):
    out = _counts("student", _one_spike(*where), stride)
    assert out["c"] == (acs, 0.0)
    # The conv's output is real-valued: the dense layer counts MACs of every input.
    positions = (4 // stride) ** 2
    assert out["d"] == (0.0, positions * 2 * 3)


def test_two_spikes_and_a_batch_average_per_image():
    x = np.concatenate([_one_spike(1, 1), _one_spike(0, 0)])  # 18 and 8 ACs
    assert _counts("student", x)["c"] == (13 * 1.0, 0.0)


def test_real_input_and_teachers_count_dense_macs():
    x = np.full((2, 4, 4, 1), 0.3, np.float32)
    macs = 16 * 9 * 1 * 2  # positions x kernel x in channels x out channels
    assert _counts("student", x)["c"] == (0.0, macs)
    assert _counts("teacher", _one_spike(1, 1))["c"] == (0.0, macs)  # binary, but an ANN


def test_spiking_student_counts():
    """resnet_tiny, T=2: the stem is MACs once per image (direct encoding); every spiking
    conv counts ACs bounded by its spikes x fan-out; the report adds up."""
    t, h = 2, 8
    student = make_student("resnet_tiny", 4, t)
    images = np.random.default_rng(0).integers(0, 256, (4, h, h, 3)).astype(np.uint8)
    v = student.init(jax.random.key(1), jnp.zeros((1, h, h, 3)))
    fn = energy.op_counts_fn(student, "student", (0.5,) * 3, (0.25,) * 3)
    ops = energy.count_ops(fn, v, images, batch_size=2)
    assert ops["conv1"] == (0.0, h * h * 9 * 3 * 8)  # once, not T times
    spiking = [k for k in ops if k != "conv1" and not k.endswith("fc")]
    assert spiking and all(ops[k][1] == 0.0 for k in spiking)
    assert any(ops[k][0] > 0 for k in spiking)
    report = energy.energy_report(ops, {"conv1": (0.0, 1e6)})
    s = report["student"]
    assert s["acs"] == pytest.approx(sum(a for a, _ in ops.values()))
    assert s["energy_uj"] == pytest.approx((s["acs"] * 0.9 + s["macs"] * 4.6) * 1e-6)
    assert report["teacher"]["energy_uj"] == pytest.approx(4.6)
    assert "uJ/image" in energy.format_report(report)
