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
    # Analytic FLOPs: the same work on both sides; XLA's own count kept apart.
    for step in ("synthesis", "kd"):
        assert len({r["flops"] for r in rows if r["step"] == step}) == 1
    assert all(r["xla_flops"] > 0 for r in rows if r["impl"] == "stars_jax")


def test_bench_round_tiny_times_run_round_on_both_sides():
    from benchmarks import bench_steps

    args = ["--tiny", "--tables", "round", "--rounds", "1", "--round_synth_steps", "2"]
    args += ["--round_kd_steps", "2", "--torch_modes", "eager-fp32", "--jax_dtypes", "float32"]
    rows = bench_steps.main(args)
    assert {(r["impl"].split("+")[0], r["step"]) for r in rows} == {
        ("torch", "round"),
        ("stars_jax", "round"),
    }
    s = bench_steps._setting(True)
    expected = bench_steps.analytic_flops(
        s, dict(method="deepinversion", synth_steps=2, kd_steps=2)
    )
    for r in rows:
        assert r["ms"] > 0 and r["images"] == s["batch"] * 3  # kept batch + 2 KD batches
        assert r["flops"] == expected["round"]


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


def _torch_nets(channels_last=False):
    import torch

    from benchmarks.torch_steps import BNStats, ResNet, make_neuron

    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    factory, _ = make_neuron(2, prefer_spikingjelly=False)
    teacher = ResNet((1, 1), (8, 16)).to(memory_format=fmt)
    student = ResNet((1, 1), (8, 16), spiking_neuron=factory, T=2).to(memory_format=fmt)
    return teacher, student, BNStats(teacher)


def _bn_hooks(model):
    import torch.nn as nn

    return sum(len(m._forward_hooks) for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_torch_synthesis_step_computes_no_weight_gradients():
    """Both networks are frozen in synthesis: the pixels get a gradient, no weight does."""
    import torch

    from benchmarks.torch_steps import make_synth_step, synthesis_phase

    nets = teacher, student, bn = _torch_nets()
    synthesis_phase(*nets)
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.1)
    loss = make_synth_step(teacher, student, bn)(x, opt, torch.randint(0, 10, (4,)))
    assert torch.isfinite(loss) and x.grad is not None and x.grad.abs().sum() > 0
    assert len(bn.terms) == len(bn.bns) == _bn_hooks(teacher)  # one L_BN term per BN layer
    params = [*teacher.parameters(), *student.parameters()]
    assert all(p.grad is None and not p.requires_grad for p in params)
    assert not teacher.training and not student.training


def test_torch_kd_step_runs_no_bn_hooks():
    """The KD step's teacher forward runs no BN hook: none registered, no terms collected."""
    import torch

    from benchmarks.torch_steps import kd_phase, make_kd_step, make_synth_step, synthesis_phase

    nets = teacher, student, bn = _torch_nets()
    synthesis_phase(*nets)
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    make_synth_step(teacher, student, bn)(x, torch.optim.Adam([x]), torch.zeros(4).long())
    kd_phase(*nets)
    assert _bn_hooks(teacher) == 0 and bn.terms == []
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    for _ in range(2):
        make_kd_step(teacher, student, opt)(x.detach())
    assert bn.terms == [] and _bn_hooks(teacher) == 0
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert student.training and not teacher.training
    synthesis_phase(*nets)  # and back: hooks again, once each
    assert _bn_hooks(teacher) == len(bn.bns)


def test_torch_round_fills_the_bank_and_trains_the_student():
    import torch

    from benchmarks.torch_steps import Round, _norm, make_kd_step, make_synth_step

    nets = teacher, student, bn = _torch_nets()
    norm, bounds = _norm((0.5,) * 3, (0.25,) * 3, "cpu")
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    steps = make_synth_step(teacher, student, bn, bounds), make_kd_step(teacher, student, opt)
    rnd = Round(nets, steps, (3, 16, 16), 4, norm, 6, torch.contiguous_format)
    before = [p.detach().clone() for p in student.parameters()]
    rnd(2, 1)
    rnd(2, 1)
    assert (rnd.count, rnd.cursor) == (6, 2)  # a ring of 6: 4 + 4 images wrap around
    (lo, hi), x = bounds, rnd.x.detach()
    assert (x >= lo).all() and (x <= hi).all()  # clipped to valid pixels after every step
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))


def test_torch_channels_last_mode_keeps_the_layout_through_the_student():
    """'+cl' is worth measuring only if the convolutions see channels-last inputs: the stem's
    repetition over T and the LIF's time steps must not fall back to NCHW."""
    import torch
    import torch.nn as nn

    from benchmarks.torch_steps import parse_mode

    assert parse_mode("bf16-eager+cl") == (True, False, True)
    assert parse_mode("eager-fp32") == (False, False, False)
    with pytest.raises(ValueError, match="valid"):
        parse_mode("eager-fp32+nhwc")
    _, student, _ = _torch_nets(channels_last=True)
    seen = []
    for m in student.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(
                lambda _, i, o: seen.append(i[0].is_contiguous(memory_format=torch.channels_last))
            )
    student(torch.randn(4, 3, 16, 16).contiguous(memory_format=torch.channels_last))
    assert seen and all(seen), seen


def test_kernel_table_reads_device_streams_and_skips_derived_lines():
    """A GPU-shaped trace: kernels on the device's stream lines count once; the viewer's
    derived 'XLA Ops' line and the host's events do not."""
    from benchmarks.bench_steps import kernel_table

    meta = lambda pid, tid, name: {"ph": "M", "pid": pid, "tid": tid, "name": name}
    ev = lambda pid, tid, name, dur, **args: dict(
        ph="X", pid=pid, tid=tid, name=name, ts=0, dur=dur, args=args
    )
    trace = {
        "traceEvents": [
            {**meta(1, None, "process_name"), "args": {"name": "/device:GPU:0"}},
            {**meta(1, 7, "thread_name"), "args": {"name": "Stream #7(Compute)"}},
            {**meta(1, 9, "thread_name"), "args": {"name": "XLA Ops"}},
            {**meta(2, None, "process_name"), "args": {"name": "/host:CPU"}},
            *[ev(1, 7, "sm90_xmma_fprop", 30.0, hlo_op="conv.1") for _ in range(4)],
            *[ev(1, 7, "loop_add_fusion", 5.0) for _ in range(2)],
            ev(1, 9, "conv.1", 120.0),
            ev(2, 3, "step", 200.0),
            ev(2, 3, "step", 100.0),
            ev(2, 3, "host_thing", 999.0, hlo_op="x"),
        ]
    }
    t = kernel_table(trace, steps=2, top=5, step_name="step")
    assert t["kernels"] == 2 and t["kernel_us_per_step"] == 65.0
    assert t["wall_us_per_step"] == 150.0
    top = t["top"][0]
    assert (top["kernel"], top["hlo_op"], top["calls_per_step"], top["us_per_step"]) == (
        "sm90_xmma_fprop",
        "conv.1",
        2,
        60.0,
    )
    assert abs(sum(k["pct"] for k in t["top"]) - 100) < 1e-9
