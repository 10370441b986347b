"""The step benchmark keeps working: both implementations at the tiny CPU setting."""

import pytest

pytest.importorskip("torch")


def test_bench_steps_tiny_runs_both_implementations(tmp_path):
    from benchmarks import bench_steps

    rows = bench_steps.main(
        [
            "--tiny",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--torch_modes",
            "eager-fp32",
            "--jax_dtypes",
            "float32",
            "--out",
            str(tmp_path / "rows.json"),
        ]
    )
    got = {(r["impl"].split("+")[0], r["step"]) for r in rows}
    assert got == {(i, s) for i in ("torch", "stars_jax") for s in ("synthesis", "kd")}
    assert all(r["ms"] > 0 for r in rows)
    assert all(r["flops"] > 0 for r in rows if r["impl"] == "stars_jax")
    assert (tmp_path / "rows.json").exists()


def test_bf16_steps_hand_xla_bf16_convolutions_and_no_loops_or_callbacks():
    """The fast path, read from the StableHLO lowered for a GPU (no GPU needed): every
    convolution of both hot steps takes bf16 operands, the LIF scan is unrolled (no while
    loop) and nothing calls back to the host."""
    from benchmarks import inspect_steps

    report = inspect_steps.inspect(tiny=True, dtypes=["bfloat16"], platform="cuda")
    for step in ("synthesis/bfloat16", "kd/bfloat16"):
        convs = {k: n for k, n in report[step]["matrix_ops"].items() if k.startswith("conv")}
        assert convs and all(k == "convolution[bf16,bf16->bf16]" for k in convs), (step, convs)
        assert report[step]["while"] == 0 and report[step]["host_callbacks"] == 0, report[step]


@pytest.mark.parametrize("prefer_spikingjelly", [False, True])
def test_torch_side_neuron_equals_stars_jax_lif(prefer_spikingjelly):
    """The comparison is like for like: the PyTorch side's multi-step LIF (plain, or
    SpikingJelly's when installed) gives stars_jax's spikes and BPTT input gradients."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from benchmarks.torch_steps import make_neuron
    from stars_jax.neurons import LIFParams, lif

    T, B, C = 4, 3, 50
    x = np.random.default_rng(0).normal(0.7, 1.0, (T, B, C)).astype(np.float32)
    w = np.random.default_rng(1).normal(size=(T, B, C)).astype(np.float32)
    factory, backend = make_neuron(T, prefer_spikingjelly)
    if prefer_spikingjelly and not backend.startswith("spikingjelly"):
        pytest.skip("spikingjelly is not installed (pip install spikingjelly loguru)")
    xt = torch.tensor(x.reshape(T * B, C), requires_grad=True)
    st = factory()(xt)
    (st * torch.tensor(w.reshape(T * B, C))).sum().backward()
    params = LIFParams(tau=2.0, v_threshold=1.0, v_reset=0.0, surrogate="atan", alpha=2.0)
    spikes = lif(jnp.asarray(x), params)[0]
    grad = jax.grad(lambda v: jnp.sum(lif(v, params)[0] * w))(jnp.asarray(x))
    assert 0.1 < float(spikes.mean()) < 0.9
    np.testing.assert_array_equal(st.detach().numpy().reshape(T, B, C), np.asarray(spikes))
    np.testing.assert_allclose(
        xt.grad.numpy().reshape(T, B, C), np.asarray(grad), rtol=1e-5, atol=1e-6
    )
